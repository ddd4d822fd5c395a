"""The engine for gloo ranks that are processes sharing one host's cores: the shaped-link CPU
cluster the simulator is validated on (docs/validation.md, docs/netcluster.md). A ``Sim`` subclass
for ``run(job, plan, sim_class=cpu_cluster_sim(cores))``.
"""
from __future__ import annotations

from ..cluster import ClusterSpec, LinkSpec
from .core import Segment, Sim
from .network import Network


def cpu_cluster_sim(cores: float | None, net_cpu_s_per_byte: float = 0.0, busy_wake_s: float = 0.0):
    """A ``Sim`` for gloo ranks that are processes on one host:

    - with ``cores``, a rank's compute runs at min(1, cores / ranks computing at that moment) of its
      speed (processor sharing, max-min fair: the network model's progressive filling on a link of
      ``cores`` core-seconds per second that every rank's compute crosses, behind a private link of 1
      for its own core);
    - with ``cores`` and ``net_cpu_s_per_byte``, every message also costs the host that many
      core-seconds a byte (the gloo threads' copies and the kernel's TCP, veth and htb work, measured:
      ``NET_CPU_S_PER_BYTE``): from the moment its bytes start to move, a flow of that much work
      crosses the same shared host link (behind a link of ``cores``: the kernel's work may run on any
      core), so it takes cores from the ranks' compute, and the other way round;
    - with ``cores`` and ``busy_wake_s``, a message that arrives while at least ``cores`` ranks compute
      reaches its receiver that much later (a rank asleep in a receive must be woken and get a core
      that others hold: ``BUSY_WAKE_S``, measured); once per point-to-point message and per ring step;
    - a point-to-point message moves only once its receiver has posted the receive (gloo's rendezvous:
      the sender waits for the receiver's "ready to receive" notice, docs/netcluster.md); a kvr rank
      posts it when it starts waiting for the message, after its own QKV, as the runtime's
      ``ChainedKVCache.update`` does;
    - the all-gather is the runtime's gloo ring (``DistTransport.all_gather``), ``_BufferedRing``: a
      rank leaves when its own receives are done and its sends have returned (a gloo send returns
      once the kernel's socket holds the rest of it, ``SOCKET_BUFFER_BYTES``)."""
    class CpuClusterSim(Sim):
        def __init__(self, job, num_ranks, cost=None, gpus=None):
            super().__init__(job, num_ranks, cost, gpus)
            self.nccl = None  # gloo ranks: each link's latency and rate, whatever the scenario's GPUs use
            self.slowdown = None  # and their messages' CPU cost is net_work's, below
            self._posted: dict[tuple, object] = {}
            self._rank_of: dict[object, int] = {}
            self._rings: dict[int, _BufferedRing] = {}
            self.computing = 0  # ranks computing now
            if cores is None:
                return
            self.sink = num_ranks  # compute "flows" from rank r through the host to this node
            self.kernel = num_ranks + 1  # and the messages' CPU work from this one
            links = [LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=bw, latency_s=0.0) for r in range(num_ranks)
                     for a, b, bw in ((r, "host", 1.0), ("host", r, 1.0))]
            links += [LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=cores, latency_s=0.0)
                      for a, b in (("host", self.sink), (self.sink, "host"), (self.kernel, "host"),
                                   ("host", self.kernel))]
            self.cpu = Network(self.env, ClusterSpec(name="host-cpu", num_gpus=num_ranks + 2, links=tuple(links),
                                                     switches=("host",)))

        def delivery_delay_s(self, rank):
            return busy_wake_s if cores is not None and self.computing >= cores else 0.0

        def net_work(self, nbytes):
            """The host CPU a message of ``nbytes`` costs, started now, in the background."""
            if cores is not None and net_cpu_s_per_byte > 0 and nbytes > 0:
                self.env.process(self.cpu.transfer([(self.kernel, self.sink, nbytes * net_cpu_s_per_byte)]))

        def hold_gpu(self, rank, body):
            self._rank_of[self.env.active_process] = rank  # who calls all_gather (it takes no rank)
            yield from super().hold_gpu(rank, body)

        def all_gather(self, tag, chunk_bytes):
            if tag not in self._rings:
                self._rings[tag] = _BufferedRing(self, len(self.gpus), chunk_bytes, tag)
            return self._rings[tag].join(self._rank_of[self.env.active_process])

        def posted(self, src, dst, tag):
            return self._posted.setdefault((src, dst, tag), self.env.event())

        def message(self, src, dst, tag):  # the receiver asks for it when it posts its receive
            if not self.posted(src, dst, tag).triggered:
                self.posted(src, dst, tag).succeed()
            return super().message(src, dst, tag)

        def send(self, src, dst, nbytes, tag, layer=None):
            def rendezvous(_event):
                self.net_work(nbytes)
                self.channel(src, dst).send(nbytes, tag, layer)
            posted = self.posted(src, dst, tag)
            if posted.callbacks is None:  # posted and processed already: the send goes now
                rendezvous(posted)
            else:
                posted.callbacks.append(rendezvous)

        def compute(self, rank, layer, *ops):
            if cores is None:
                return (yield from super().compute(rank, layer, *ops))
            start_s, work_s = self.env.now, sum(seconds for _, seconds in ops)
            if work_s > 0:
                self.computing += 1
                yield from self.cpu.transfer([(rank, self.sink, work_s)])
                self.computing -= 1
            stretch = (self.env.now - start_s) / work_s if work_s > 0 else 1.0
            for op, seconds in ops:
                self.busy_s[rank] += seconds * stretch
                self.segments.append(Segment(rank, "compute", op, start_s, start_s + seconds * stretch, layer))
                start_s += seconds * stretch

    return CpuClusterSim



