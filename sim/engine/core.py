"""The engine: one job run under a given plan, in SimPy.

``run(job, plan)`` builds a SimPy environment with a ``Sim`` (GPUs as ``simpy.Resource(capacity=1)``,
the shared links of ``network.py``, message events between ranks), starts one process per rank from
the scheme's module, runs it, and returns a ``Result``: TTFT, per-rank busy time and traffic, bytes per
link and the timeline. The plan (tokens per rank, and the cluster GPU of each rank) is given: the
engine never asks the planner (``sim/partition/plan.py``), whose searches call ``run`` with
candidate plans.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import simpy

from ..cluster import Link
from ..cost import CostModel, kv_chain_of
from ..cost.tensor_parallel import tensor_parallel
from ..job import Job
from ..schemes import rank_process
from . import collectives, lanes
from .network import _DONE_REL, Network


class Segment(NamedTuple):
    """A bar on the timeline: a compute op on a rank, or a transfer from ``rank`` to ``peer``.
    (A named tuple rather than a frozen dataclass: thousands are made per simulation.)"""

    rank: int
    kind: str  # "compute" | "transfer"
    op: str  # compute: embed, qkv, attention, mlp, head; transfer: send, all-gather
    start_s: float
    end_s: float
    layer: int | None = None
    peer: int | None = None
    nbytes: float = 0.0


@dataclass(frozen=True)
class RankStats:
    rank: int
    busy_s: float  # compute time
    idle_s: float  # makespan_s - busy_s
    bytes_sent: float
    bytes_received: float


@dataclass(frozen=True)
class Result:
    ttft_s: float  # when the last rank finishes the LM head
    makespan_s: float  # when every rank has finished (>= ttft_s)
    chunks: tuple[int, ...]
    gpus: tuple[int, ...]  # the cluster GPU of each rank
    ranks: tuple[RankStats, ...]
    link_bytes: dict[Link, float] = field(repr=False)
    segments: tuple[Segment, ...] = field(repr=False)


class _Work:
    """Compute in progress on a rank whose speed follows its GPU's communication kernels."""

    __slots__ = ("work_s", "left_s", "since_s", "rate", "timer", "done")

    def __init__(self, work_s: float, done: simpy.Event):
        self.work_s, self.left_s, self.done = work_s, work_s, done
        self.since_s, self.rate, self.timer = 0.0, 0.0, 0  # rate 0 until first timed: nothing charged


