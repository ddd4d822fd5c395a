"""The engine for gloo ranks that are processes sharing one host's cores: the shaped-link CPU
cluster the simulator is validated on (docs/validation.md, docs/netcluster.md). A ``Sim`` subclass
for ``run(job, plan, sim_class=cpu_cluster_sim(cores))``.
"""
from __future__ import annotations

from ..cluster import ClusterSpec, LinkSpec
from .core import Segment, Sim
from .network import Network


def cpu_cluster_sim(cores: float | None, net_cpu_s_per_byte: float = 0.0, busy_wake_s: float = 0.0,
                    htb: bool = True, net_cpu_s_per_message: float = 0.0):
    """A ``Sim`` for gloo ranks that are processes on one host:

    - with ``cores``, a rank's compute runs at min(1, cores / ranks computing at that moment) of its
      speed (processor sharing, max-min fair: the network model's progressive filling on a link of
      ``cores`` core-seconds per second that every rank's compute crosses, behind a private link of 1
      for its own core);
    - with ``cores`` and ``net_cpu_s_per_byte`` (and ``net_cpu_s_per_message``), every message also
      costs the host that many core-seconds a byte (and a message: the gloo threads' copies and
      wake-ups, the kernel's TCP, veth and htb work, and what they do to the compute beside them,
      measured while every core computes: ``NET_CPU_S_PER_BYTE``, ``NET_CPU_S_PER_MESSAGE``), a
      step of a collective likewise: from the moment its bytes start to move (``flows``, and the
      all-gather's own ring), a flow of that much work crosses the same shared host link
      (behind a link of ``cores``: the kernel's work may run on any core), so it takes cores from the
      ranks' compute, and the other way round;
    - with ``cores``, every point-to-point message and every step of a collective reaches its ranks
      ``host_step_s(P)`` later: with P processes on the host's cores, a woken rank's threads wait
      for a core, step after step (``HOST_STEP_S``, measured with nothing else running);
    - with ``cores`` and ``busy_wake_s``, a message that arrives while at least ``cores`` ranks compute
      reaches its receiver that much later (a rank asleep in a receive must be woken and get a core
      that others hold: ``BUSY_WAKE_S``, measured); once per point-to-point message and per ring step;
    - with ``htb``, every shaped link lets a message's first bytes through at once after an idle spell,
      as its htb class does (``HtbBuckets``: a token bucket of ``htb_burst_bytes``), so a message of a
      few KB takes its link's latency, not its size over the rate, and a 1 MB one about 6% less;
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
            self.buckets = HtbBuckets(self.network, job.cluster) if htb else None
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
            if cores is None:
                return 0.0
            return host_step_s(len(self.gpus)) + (busy_wake_s if self.computing >= cores else 0.0)

        def net_work(self, nbytes):
            """The host CPU a message of ``nbytes`` costs, started now, in the background."""
            work_s = nbytes * net_cpu_s_per_byte + net_cpu_s_per_message if nbytes > 0 else 0.0
            if cores is not None and work_s > 0:
                self.env.process(self.cpu.transfer([(self.kernel, self.sink, work_s)]))

        def flows(self, src, dst, nbytes):
            """The message's flows, less the bytes its links' token buckets let through at once; called
            as its bytes start to move (a point-to-point send, a step of an all-reduce or all-to-all),
            so the host's CPU for them starts now too."""
            self.net_work(nbytes)
            return [(a, b, n - self.at_once(a, b, n)) for a, b, n in super().flows(src, dst, nbytes)]

        def at_once(self, src, dst, nbytes):
            """The bytes of a message from GPU src to dst, starting now, that pass without waiting."""
            return self.buckets.take(src, dst, nbytes) if self.buckets is not None else 0.0

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

# The compute a message and a byte moved between two ranks take from ranks that keep every core busy (both
# gloo threads, the kernel's TCP, veth, bridge and htb work, charged to whichever thread it interrupts, and
# what it does to the computing threads beside it: wake-ups that preempt them, caches it evicts). Measured
# on the project's VM on 2026-12-07 (ninth session), 13:05-13:12 UTC: ``python -m reference.netcluster
# busy-cpu --world-size 2 --bandwidth 100MB/s --seconds 5 --repeats 10 --sizes 256KB,1MB,4MB``
# (results/cpu-time/2026-12-07/busy-cpu/busy-cpu-fit.json): two processes running the cluster model's
# forwards lose 12-21% of their rate while 89-98 MB/s move, 4.73, 2.99 and 2.77 ns a byte at the median
# for 256 KB, 1 MB and 4 MB messages; the least-squares fit over the 30 streaming windows is 0.278 ms a
# gloo message plus 2.50 ns a byte (each streamed block is two gloo messages, its 4-byte "go" and itself;
# the first fit counted one and gave 0.555 ms: docs/validation.md, section 8, "Two messages a block").
# (With 4 MB messages alone, earlier the same day, 2.6 ns a byte: the median of 40 windows at 100 and
# 50 MB/s.) The same host moving bytes with nothing else running (``python -m
# reference.netcluster cpu``) burns only 0.39-0.51 ns a byte (2026-12-06) or 1.1-1.5 ns (2026-12-07):
# what the traffic costs the ranks is mostly what it does to the compute beside it (docs/validation.md,
# section 8, "The CPU a byte costs a busy host").
NET_CPU_S_PER_BYTE = 2.50e-9
NET_CPU_S_PER_MESSAGE = 0.278e-3

