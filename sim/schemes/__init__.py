"""Parallel prefill schemes: one module each, one generator per rank that reads top to bottom.

A ``SchemeSpec`` names a scheme as a scenario lists it (``single``, ``tsp``, ``kvr-e``, or a ``kvr``
with an explicit partition) and decides each rank's chunk for a context and GPU count.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import partition
from . import kvr, single, tsp

KINDS = ("single", "tsp", "kvr")
ATTENTION = ("causal", "masked")


@dataclass(frozen=True, kw_only=True)
class SchemeSpec:
    """``fractions`` (one per rank, summing to 1) or ``tokens`` (per context, one count per rank) pin
    a kvr partition to one GPU count; otherwise ``partitioner`` (a name in ``partition.PARTITIONERS``)
    splits any context over any GPU count. ``attention`` is tsp's attention work: ``causal`` (keys
    [0, e_r), bottom-right causal; what the runtime computes) or ``masked`` (the dense c_r x C block).
    ``kvr-s``/``kvr-p`` partitioners depend on the whole job: ``partition.plan(job)`` resolves them
    (``table``: kvr-p's lookup table file, None: built on the fly at ``table_contexts``). ``order``:
    ``given`` (rank r on GPU r) or ``auto`` (chosen from the topology, ``partition/order.py``)."""

    name: str
    kind: str
    partitioner: str = "even"
    fractions: tuple[float, ...] | None = None
    tokens: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (context, chunks) pairs
    attention: str = "causal"
    order: str = "given"
    table: str | None = None
    table_contexts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in KINDS and self.attention in ATTENTION
        assert self.partitioner in partition.PARTITIONERS and self.order in partition.ORDERS

    @property
    def pinned_gpus(self) -> int | None:
        """The one GPU count an explicit partition fits, else None."""
        if self.fractions is not None:
            return len(self.fractions)
        if self.tokens:
            return len(self.tokens[0][1])
        return None

    def runs_at(self, context: int, num_gpus: int) -> bool:
        """Whether this scheme runs at this context and GPU count."""
        if self.kind == "kvr" and self.partitioner in partition.JOB_PARTITIONERS and self.pinned_gpus is None:
            return True
        return self.chunks(context, num_gpus) is not None

    def chunks(self, context: int, num_gpus: int) -> list[int] | None:
        """Tokens per rank, or None where this scheme does not run (another GPU count or context than
        its explicit partition). Not for kvr-s/kvr-p, which need the job: ``partition.plan(job)``."""
        if self.kind == "single":
            return [context]
        pinned = self.pinned_gpus
        if pinned is not None and pinned != num_gpus:
            return None
        if self.fractions is not None:
            return partition.from_fractions(context, self.fractions)
        if self.tokens:
            return list(dict(self.tokens)[context]) if context in dict(self.tokens) else None
        split = partition.PARTITIONERS[self.partitioner] if self.kind == "kvr" else partition.even
        assert split is not None, f"{self.name}: a {self.partitioner} partition needs the job: partition.plan(job)"
        return split(context, num_gpus)


BUILTIN = {s.name: s for s in (
    SchemeSpec(name="single", kind="single"),
    SchemeSpec(name="tsp", kind="tsp"),
    SchemeSpec(name="tsp-masked", kind="tsp", attention="masked"),
    SchemeSpec(name="kvr-e", kind="kvr"),
    SchemeSpec(name="kvr-s", kind="kvr", partitioner="kvr-s"),
)}


def rank_process(scheme: SchemeSpec, sim, r: int, chunks: list[int]):
    if scheme.kind == "single":
        return single.rank(sim, r, chunks)
    if scheme.kind == "tsp":
        return tsp.rank(sim, r, chunks, attention=scheme.attention)
    return kvr.rank(sim, r, chunks)
