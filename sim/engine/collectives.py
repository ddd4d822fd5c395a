"""Communication as SimPy processes: point-to-point send, NCCL's ring all-gather and all-reduce, and
an all-to-all.

- ``Channel``: the sends between one ordered pair of ranks run one after another, in issue order (each
  pair has its own NCCL communicator and stream in torch.distributed's point-to-point path); a send
  takes its route's latency, then its bytes at the link's shared rate (``network.py``).
- ``ring_all_gather``: NCCL's ring algorithm. Ring order is rank order 0 -> 1 -> ... -> P-1 -> 0 (as
  NCCL on one NVSwitch node; on other topologies NCCL searches for a ring that follows fast links, which
  this model does not: the ring follows the ranks, whose GPUs the job's order gives). It starts when every rank has entered it and runs P-1 steps; in each step every
  rank sends one chunk to its successor, and a step ends when its slowest transfer ends.
- ``RingAllReduce``: the same ring in 2(P-1) steps of 1/P of the buffer (reduce-scatter, then
  all-gather), as NCCL's ring all-reduce; the reduction's arithmetic is not charged.
- ``AllToAll``: every rank sends its own block to every other rank at once (P(P-1) transfers sharing
  the links max-min fairly); it starts when every rank has entered and ends with the last transfer
  (NCCL's all-to-all is grouped point-to-point sends and receives).
Under ``communication: nccl`` (``GpuSpec.communication``) each of them follows NCCL's own model
(``nccl.py``): the collective's whole latency once, as NCCL's tuner predicts it for the algorithm and
protocol it picks, then its steps' flows at the protocol's share of the links; a tree all-reduce is one
pipelined pass down and up the chain of ranks; sends and the all-to-all use NCCL's p2p model
(docs/cost_model.md, "NCCL's model").
Reference: NCCL documentation, "Collective operations" and the ring algorithm.
"""
from __future__ import annotations

from collections import deque

import simpy


def communication_model(job):
    """NCCL's model (``nccl.NcclModel``) for the job's cluster under ``communication: nccl``; None under
    ``links``."""
    if job.gpu is None or job.gpu.communication != "nccl":  # no GPU: a measured profile answers every cost
        return None
    # imported here: ``python -m sim.engine.nccl`` must not find the module already loaded by the package
    from .nccl import NcclModel, arch_of
    return NcclModel(job.cluster, arch_of(job.gpu.name))


def slowdown_model(job):
    """Under NCCL's model, the slowdown of compute beside resident NCCL thread blocks
    (``comm_cost.compute_slowdown``, measured); None under ``links``, where communication costs no
    compute."""
    if job.gpu is None or job.gpu.communication != "nccl":
        return None
    from . import comm_cost  # looked up when a simulation starts: tests replace the measured table
    return comm_cost.compute_slowdown