# How much later a small message reaches a rank asleep in its receive while every core is taken by
# computing processes than on an idle host, measured on the project's VM: ``python -m reference.netcluster
# latency --world-size 2 --busy 2`` (busy one-way median less idle one-way median; docs/validation.md,
# section 8): on 2026-12-06 0.035 ms busy against 0.048 ms idle, no penalty, so none is applied. Ranks that
# compute in bursts hold messages longer than spinning processes: ``python -m reference.netcluster chain
# --world-size 8 --bandwidth 20MB/s --compute-ms 10`` finds 1.8-2.5 ms once two ranks compute, 3.6 ms with
# 30 ms bursts. That is not one constant, and 2 ms here does not make more ranks agree (docs/validation.md,
# section 8), so none is applied still.
BUSY_WAKE_S = 0.0


# What the host adds to every point-to-point message and every step of a collective when P gloo
# processes share its 2 cores, with nothing else running: the per-step time of an all-gather of 4 KB
# blocks over unshaped links at P ranks, less that at 2 ranks (one process a core, where the links'
# latency model holds). Measured on the project's VM on 2026-12-07 (``python -m reference.netcluster probe
# --world-size P --bandwidth inf --sizes 4KB,100KB,393KB,1MB --repeats 6``, results/cpu-time/2026-12-07/
# collectives/p{2,4,8}-inf.json: 0.43 ms for 1 step at P = 2, 5.43 ms for 3 at P = 4, 15.40 ms for 7 at
# P = 8; docs/netcluster.md, "Collectives of many ranks on two cores").
HOST_STEP_S = {2: 0.0, 4: 5.43e-3 / 3 - 0.43e-3, 8: 15.40e-3 / 7 - 0.43e-3}


def host_step_s(num_ranks: int) -> float:
    """``HOST_STEP_S`` at ``num_ranks`` processes: linear between the measured counts, 0 at 2 or fewer,
    the largest measured beyond them."""
    known = sorted(HOST_STEP_S)
    if num_ranks <= known[0]:
        return HOST_STEP_S[known[0]]
    for lo, hi in zip(known, known[1:]):
        if num_ranks <= hi:
            return HOST_STEP_S[lo] + (HOST_STEP_S[hi] - HOST_STEP_S[lo]) * (num_ranks - lo) / (hi - lo)
    return HOST_STEP_S[known[-1]]


# The shaped-link cluster's htb classes (``reference.netcluster``, docs/netcluster.md): their rates count
# whole Ethernet frames, 1514 bytes on the wire for a full TCP segment's 1448 payload bytes, so a class runs
# at the link's payload rate times this; and each lets ``htb_burst_bytes`` of its wire rate through at
# once after an idle spell. Measured (docs/netcluster.md, "Measured rates"): a 1 MB message gets 1.04-1.07
# of the link's rate at 10-20 MB/s and 1.09 at 100 MB/s, where the bucket gives 1.07 and 1.11.
WIRE_OVER_PAYLOAD = 1514 / 1448


def htb_burst_bytes(wire_bytes_per_s: float) -> int:
    """The burst (and cburst) of an htb class of that rate: 64 KiB (one GSO segment on veth) or 1 ms of
    traffic, whichever is more (less would make htb round the rate down at high rates)."""
    return max(64 * 1024, int(wire_bytes_per_s * 1e-3))


class HtbBuckets:
    """The token bucket of every shaped link (finite bandwidth, no competing flows), as htb keeps it:
    tokens accrue at the link's rate up to its burst, and a message's bytes pass at once while there
    are tokens, the rest at the rate. Kept as the time each bucket is full again: a message of n bytes
    starting at t takes min(n, tokens(t)) of every link on its route and moves that time to
    max(it, t) + n / rate. A link that carries competing flows keeps its bucket empty (they use it)."""

    def __init__(self, network: Network, cluster: ClusterSpec):
        self.network = network
        self.full_at_s: dict = {}
        self.noisy = {(bg.src, bg.dst) for bg in cluster.background}

    def take(self, src: int, dst: int, nbytes: float) -> float:
        """The bytes of an ``nbytes`` message from GPU ``src`` to ``dst``, starting now, that pass at once."""
        now_s, network = self.network.env.now, self.network
        free = nbytes
        links = []
        for link in network.cluster.route(src, dst):
            rate = network.capacity[link]
            if rate == float("inf"):
                continue
            links.append((link, rate))
            if link in self.noisy:
                free = 0.0
                continue
            burst = htb_burst_bytes(rate * WIRE_OVER_PAYLOAD) / WIRE_OVER_PAYLOAD  # payload bytes
            full_at_s = self.full_at_s.get(link, now_s)
            free = min(free, max(0.0, burst - rate * max(0.0, full_at_s - now_s)))
        for link, rate in links:
            self.full_at_s[link] = max(self.full_at_s.get(link, now_s), now_s) + nbytes / rate
        return free


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
        flowing = self.chunk_bytes - sim.at_once(*route, self.chunk_bytes)  # the rest passes at once
        held = min(flowing, SOCKET_BUFFER_BYTES)
        if flowing > held:  # the sender's send returns when only `held` bytes are left
            yield from sim.network.transfer([(*route, flowing - held)])
        self.sent[src][step].succeed()
        yield from sim.network.transfer([(*route, held)], latency=flowing <= held)
        sim.record_transfer("all-gather", src, r, self.chunk_bytes, start_s, sim.env.now, self.tag)
        delay_s = sim.delivery_delay_s(r)
        if delay_s:
            yield sim.env.timeout(delay_s)
        self.ready[r][step + 1].succeed()
