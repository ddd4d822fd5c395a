"""Parallel prefill schemes: one module each, one generator per rank that reads top to bottom.

Every scheme module has ``rank(sim, r, chunks, scheme)``, the process body of rank r (``sim`` is the
engine's ``Sim``: compute, send, message, all_gather), and ``kv_tokens(chunks, r)``, the tokens whose
K/V rank r keeps and the tokens of its one-layer transient K/V buffer (the memory check,
``sim/memory.py``). Adding a scheme: a module here and a line in ``SCHEMES`` (and its kind in
``sim.job.SCHEME_KINDS``); docs/design.md, "Adding a scheme".
"""
from __future__ import annotations

from types import ModuleType

from . import kvr, single, tsp

SCHEMES: dict[str, ModuleType] = {"single": single, "tsp": tsp, "kvr": kvr}


def rank_process(scheme, sim, r: int, chunks):
    """The process body of rank r under ``scheme`` (a ``sim.job.SchemeSpec``)."""
    return SCHEMES[scheme.kind].rank(sim, r, list(chunks), scheme)


def kv_tokens(kind: str, chunks, r: int) -> tuple[int, int]:
    return SCHEMES[kind].kv_tokens(list(chunks), r)