class Channel:
    """The sends from one rank to another: one after another, in issue order (a pair's own NCCL
    communicator and stream). Driven by callbacks, not a SimPy process a send: a 128-GPU ring
    simulation makes 30,000 of them."""

    __slots__ = ("sim", "src", "dst", "queue", "busy", "ctas", "choices")

    def __init__(self, sim, src: int, dst: int):
        self.sim, self.src, self.dst = sim, src, dst
        self.queue: deque = deque()
        self.busy = False
        self.ctas = sim.nccl.send_ctas(sim.gpu_of[src], sim.gpu_of[dst]) if sim.nccl is not None else 0
        self.choices: dict[float, tuple] = {}  # bytes -> NCCL's p2p choice and its route's bandwidth

    def send(self, nbytes: float, tag, layer) -> None:
        """Queue a send; the receiver waits on ``sim.message(src, dst, tag)``, which fires on delivery.
        The timeline records ``layer`` (default: the tag)."""
        self.queue.append((nbytes, tag, tag if layer is None else layer))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if not self.queue:
            self.busy = False
            return
        self.busy = True
        sim, src, dst = self.sim, self.src, self.dst
        nbytes, tag, layer = self.queue.popleft()
        start_s = sim.env.now
        if sim.nccl is None:
            sim.network.start(sim.flows(src, dst, nbytes), lambda _ends: self._delivered(nbytes, tag, layer, start_s))
            return
        # each tensor-parallel lane is its own NCCL send of its share
        choice = self.choices.get(nbytes)
        if choice is None:
            choice = self.choices[nbytes] = sim.nccl.send(sim.gpu_of[src], sim.gpu_of[dst], nbytes / sim.tp)
        choice, link_bytes_per_s = choice
        ctas = self.ctas
        sim.comm_kernel((src, dst), ctas, on=True)  # NCCL's send and receive kernels, the whole transfer

        def ended(_ends):
            sim.comm_kernel((src, dst), ctas, on=False)
            self._delivered(nbytes, tag, layer, start_s)

        def flow(_event):
            sim.network.start(sim.flows(src, dst, nbytes), ended, latency=False,
                              efficiency=choice.efficiency(link_bytes_per_s))
        sim.env.timeout(choice.latency_s).callbacks.append(flow)

    def _delivered(self, nbytes: float, tag, layer, start_s: float) -> None:
        sim = self.sim
        sim.record_transfer("send", self.src, self.dst, nbytes, start_s, sim.env.now, layer)
        self._next()
        delay_s = sim.delivery_delay_s(self.dst)
        message = sim.message(self.src, self.dst, tag)
        if delay_s:
            sim.env.timeout(delay_s).callbacks.append(lambda _event: message.succeed())
        else:
            message.succeed()


class RingAllGather:
    """One all-gather among ranks 0..P-1; every rank contributes a chunk of ``chunk_bytes``."""

    op = "all-gather"
    collective = "all-gather"  # NCCL's name of it

    def steps(self) -> int:
        return self.num_ranks - 1

    def __init__(self, sim, num_ranks: int, chunk_bytes: float, tag: int, layer: int | None = None):
        self.sim, self.num_ranks, self.chunk_bytes, self.tag = sim, num_ranks, chunk_bytes, tag
        self.layer = tag if layer is None else layer
        self._arrived = 0
        self._all_in = sim.env.event()
        self.done = sim.env.event()
        sim.env.process(self._run())

    def join(self) -> simpy.Event:
        """A rank enters the collective; the returned event fires when the gather is complete."""
        self._arrived += 1
        if self._arrived == self.num_ranks:
            self._all_in.succeed()
        return self.done

    def _run(self):
        sim, p = self.sim, self.num_ranks
        yield self._all_in
        if sim.nccl is not None:
            ctas = sim.nccl.collective_ctas(tuple(sim.gpu_of[r] for r in range(p)))
            sim.comm_kernel(range(p), ctas, on=True)
            yield from self._nccl()
            sim.comm_kernel(range(p), ctas, on=False)
        else:
            for step in range(self.steps()):
                start_s = sim.env.now
                moves = [(r, (r + 1) % p, self.chunk_bytes) for r in range(p)]
                yield from _moves(sim, moves, self.op, start_s, self.layer)
                yield from _acted_on(sim)
        self.done.succeed()

    def _nccl(self):
        """Process body: NCCL's choice for the buffer (P chunks; per tensor-parallel lane, each lane its
        own communicator): its latency once, then the ring's steps, or the tree's one pass both ways
        along the chain of ranks, at the choice's share of the slowest hop's bandwidth."""
        sim, p = self.sim, self.num_ranks
        if p == 1:
            return
        buffer_bytes = self.chunk_bytes * p
        choice, comm = sim.nccl.collective(self.collective, tuple(sim.gpu_of[r] for r in range(p)),
                                           buffer_bytes / sim.tp)
        yield sim.env.timeout(choice.latency_s)
        efficiency = choice.efficiency(comm.bandwidth_bytes_per_s)
        if choice.algorithm == "tree":
            moves = [(r, r + 1, buffer_bytes) for r in range(p - 1)] + [(r + 1, r, buffer_bytes) for r in range(p - 1)]
            yield from _moves(sim, moves, self.op, sim.env.now, self.layer, latency=False, efficiency=efficiency)
            return
        for step in range(self.steps()):
            moves = [(r, (r + 1) % p, self.chunk_bytes) for r in range(p)]
            yield from _moves(sim, moves, self.op, sim.env.now, self.layer, latency=False, efficiency=efficiency)


