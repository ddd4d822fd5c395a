"""Context partitions: how many tokens each rank holds (a chunk per rank, contiguous, earlier first),
and on which GPU each rank runs. This module is the pure part (no SimPy), shared with the runtime:
the even split, fractions to tokens, the checks, and ``Plan``.

- ``plan.py``: ``plan(job)``, the planner: a scheme's own partition, or ``kvr-s`` (searched,
  ``search.py``) and ``kvr-p`` (predicted from a lookup table, ``table.py``), which depend on the
  whole job (model, hardware, cluster, P, C); and the rank -> GPU order (``order.py``).
- ``python -m sim.partition``: build tables, check them, benchmark the search, draw the figures.
Reference: shared/docs/kv-runahead.md, "Context-level load balancing"; docs/partitioning.md.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence


class PartitionError(ValueError):
    """A partition that does not fit its context: a zero chunk, a wrong sum; a table that does not
    cover a job."""


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
    chunks = _largest_remainder(context, fractions)
    check(context, chunks)
    return chunks


def round_fractions(context: int, fractions: Sequence[float]) -> list[int]:
    """As ``from_fractions``, but never a zero chunk: when plain largest-remainder rounding leaves a
    chunk empty, every chunk gets one token first and the other ``context - parts`` tokens are split
    by largest remainder. Needs ``parts <= context``."""
    if not 1 <= len(fractions) <= context:
        raise PartitionError(f"cannot split {context} tokens into {len(fractions)} non-empty chunks")
    chunks = _largest_remainder(context, fractions)
    if min(chunks) < 1:
        chunks = [1 + c for c in _largest_remainder(context - len(fractions), fractions)]
    check(context, chunks)
    return chunks


def _largest_remainder(context: int, fractions: Sequence[float]) -> list[int]:
    total = sum(fractions)
    exact = [f / total * context for f in fractions]
    chunks = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - chunks[i]), i))
    for i in order[: context - sum(chunks)]:
        chunks[i] += 1
    return chunks


def check(context: int, chunks: Sequence[int]) -> None:
    if any(c < 1 for c in chunks):
        raise PartitionError(f"partition {list(chunks)} of {context} tokens has a zero chunk")
    if sum(chunks) != context:
        raise PartitionError(f"partition {list(chunks)} sums to {sum(chunks)}, not the context {context}")


class Plan(NamedTuple):
    """What a job runs: tokens per rank, the cluster GPU of each rank, and, for a scheme that cuts the
    prompt into pieces that flow through all ranks (``pipeline``), the tokens of each piece."""

    chunks: tuple[int, ...]
    gpus: tuple[int, ...]
    pieces: tuple[int, ...] = ()
    tp: int = 1  # GPUs a rank: a tensor-parallel group of ``tp`` consecutive GPUs from ``gpus[r]``