class Sim:
    """What a scheme's rank process can do: compute, send, receive, all-gather."""

    def __init__(self, job: Job, num_ranks: int, cost: CostModel | None = None,
                 gpus: tuple[int, ...] | None = None, tp: int = 1):
        self.gpu_of = gpus or tuple(range(num_ranks))  # rank -> cluster GPU: transfers join the ranks' GPUs
        self.tp = tp  # a rank's GPUs: gpu_of[r] .. gpu_of[r] + tp - 1 (a tensor-parallel group)
        # Where the lanes of the groups are disjoint copies, lane 0 alone is simulated (engine/lanes.py)
        self.lane_maps = lanes.images(job.cluster, self.gpu_of, tp) if tp > 1 else None
        self.env = simpy.Environment()
        self.cost = cost if cost is not None else job.cost()
        self.kv_chain = kv_chain_of(job)
        self.model = job.model
        self.num_layers = job.model.num_layers
        self.kv_bytes_per_token = job.model.kv_bytes_per_token_per_layer(job.dtype)
        self.network = Network(self.env, job.cluster)
        self.gpus = [simpy.Resource(self.env, capacity=1) for _ in range(num_ranks)]
        self.busy_s = [0.0] * num_ranks
        self.sent = [0.0] * num_ranks
        self.received = [0.0] * num_ranks
        self.segments: list[Segment] = []
        self.ttft_s: float | None = None
        self._messages: dict[tuple, simpy.Event] = {}
        self._channels: dict[tuple[int, int], collectives.Channel] = {}
        self._collectives: dict[tuple, collectives.RingAllGather] = {}  # (kind, tag) -> the collective
        self.nccl = collectives.communication_model(job)  # NCCL's model, or None: each link's latency and rate
        # How much slower compute runs beside resident communication kernels' thread blocks (NCCL's model
        # only: the ideal links cost no compute); measured, docs/cost_model.md "Communication's cost to compute".
        self.slowdown = collectives.slowdown_model(job)
        self._kernels = [0] * num_ranks  # thread blocks of communication kernels resident on each rank's GPU
        self._working: list[_Work | None] = [None] * num_ranks  # each rank's compute in progress, if slowed

    def hold_gpu(self, rank: int, body):
        """Process body: the rank's process holds its GPU's compute stream for its whole life, so a
        second process placed on the same GPU would queue behind it; ``body`` is the scheme's generator."""
        with self.gpus[rank].request() as turn:
            yield turn
            yield from body

    def compute(self, rank: int, layer: int | None, *ops: tuple[str, float]):
        """Process body: run ``ops`` (name, seconds) one after another on the rank's GPU (one timeout).
        While communication kernels are resident on the GPU (``comm_kernel``) its work runs
        ``1 + slowdown(their thread blocks)`` times slower; the extra time is a ``comm-contention``
        segment after them."""
        start_s = self.env.now
        work_s = sum(seconds for _, seconds in ops)
        contended = bool(self.slowdown is not None and work_s)
        if contended:
            yield from self._contended(rank, work_s)
        else:
            yield self.env.timeout(work_s)
        for op, seconds in ops:
            self.busy_s[rank] += seconds
            self.segments.append(Segment(rank, "compute", op, start_s, start_s + seconds, layer))
            start_s += seconds
        if contended and self.env.now > start_s + _DONE_REL * self.env.now:
            self.busy_s[rank] += self.env.now - start_s
            self.segments.append(Segment(rank, "compute", "comm-contention", start_s, self.env.now, layer))

    def _contended(self, rank: int, work_s: float):
        """Process body: ``work_s`` seconds of compute at full speed, or at 1 / (1 + slowdown(blocks)) of
        it while the rank's GPU holds communication kernels; the rate changes as kernels come and go
        (``comm_kernel`` re-times it at once; a timer that a change made stale is ignored)."""
        work = self._working[rank] = _Work(work_s, self.env.event())
        self._retime(rank, work)
        yield work.done

    def _retime(self, rank: int, work: "_Work") -> None:
        """Charge the work done since the rank's rate last changed; finish it, or time its end at the
        rate its GPU's communication kernels now allow."""
        now_s = self.env.now
        work.left_s -= (now_s - work.since_s) * work.rate
        rate = 1.0 / (1.0 + self.slowdown(self._kernels[rank]))
        if work.left_s <= _DONE_REL * work.work_s or now_s + work.left_s / rate == now_s:  # below the clock
            self._working[rank] = None
            work.done.succeed()
            return
        work.rate, work.since_s = rate, now_s
        work.timer += 1
        timer = work.timer
        self.env.timeout(work.left_s / rate).callbacks.append(
            lambda _event: work.timer == timer and self._working[rank] is work and self._retime(rank, work))

    def comm_kernel(self, ranks, ctas: int, *, on: bool) -> None:
        """A communication kernel of ``ctas`` thread blocks starts (``on``) or ends on each of ``ranks``'
        GPUs: NCCL's kernels hold SMs for the whole transfer, so compute beside them slows."""
        if self.slowdown is None:
            return
        for r in ranks:
            self._kernels[r] += ctas if on else -ctas
            work = self._working[r]
            if work is not None:
                self._retime(r, work)

    def lanes(self, rank: int) -> tuple[int, ...]:
        """The cluster GPUs of a rank (one, or its tensor-parallel group)."""
        first = self.gpu_of[rank]
        return tuple(range(first, first + self.tp))

    def flows(self, src: int, dst: int, nbytes: float) -> list[tuple[int, int, float]]:
        """A rank-to-rank message as flows between GPUs: with tensor parallelism each GPU of the
        group sends its heads' share to the same-placed GPU of the other group (lane 0's flow alone where
        the lanes are copies of it, ``engine/lanes.py``)."""
        if self.tp == 1:
            return [(self.gpu_of[src], self.gpu_of[dst], nbytes)]
        if self.lane_maps is not None:
            return [(self.gpu_of[src], self.gpu_of[dst], nbytes / self.tp)]
        return [(a, b, nbytes / self.tp) for a, b in zip(self.lanes(src), self.lanes(dst))]

    def send(self, src: int, dst: int, nbytes: float, tag, layer: int | None = None) -> None:
        """Start an asynchronous point-to-point send; the caller does not wait for it. ``tag`` names
        the message (the layer, or any hashable); the timeline records ``layer`` (default: the tag)."""
        self.channel(src, dst).send(nbytes, tag, layer)

    def message(self, src: int, dst: int, tag: int) -> simpy.Event:
        """The event of the message ``tag`` from ``src`` arriving at ``dst``."""
        key = (src, dst, tag)
        if key not in self._messages:
            self._messages[key] = self.env.event()
        return self._messages[key]

    def channel(self, src: int, dst: int) -> collectives.Channel:
        """The sends from ``src`` to ``dst``, one after another."""
        channel = self._channels.get((src, dst))
        if channel is None:
            channel = self._channels[src, dst] = collectives.Channel(self, src, dst)
        return channel

    def all_gather(self, tag: int, chunk_bytes: float) -> simpy.Event:
        """Enter the all-gather ``tag`` (shared by all ranks); the event fires when it completes."""
        key = ("all-gather", tag)
        if key not in self._collectives:
            self._collectives[key] = collectives.RingAllGather(self, len(self.gpus), chunk_bytes, tag)
        return self._collectives[key].join()

    def all_reduce(self, tag, total_bytes: float, layer: int | None = None) -> simpy.Event:
        """Enter the ring all-reduce ``tag`` of a ``total_bytes`` buffer; fires when it completes."""
        key = ("all-reduce", tag)
        if key not in self._collectives:
            self._collectives[key] = collectives.RingAllReduce(self, len(self.gpus), total_bytes, tag, layer)
        return self._collectives[key].join()

    def all_to_all(self, tag, pair_bytes, layer: int | None = None) -> simpy.Event:
        """Enter the all-to-all ``tag``: rank a sends ``pair_bytes[a][b]`` to rank b; fires when done."""
        key = ("all-to-all", tag)
        if key not in self._collectives:
            self._collectives[key] = collectives.AllToAll(self, len(self.gpus), pair_bytes, tag, layer)
        return self._collectives[key].join()

    def delivery_delay_s(self, rank: int | None) -> float:
        """Seconds between a message's last byte arriving and rank ``rank`` (None: the ranks of a
        collective step) acting on it (none on GPUs: ``engine/cpu_cluster.py`` has processes that
        must first get a core)."""
        return 0.0

    def record_transfer(self, op: str, src: int, dst: int, nbytes: float, start_s: float, end_s: float,
                        layer: int) -> None:
        self.sent[src] += nbytes
        self.received[dst] += nbytes
        self.segments.append(Segment(src, "transfer", op, start_s, end_s, layer, dst, nbytes))

    def first_token(self) -> None:
        self.ttft_s = self.env.now


