"""How the ranks of a prefill talk: the operations the schemes need (point-to-point, all-gather,
all-reduce, all-to-all).

``DistTransport`` runs them over a ``torch.distributed`` process group (NCCL on GPUs, gloo on
CPUs). ``ThreadTransport`` runs them between threads of one process, so the in-process tests run the
very same scheme code many more times than real processes could. Ranks are ranks within the group.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Protocol, Sequence

import torch
import torch.distributed as dist


class Work(Protocol):
    def wait(self) -> object: ...


class Transport(Protocol):
    rank: int
    world_size: int

    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        """Start sending `tensor` to rank `dst`; it must stay unmodified until ``wait()``."""

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        """Fill `tensor` with what rank `src` sent (blocks)."""

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `tensor` (all the same shape), in rank order."""

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Replace `tensor` (same shape on every rank) by the sum over the ranks, in place."""

    def all_to_all(self, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
        """Send ``send[d]`` to every rank d and fill ``recv[s]`` with what rank s sent this rank
        (``recv[rank]`` gets ``send[rank]``). Shapes may differ between pairs; every rank must post
        its call."""


def exchange(t: Transport, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
    """All-to-all from point-to-point pairs, for ``ThreadTransport`` (whose sends complete at once): in
    step s every rank sends to rank + s and receives from rank - s."""
    r, p = t.rank, t.world_size
    recv[r].copy_(send[r])
    pending = [t.isend(send[(r + s) % p].contiguous(), (r + s) % p) for s in range(1, p)]
    for s in range(1, p):
        t.recv(recv[(r - s) % p], (r - s) % p)
    for work in pending:
        work.wait()


class DistTransport:
    """Point-to-point and collectives over a torch.distributed group (default: the world)."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        return dist.isend(tensor, self._global(dst), group=self.group)

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        dist.recv(tensor, self._global(src), group=self.group)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        if self.world_size == 1 or dist.get_backend(self.group) != "gloo":
            dist.all_gather(out, tensor, group=self.group)
            return out
        # gloo: a ring (as NCCL's) whose every step posts its receive before its send. gloo's own
        # all_gather runs both directions of a pair over one TCP connection and can send one direction's
        # whole message before the other starts (docs/netcluster.md, "A gloo finding"): with 2 ranks on
        # a shaped link it got 0.44-0.97 of the link rate; receives first get the full rate both ways.
        r, p = self.rank, self.world_size
        out[r].copy_(tensor)
        for step in range(p - 1):
            recv = dist.irecv(out[(r - step - 1) % p], self._global((r - 1) % p), group=self.group)
            send = dist.isend(out[(r - step) % p], self._global((r + 1) % p), group=self.group)
            recv.wait()
            send.wait()
        return out

    def all_reduce(self, tensor: torch.Tensor) -> None:
        if self.world_size > 1:
            dist.all_reduce(tensor, group=self.group)

    def all_to_all(self, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
        if dist.get_backend(self.group) == "gloo":  # gloo has no all_to_all of unequal parts: every
            # receive posted, then every send, all in flight at once (as NCCL's grouped sends); posting
            # each receive only after the one before (``exchange``) would make P-1 steps of gloo's
            # rendezvous, each waiting for the slowest pair
            r, p = self.rank, self.world_size
            recv[r].copy_(send[r])
            pending = [dist.irecv(recv[(r - s) % p], self._global((r - s) % p), group=self.group)
                       for s in range(1, p)]
            pending += [dist.isend(send[(r + s) % p].contiguous(), self._global((r + s) % p), group=self.group)
                        for s in range(1, p)]
            for work in pending:
                work.wait()
        else:
            dist.all_to_all(list(recv), [x.contiguous() for x in send], group=self.group)


class _Done:
    def wait(self) -> None:
        return None


class ThreadHub:
    """Mailboxes and a barrier shared by the threads of one in-process 'world'."""

    def __init__(self, world_size: int, timeout_s: float = 60.0):
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.boxes = {(s, d): queue.Queue() for s in range(world_size) for d in range(world_size)}
        self.barrier = threading.Barrier(world_size, timeout=timeout_s)
        self.slots: list[torch.Tensor | None] = [None] * world_size


class ThreadTransport:
    """One rank of a ThreadHub. Sends copy the tensor, so they complete at once."""

    def __init__(self, hub: ThreadHub, rank: int):
        self.hub, self.rank, self.world_size = hub, rank, hub.world_size

    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        self.hub.boxes[(self.rank, dst)].put(tensor.clone())
        return _Done()

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        tensor.copy_(self.hub.boxes[(src, self.rank)].get(timeout=self.hub.timeout_s))

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.hub.slots[self.rank] = tensor.clone()
        self.hub.barrier.wait()
        out = list(self.hub.slots)
        self.hub.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return out

    def all_reduce(self, tensor: torch.Tensor) -> None:
        parts = self.all_gather(tensor)
        total = parts[0].clone()
        for part in parts[1:]:  # rank order on every rank: all ranks get the same bits
            total += part
        tensor.copy_(total)

    def all_to_all(self, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
        exchange(self, send, recv)


def run_in_threads(world_size: int, fn: Callable[[ThreadTransport], object],
                   timeout_s: float = 60.0) -> Sequence[object]:
    """fn(transport) on `world_size` threads, one per rank; returns the results in rank order.

    An exception on any rank is re-raised here at once (threads are daemons; peers blocked in a
    collective are released by the barrier's abort, those in a receive by its timeout).
    """
    hub = ThreadHub(world_size, timeout_s)
    results: list[object] = [None] * world_size
    errors: list[BaseException] = []

    def body(rank: int) -> None:
        try:
            results[rank] = fn(ThreadTransport(hub, rank))
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors.append(e)
            hub.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(world_size)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    # Stop waiting at the first error: its peers may sit in a receive until the timeout.
    while any(t.is_alive() for t in threads) and not errors and time.monotonic() < deadline:
        next(t for t in threads if t.is_alive()).join(0.05)
    if errors:
        raise errors[0]
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"in-process ranks did not finish within {timeout_s} s")
    return results


class SoloTransport:
    """Rank ``rank`` of ``world_size`` run alone, for per-rank replays (``reference.measure.replay``):
    sends cost nothing and return at once, a receive leaves zeros in its buffer, the all-gather hands
    back zeros for the other ranks, the all-reduce keeps this rank's part, the all-to-all keeps this
    rank's own part and zeros the rest. The rank's compute is exactly the scheme's, with the same
    shapes; its values past the first receive are not the prefill's."""

    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size

    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        return _Done()

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        tensor.zero_()  # a memset: no garbage (denormals, NaNs) in the compute that follows

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor if r == self.rank else torch.zeros_like(tensor) for r in range(self.world_size)]

    def all_reduce(self, tensor: torch.Tensor) -> None:
        return None

    def all_to_all(self, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
        for s, out in enumerate(recv):
            out.copy_(send[s]) if s == self.rank else out.zero_()
