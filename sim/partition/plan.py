"""The planner: what a job runs, its chunks and the cluster GPU of each rank (a ``Plan``).

- A scheme's own partition: ``single`` the whole context; ``tsp`` and ``kvr-e`` the even split;
  an explicit ``kvr`` partition its fractions or tokens.
- ``kvr-s``: searched for the job (``search.py``); ``kvr-p``: predicted from a lookup table
  (``table.py``). Both are cached per job and cost model.
- The order: ``order.order_for`` (pinned, given, or chosen from the topology).

The planner asks the engine for TTFTs of candidate plans (``search.simulator_oracle``); the engine
never asks the planner. ``sim.simulate.simulate(job)`` is ``run(job, plan(job))``.
"""
from __future__ import annotations

import dataclasses

from ..cost import kv_chain_of
from ..engine import run
from ..job import JOB_PARTITIONERS
from ..schemes import unsupported
from . import Plan, even, from_fractions, round_fractions
from .order import order_for
from .search import balanced, search_job
from .table import predict_job


def plan(job) -> Plan:
    """The chunks and rank -> GPU mapping of ``job`` (a ``sim.job.Job``)."""
    scheme = job.scheme
    if scheme.tp != 1 and scheme.kind != "single":
        return _tp_plan(job)
    if scheme.kind == "kvr" and scheme.partitioner in JOB_PARTITIONERS and scheme.pinned_gpus is None:
        return _cached_plan(job)
    chunks = fixed_chunks(scheme, job.context, job.num_gpus)
    pieces = pipeline_pieces(job) if scheme.kind == "pipeline" else ()
    return Plan(tuple(chunks), order_for(job, chunks), tuple(pieces))


def pipeline_pieces(job) -> list[int]:
    """pipeline: the prompt's pieces, even or of equal time (the balancing solver of KVR-S, whose
    per-layer cost of a chunk after its past is a piece's too)."""
    m = min(job.scheme.num_pieces(job.num_gpus), job.context)
    if job.scheme.piece_sizes == "even":
        return even(job.context, m)
    return round_fractions(job.context, balanced(job.context, m, job.cost(), kv_chain_of(job)))


def fixed_chunks(scheme, context: int, num_gpus: int) -> list[int]:
    """Tokens per rank of a scheme whose partition does not depend on the job's hardware."""
    if scheme.kind == "single":
        return [context]
    if scheme.kind in ("tp", "pipeline"):  # every rank sees every token
        return [context] * num_gpus
    if scheme.kind == "ring-zigzag":
        pieces = even(context, 2 * num_gpus)
        return [pieces[r] + pieces[2 * num_gpus - 1 - r] for r in range(num_gpus)]
    assert scheme.runs_at(context, num_gpus), f"{scheme.name} has no partition for {num_gpus} GPUs, C={context}"
    if scheme.fractions is not None:
        return from_fractions(context, scheme.fractions)
    if scheme.tokens:
        return list(dict(scheme.tokens)[context])
    return even(context, num_gpus)


def tp_sizes(job) -> list[int]:
    """Tensor-parallel group sizes ``job`` can use: its scheme's, or (``tp: 0``) every size that
    divides a node's GPUs and the job's, splits the query heads, and leaves the scheme runnable."""
    if job.scheme.tp > 0:
        return [job.scheme.tp]
    node = job.cluster.gpus_per_node or job.num_gpus
    out = []
    for t in range(1, node + 1):
        if node % t or job.num_gpus % t or job.model.num_heads % t:
            continue
        ranks = job.num_gpus // t
        if unsupported(job.scheme.kind, job.model, ranks, job.context) is None and ranks <= job.context:
            out.append(t)
    return out


def _tp_plan(job) -> Plan:
    """Ranks of ``t`` consecutive GPUs each (a node holds whole groups), the scheme's own plan among
    them; with ``tp: 0`` each size is run and the fastest kept (cached)."""
    key = (job, id(job.cost_model))
    if key in _PLANS:
        return _PLANS[key][0]
    best = None
    for t in tp_sizes(job):
        ranks = job.num_gpus // t
        inner = dataclasses.replace(job, scheme=dataclasses.replace(job.scheme, tp=1), num_gpus=ranks,
                                    gpu_order=None)
        base = plan(inner)
        candidate = Plan(base.chunks, tuple(r * t for r in range(ranks)), base.pieces, t)
        if job.scheme.tp > 0:
            best = candidate
            break
        ttft_s = run(dataclasses.replace(job, scheme=inner.scheme), candidate).ttft_s
        if best is None or ttft_s < best[0]:
            best = (ttft_s, candidate)
    assert best is not None, f"{job.scheme.name}: no tensor-parallel size fits {job.num_gpus} GPUs"
    chosen = best if isinstance(best, Plan) else best[1]
    _PLANS[key] = (chosen, job.cost_model)
    return chosen


_PLANS: dict = {}


def _cached_plan(job) -> Plan:
    # A job's cost_model is left out of its hash and equality, so it is part of the key here (the
    # value keeps it alive, so its id is not reused).
    key = (job, id(job.cost_model))
    if key not in _PLANS:
        if job.scheme.partitioner == "kvr-s":
            result, gpus = search_job(job)
            planned = Plan(result.chunks, gpus)
        else:
            planned = predict_job(job)
        _PLANS[key] = (planned, job.cost_model)
    return _PLANS[key][0]
