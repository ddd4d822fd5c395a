"""Communication as SimPy processes: point-to-point send, NCCL's ring all-gather and all-reduce, and
an all-to-all.

- ``send``: the transfers between one ordered pair of ranks run one after another, in issue order (each
  pair has its own NCCL communicator and stream in torch.distributed's point-to-point path); a transfer
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
Reference: NCCL documentation, "Collective operations" and the ring algorithm.
"""
from __future__ import annotations

import simpy


def send(sim, src: int, dst: int, nbytes: float, tag: int, layer: int | None = None):
    """Process body: rank ``src`` sends ``nbytes`` to rank ``dst``; the receiver waits on
    ``sim.message(src, dst, tag)``, which this process triggers on delivery. The timeline records
    ``layer`` (default: the tag)."""
    with sim.channel(src, dst).request() as turn:
        yield turn
        start_s = sim.env.now
        yield from sim.network.transfer(sim.flows(src, dst, nbytes))
    sim.record_transfer("send", src, dst, nbytes, start_s, sim.env.now, tag if layer is None else layer)
    delay_s = sim.delivery_delay_s(dst)
    if delay_s:
        yield sim.env.timeout(delay_s)
    sim.message(src, dst, tag).succeed()


class RingAllGather:
    """One all-gather among ranks 0..P-1; every rank contributes a chunk of ``chunk_bytes``."""

    op = "all-gather"

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
        for step in range(self.steps()):
            start_s = sim.env.now
            moves = [(r, (r + 1) % p, self.chunk_bytes) for r in range(p)]
            yield from _moves(sim, moves, self.op, start_s, self.layer)
        self.done.succeed()


class RingAllReduce(RingAllGather):
    """One all-reduce of a ``total_bytes`` buffer among ranks 0..P-1: 2(P-1) ring steps of 1/P of it."""

    op = "all-reduce"

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
        if moves:
            yield from _moves(sim, moves, self.op, start_s, self.layer)
        self.done.succeed()


def _moves(sim, moves, op: str, start_s: float, layer):
    """Process body: rank-to-rank ``moves`` (src, dst, bytes) at once, each as its flows between the
    ranks' GPUs (one a tensor-parallel lane); each move recorded when its last flow ends."""
    flows, owner = [], []
    for i, (src, dst, nbytes) in enumerate(moves):
        for flow in sim.flows(src, dst, nbytes):
            flows.append(flow)
            owner.append(i)
    ends_s = yield from sim.network.transfer(flows)
    last = [start_s] * len(moves)
    for i, end_s in zip(owner, ends_s):
        last[i] = max(last[i], end_s)
    for (src, dst, nbytes), end_s in zip(moves, last):
        sim.record_transfer(op, src, dst, nbytes, start_s, end_s, layer)