# A gloo send returns once the kernel's socket buffer holds the rest of the message: measured on this
# project's VM as 1.3-1.7 MB still undelivered when a 2-8 MB send returned over a 10 MB/s link
# (``python -m reference.netcluster probe --world-size 2 --bandwidth "x,100MB/s;10MB/s,x" --sizes
# 1MB,2MB,4MB,8MB``, docs/netcluster.md, "When a gloo send returns").
SOCKET_BUFFER_BYTES = 1.5e6

# Host CPU a byte moved between two ranks costs (both gloo threads, the kernel's TCP, veth, bridge and
# htb), measured on the project's VM on 2026-12-06: ``python -m reference.netcluster cpu --world-size 2
# --bandwidth 100MB/s --sizes 32MB --repeats 4`` (and ``--repeats 8``): 0.39 and 0.51 ns a byte, the mean
# kept (docs/validation.md, section 8).
NET_CPU_S_PER_BYTE = 0.45e-9

# How much later a small message reaches a rank asleep in its receive while every core is taken by
# computing processes than on an idle host, measured on the project's VM: ``python -m reference.netcluster
# latency --world-size 2 --busy 2`` (busy one-way median less idle one-way median; docs/validation.md,
# section 8): on 2026-12-06 0.035 ms busy against 0.048 ms idle, no penalty, so none is applied. Ranks that
# compute in bursts hold messages longer than spinning processes: ``python -m reference.netcluster chain
# --world-size 8 --bandwidth 20MB/s --compute-ms 10`` finds 1.8-2.5 ms once two ranks compute, 3.6 ms with
# 30 ms bursts. That is not one constant, and 2 ms here does not make more ranks agree (docs/validation.md,
# section 8), so none is applied still.
BUSY_WAKE_S = 0.0


class _BufferedRing:
    """The runtime's gloo all-gather among ranks 0..P-1 (a ring, receives posted before sends): in step
    s rank r receives one chunk from rank r-1. That transfer starts when both have begun step s (rank
    r-1 holds the chunk: it entered, or received it in step s-1; rank r has posted its receive: it
    entered, or finished its step s-1 receive). Rank r leaves after its P-1 receives and once each of
    its sends has returned: when all but ``SOCKET_BUFFER_BYTES`` of it are delivered (the rest waits
    in the socket). On a slow outgoing link that holds a rank whose own receives came fast (tsp's last
    rank on the ``nonuniform`` cluster)."""

    def __init__(self, sim, num_ranks: int, chunk_bytes: float, tag: int):
        env = sim.env
        self.sim, self.p, self.chunk_bytes, self.tag = sim, num_ranks, chunk_bytes, tag
        # ready[r][s]: rank r has begun step s; ready[r][p - 1]: its receives are done.
        self.ready = [[env.event() for _ in range(num_ranks)] for _ in range(num_ranks)]
        self.sent = [[env.event() for _ in range(num_ranks - 1)] for _ in range(num_ranks)]  # sent[r][s]
        for r in range(num_ranks):
            for step in range(num_ranks - 1):
                env.process(self._receive(r, step))

    def join(self, rank: int):
        self.ready[rank][0].succeed()
        return self.sim.env.all_of([self.ready[rank][self.p - 1], *self.sent[rank]])

    def _receive(self, r: int, step: int):
        sim, src = self.sim, (r - 1) % self.p
        yield sim.env.all_of([self.ready[src][step], self.ready[r][step]])
        start_s = sim.env.now
        sim.net_work(self.chunk_bytes)
        route = (sim.gpu_of[src], sim.gpu_of[r])
        held = min(self.chunk_bytes, SOCKET_BUFFER_BYTES)
        if self.chunk_bytes > held:  # the sender's send returns when only `held` bytes are left
            yield from sim.network.transfer([(*route, self.chunk_bytes - held)])
        self.sent[src][step].succeed()
        yield from sim.network.transfer([(*route, held)], latency=self.chunk_bytes <= held)
        sim.record_transfer("all-gather", src, r, self.chunk_bytes, start_s, sim.env.now, self.tag)
        delay_s = sim.delivery_delay_s(r)
        if delay_s:
            yield sim.env.timeout(delay_s)
        self.ready[r][step + 1].succeed()
