"""Parallel prefill schemes: one module each, one generator per rank that reads top to bottom.

Every scheme module has ``rank(sim, r, chunks, scheme)``, the process body of rank r (``sim`` is the
engine's ``Sim``: compute, send, message, all_gather, all_reduce, all_to_all; ``chunks`` the plan's
tokens per rank), ``rank_memory(model, dtype, plan, r)``, rank r's memory at its peak
(``sim/memory.py``'s parts), and ``supports(model, num_gpus, context)``, why it cannot run (or None). Adding a scheme: a module here and a line in ``SCHEMES`` (and its kind in
``sim.job.SCHEME_KINDS``); docs/design.md, "Adding a scheme".
"""
from __future__ import annotations

import dataclasses

from types import ModuleType

from ..memory import MemoryCheck, RankMemory, check
from ..model import dtype_bytes
from . import kvr, pipeline, ring, ring_zigzag, single, tp, tsp, ulysses

SCHEMES: dict[str, ModuleType] = {"single": single, "tsp": tsp, "kvr": kvr, "ring": ring,
                                  "ring-zigzag": ring_zigzag, "ulysses": ulysses, "tp": tp, "pipeline": pipeline}


def rank_process(scheme, sim, r: int, plan):
    """The process body of rank r under ``scheme`` (a ``sim.job.SchemeSpec``) and ``plan``."""
    return SCHEMES[scheme.kind].rank(sim, r, plan, scheme)


def unsupported(kind: str, model, num_gpus: int, context: int, tp: int = 1) -> str | None:
    """Why a scheme cannot run this model on this many GPUs at this context, its ranks groups of
    ``tp`` GPUs (0: the planner's pick) (None: it can)."""
    if tp > 1:
        if num_gpus % tp:
            return f"{num_gpus} GPUs do not form groups of {tp}"
        if model.num_heads % tp:
            return f"{model.num_heads} query heads are not divisible by tensor-parallel groups of {tp}"
        num_gpus //= tp
    return SCHEMES[kind].supports(model, num_gpus, context)


def eager_scores_bytes(job, plan, r: int) -> float:
    """Eager attention's materialised scores at their peak, rank r's largest attention call: the fp32
    softmax output and its dtype copy (4 + b bytes a score) over queries x keys x heads. Keys: the end of
    the rank's tokens (single, tsp, kvr; tsp's ``masked`` the whole context), else the largest block."""
    chunks = plan.chunks
    c = chunks[r]
    if job.scheme.kind in ("single", "tsp", "kvr"):
        keys = sum(chunks) if job.scheme.attention == "masked" else sum(chunks[: r + 1])
    else:
        keys = max(chunks)
    return float(c) * keys * job.model.num_heads * (4 + dtype_bytes(job.dtype))


def memory_check(job, plan, capacity_bytes: float | None) -> MemoryCheck:
    """Every rank's memory under ``plan`` against the GPU's (a tensor-parallel group's GPU holds
    1/tp of its rank's weights, activations and K/V heads, or one replicated K/V head)."""
    module = SCHEMES[job.scheme.kind]
    ranks = [module.rank_memory(job.model, job.dtype, plan, r) for r in range(len(plan.chunks))]
    if job.gpu is not None and job.gpu.attention_impl == "eager":
        ranks = [dataclasses.replace(m, activations=m.activations + eager_scores_bytes(job, plan, r))
                 for r, m in enumerate(ranks)]
    if plan.tp > 1:
        t, nkv = plan.tp, job.model.num_kv_heads
        kv = max(nkv / t, 1.0) / nkv
        ranks = [RankMemory(weights=m.weights / t, kv_cache=m.kv_cache * kv, kv_transient=m.kv_transient * kv,
                            activations=m.activations / t) for m in ranks]
    return check(ranks, capacity_bytes)