class RingAllReduce(RingAllGather):
    """One all-reduce of a ``total_bytes`` buffer among ranks 0..P-1: 2(P-1) ring steps of 1/P of it."""

    op = "all-reduce"
    collective = "all-reduce"

    def __init__(self, sim, num_ranks: int, total_bytes: float, tag, layer: int | None = None):
        super().__init__(sim, num_ranks, total_bytes / num_ranks, tag, layer)

    def steps(self) -> int:
        return 2 * (self.num_ranks - 1)


class AllToAll(RingAllGather):
    """One all-to-all: rank a sends ``pair_bytes[a][b]`` to every rank b != a, all at once."""

    op = "all-to-all"

    def __init__(self, sim, num_ranks: int, pair_bytes, tag, layer: int | None = None):
        self.pair_bytes = pair_bytes
        super().__init__(sim, num_ranks, 0.0, tag, layer)

    def _run(self):
        sim, p = self.sim, self.num_ranks
        yield self._all_in
        start_s = sim.env.now
        moves = [(a, b, self.pair_bytes[a][b]) for a in range(p) for b in range(p) if a != b]
        if moves and sim.nccl is None:
            yield from _moves(sim, moves, self.op, start_s, self.layer)
            yield from _acted_on(sim)
        elif moves:  # NCCL's grouped sends: one launch, the slowest pair's latency, each pair's protocol
            choices = [sim.nccl.send(sim.gpu_of[a], sim.gpu_of[b], nbytes / sim.tp) for a, b, nbytes in moves]
            ctas = [0] * p  # one grouped kernel a rank: the blocks of all its sends and receives
            for a, b, _ in moves:
                blocks = sim.nccl.send_ctas(sim.gpu_of[a], sim.gpu_of[b])
                ctas[a] += blocks
                ctas[b] += blocks
            for r in range(p):
                sim.comm_kernel((r,), ctas[r], on=True)
            yield sim.env.timeout(max(choice.latency_s for choice, _ in choices))
            yield from _moves(sim, moves, self.op, sim.env.now, self.layer, latency=False,
                              efficiency=[choice.efficiency(bw) for choice, bw in choices])
            for r in range(p):
                sim.comm_kernel((r,), ctas[r], on=False)
        self.done.succeed()


def _acted_on(sim):
    """Process body: the time between a collective step's last byte arriving and its ranks acting on it
    (``Sim.delivery_delay_s``: none on GPUs; processes that must get a core on a shared host)."""
    delay_s = sim.delivery_delay_s(None)
    if delay_s:
        yield sim.env.timeout(delay_s)


def _moves(sim, moves, op: str, start_s: float, layer, *, latency: bool = True,
           efficiency: float | list[float] = 1.0):
    """Process body: rank-to-rank ``moves`` (src, dst, bytes) at once, each as its flows between the
    ranks' GPUs (one a tensor-parallel lane); each move recorded when its last flow ends. ``latency``
    and ``efficiency`` (one for all, or one a move) as ``Network.transfer``'s."""
    flows, owner = [], []
    for i, (src, dst, nbytes) in enumerate(moves):
        for flow in sim.flows(src, dst, nbytes):
            flows.append(flow)
            owner.append(i)
    if isinstance(efficiency, list):
        efficiency = [efficiency[i] for i in owner]
    ends_s = yield from sim.network.transfer(flows, latency=latency, efficiency=efficiency)
    last = [start_s] * len(moves)
    for i, end_s in zip(owner, ends_s):
        last[i] = max(last[i], end_s)
    for (src, dst, nbytes), end_s in zip(moves, last):
        sim.record_transfer(op, src, dst, nbytes, start_s, end_s, layer)
