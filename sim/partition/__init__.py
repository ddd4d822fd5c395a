"""Context partitions: how many tokens each rank holds (a chunk per rank, contiguous, earlier first).

Partitioners are a small registry keyed by name: ``even`` (KVR-E and TSP's split) now; the searched
(``kvr-s``) and predicted (``kvr-p``) partitions of KV-Runahead plug in here later.
Reference: shared/docs/kv-runahead.md, "Context-level load balancing".
"""
from __future__ import annotations

from typing import Callable, Sequence


class PartitionError(ValueError):
    """A partition that does not fit its context: a zero chunk, a wrong sum."""


def even(context: int, parts: int) -> list[int]:
    """As even as possible; the first ``context mod parts`` chunks get one token more
    (``torch.tensor_split`` order, as the runtime splits)."""
    if not 1 <= parts <= context:
        raise PartitionError(f"cannot split {context} tokens into {parts} non-empty chunks")
    q, r = divmod(context, parts)
    return [q + 1 if i < r else q for i in range(parts)]


def from_fractions(context: int, fractions: Sequence[float]) -> list[int]:
    """Token counts nearest to ``fraction * context`` that sum to ``context`` (largest remainder;
    ties go to the earlier chunk). Every chunk must get at least one token."""
    total = sum(fractions)
    exact = [f / total * context for f in fractions]
    chunks = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - chunks[i]), i))
    for i in order[: context - sum(chunks)]:
        chunks[i] += 1
    check(context, chunks)
    return chunks


def check(context: int, chunks: Sequence[int]) -> None:
    if any(c < 1 for c in chunks):
        raise PartitionError(f"partition {list(chunks)} of {context} tokens has a zero chunk")
    if sum(chunks) != context:
        raise PartitionError(f"partition {list(chunks)} sums to {sum(chunks)}, not the context {context}")


PARTITIONERS: dict[str, Callable[[int, int], list[int]]] = {"even": even}