def run(job: Job, plan, *, cost: CostModel | None = None, sim_class: type[Sim] | None = None) -> Result:
    """Run ``job`` under ``plan`` (a ``sim.partition.Plan``: tokens per rank, the cluster GPU of each
    rank); ``cost`` replaces the job's cost model (a measured profile, a test stub); ``sim_class``
    replaces ``Sim`` (``engine/cpu_cluster.py``'s ranks share a CPU)."""
    chunks, gpus = tuple(plan.chunks), tuple(plan.gpus)
    if plan.tp > 1:
        cost = tensor_parallel(cost if cost is not None else job.cost(), job, plan)
        sim = (sim_class or Sim)(job, len(chunks), cost, gpus, plan.tp)
    else:
        sim = (sim_class or Sim)(job, len(chunks), cost, gpus)
    procs = [sim.env.process(sim.hold_gpu(r, rank_process(job.scheme, sim, r, plan)))
             for r in range(len(chunks))]
    sim.env.run(until=sim.env.all_of(procs))
    assert sim.ttft_s is not None
    makespan_s = sim.env.now
    ranks = tuple(RankStats(r, sim.busy_s[r], makespan_s - sim.busy_s[r], sim.sent[r], sim.received[r])
                  for r in range(len(chunks)))
    return Result(ttft_s=sim.ttft_s, makespan_s=makespan_s, chunks=tuple(chunks), gpus=gpus, ranks=ranks,
                  link_bytes=lanes.spread(sim.network.bytes_carried, sim.lane_maps or ()),
                  segments=tuple(sim.segments))
