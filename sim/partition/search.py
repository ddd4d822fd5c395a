"""KVR-S: the hierarchical grid search for a partition, its balancing start point, and the oracles.

- ``balanced(context, parts, cost)``: the direct balancing solver. It finds real chunk sizes c_i for
  which every rank's per-layer compute (QKV, KV append, attention of c_i queries to S_i keys, output
  projection and MLP) takes the same time T under the cost model, so every rank finishes each layer
  together: given T, rank i's chunk is the largest with time <= T after S_{i-1} tokens (bisection);
  T is found by bisection so the chunks sum to C. Communication is left to the search.
- ``grid_search(context, parts, oracle, start)``: a coarse grid on the line through the even
  partition E and the start B (x(t) = E + t (B - E), t in ``COARSE_T``), then ``LEVELS`` levels of
  finer star grids around the best point: every boundary S_i moved by +-h (one at a time: tokens
  move between neighbouring chunks), the best neighbour taken while it improves and its move repeated
  while that improves (a line search; at most ``MAX_SWEEPS`` sweeps a level), h = C // (8P) at level 1 and a quarter of the last step at each next.
  Each candidate is scored once by the oracle (a callable: chunks -> TTFT seconds); the answer is the
  best of every candidate scored, so it is never slower than E or any coarse point.
- ``simulator_oracle(job, gpus)``: the default oracle, the simulator. The runtime can pass its own
  (one that measures real runs), which is the paper's way.
docs/partitioning.md describes the grid, the refinement rule and the solver with figures.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

from ..cost import CostModel, causal_pairs, chain_kv_s, kv_chain_of, layer_extra_s
from ..engine import run
from ..job import BUILTIN
from . import Plan, chain, even, round_fractions
from .order import order_for

Oracle = Callable[[tuple[int, ...]], float]

COARSE_T = (-1.0, -0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # the coarse grid on the line E (t=0) -> B (t=1)
LEVELS = 4  # refinement levels after the coarse grid
MAX_SWEEPS = 8  # best-neighbour moves per level at most
SIMULATOR_BUDGET = 150  # candidates scored by SimPy itself when the closed form is not exact (~30 ms each)
_BISECT = 40  # bisection steps (2^-40 of the range)


@dataclass(frozen=True)
class SearchResult:
    """A KVR-S search: the best partition and its TTFT, the solver's start, every coarse-grid point with
    its TTFT, the steps of the refinement levels and how many candidates the oracle scored."""

    chunks: tuple[int, ...]
    ttft_s: float
    start: tuple[int, ...]
    coarse: tuple[tuple[tuple[int, ...], float], ...]
    steps: tuple[int, ...]
    evaluations: int


# ----- the balancing solver ---------------------------------------------------------------------------
def layer_compute_s(cost: CostModel, rank: int, tokens: float, before: float, kv_chain: str = "resident") -> float:
    """Per-layer compute of kvr rank ``rank`` holding ``tokens`` tokens after ``before`` earlier ones
    (real-valued token counts are fine for the analytic cost model)."""
    keys = before + tokens
    parts = (cost.pre_attention_s(tokens) + chain_kv_s(cost, kv_chain, rank, keys)
             + cost.attention_s(tokens, keys, causal_pairs(tokens, keys)) + cost.post_attention_s(tokens))
    return parts + layer_extra_s(cost, parts, tokens=tokens, past=rank > 0)


_BALANCED: dict = {}


def balanced(context: int, parts: int, cost: CostModel, kv_chain: str = "resident") -> list[float]:
    """Fractions of C (summing to 1) for which every rank's per-layer compute is equal (each >= 1 token).
    Cached per cost model (by value where it is hashable), context, parts and KV chain."""
    try:
        key = (cost, context, parts, kv_chain)
        hash(key)
    except TypeError:  # a profile (it holds dicts): by identity, kept alive in the value
        key = (id(cost), context, parts, kv_chain)
    if key not in _BALANCED:
        _BALANCED[key] = (_balanced(context, parts, cost, kv_chain), cost)
    return list(_BALANCED[key][0])


def _balanced(context: int, parts: int, cost: CostModel, kv_chain: str) -> list[float]:
    def chunks_at(period_s: float, *, whole: bool = True) -> list[float]:
        out, before = [], 0.0
        for i in range(parts):
            if not whole and before > context:  # the sum is past the context already: too long a period
                return out + [1.0] * (parts - i)
            lo, hi = 1.0, float(context)
            if layer_compute_s(cost, i, lo, before, kv_chain) >= period_s:
                hi = lo
            for _ in range(_BISECT):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if layer_compute_s(cost, i, mid, before, kv_chain) <= period_s else (lo, mid)
            out.append(lo)
            before += lo
        return out

    lo, hi = 0.0, layer_compute_s(cost, 0, float(context), 0.0, kv_chain)
    for _ in range(_BISECT):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(chunks_at(mid, whole=False)) <= context else (lo, mid)
    chunks = chunks_at(hi)
    return [c / sum(chunks) for c in chunks]


# ----- the grid search --------------------------------------------------------------------------------
def _boundaries(chunks: Sequence[int]) -> list[int]:
    out, s = [], 0
    for c in chunks[:-1]:
        s += c
        out.append(s)
    return out


def _chunks(bounds: Sequence[int], context: int) -> tuple[int, ...]:
    edges = [0, *bounds, context]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


def coarse_grid(context: int, parts: int, start: Sequence[int]) -> list[tuple[int, ...]]:
    """The coarse grid: partitions on the line from the even partition (t=0) through ``start`` (t=1),
    and on 2 GPUs also the splits at k/16 of the context (k = 1..15), rounded to whole tokens (every
    chunk >= 1); repeats dropped."""
    e = even(context, parts)
    lines = [[max(a + t * (b - a), 1e-9) for a, b in zip(e, start)] for t in COARSE_T]
    if parts == 2:  # one dimension: also every sixteenth of the context, so a second valley is seen
        lines += [[k, 16 - k] for k in range(1, 16)]
    points: list[tuple[int, ...]] = []
    for x in lines:
        p = tuple(round_fractions(context, x))
        if p not in points:
            points.append(p)
    return points


def grid_search(context: int, parts: int, oracle: Oracle, start: Sequence[int] | None = None,
                levels: int = LEVELS, budget: int | None = None) -> SearchResult:
    """KVR-S: the partition of ``context`` tokens into ``parts`` chunks with the least oracle TTFT found
    by the coarse grid and ``levels`` refinement levels (module docstring). ``budget``: stop refining
    once the oracle has scored this many candidates (None: no limit)."""
    start = tuple(start) if start is not None else tuple(even(context, parts))
    scores: dict[tuple[int, ...], float] = {}

    def score(chunks: tuple[int, ...]) -> float:
        if chunks not in scores:
            scores[chunks] = oracle(chunks)
        return scores[chunks]

    coarse = [(p, score(p)) for p in coarse_grid(context, parts, start)]
    best = min(coarse, key=lambda pt: pt[1])[0]
    step, steps = max(1, context // (8 * parts)), []
    for _ in range(levels):
        steps.append(step)
        for _ in range(MAX_SWEEPS):
            if budget is not None and len(scores) >= budget:
                break
            bounds = _boundaries(best)
            neighbours = []
            for i in range(parts - 1):
                for move in (-step, step):
                    moved = bounds[:i] + [bounds[i] + move] + bounds[i + 1:]
                    if all(a < b for a, b in zip([0, *moved], [*moved, context])):
                        neighbours.append(_chunks(moved, context))
            if not neighbours:
                break
            candidate = min(neighbours, key=score)
            if score(candidate) >= score(best):
                break
            move = [b - a for a, b in zip(_boundaries(best), _boundaries(candidate))]
            best = candidate
            while budget is None or len(scores) < budget:  # repeat the move while it improves (a line search)
                further = _chunks([b + m for b, m in zip(_boundaries(best), move)], context)
                if min(further) < 1 or score(further) >= score(best):
                    break
                best = further
        if step == 1:
            break
        step = max(1, step // 4)
    best = min(scores, key=lambda p: (scores[p], p))
    return SearchResult(chunks=best, ttft_s=scores[best], start=start, coarse=tuple(coarse),
                        steps=tuple(steps), evaluations=len(scores))


# ----- the simulator as oracle --------------------------------------------------------------------
def simulator_oracle(job, gpus: Sequence[int] | None = None) -> Oracle:
    """Chunks -> simulated TTFT of ``job`` (its model, hardware, cluster, context) under kvr with those
    chunks, rank r on GPU ``gpus[r]`` (default: GPU r): the engine run with that plan."""
    kvr = job.scheme if job.scheme.kind == "kvr" else BUILTIN["kvr-e"]
    as_kvr = dataclasses.replace(job, scheme=kvr)

    def ttft_s(chunks: tuple[int, ...]) -> float:
        order = tuple(gpus) if gpus is not None else tuple(range(len(chunks)))
        return run(dataclasses.replace(as_kvr, num_gpus=len(chunks)), Plan(tuple(chunks), order)).ttft_s

    return ttft_s


def start_chunks(job) -> tuple[int, ...]:
    """The balancing solver's partition of the job, in whole tokens."""
    return tuple(round_fractions(job.context, balanced(job.context, job.num_gpus, job.cost(), kv_chain_of(job))))


def search_job(job, oracle: Oracle | None = None) -> tuple[SearchResult, tuple[int, ...]]:
    """KVR-S for a simulator job: the order first (``order: auto`` picks it from the solver's partition,
    else the job's or the given order), then the grid search under that order. Returns the search and
    the order.

    The default oracle is the simulator. Where the chain's closed form is exact (``chain.exact_for``:
    no shared or busy links on the chain) candidates are scored by it; otherwise by SimPy, at most
    ``SIMULATOR_BUDGET`` of them. Either way SimPy judges the end: the best candidate and the even
    partition are simulated and the faster is the answer, with its simulated TTFT."""
    start = start_chunks(job)
    gpus = order_for(job, start)
    simulated = simulator_oracle(job, gpus)
    if oracle is not None:
        return grid_search(job.context, job.num_gpus, oracle, start), gpus
    if chain.exact_for(job, gpus):
        result = grid_search(job.context, job.num_gpus, lambda c: chain.chain_ttft_s(job, c, gpus), start)
    else:
        result = grid_search(job.context, job.num_gpus, simulated, start, budget=SIMULATOR_BUDGET)
    judged = min((simulated(c), c) for c in {result.chunks, tuple(even(job.context, job.num_gpus))})
    return dataclasses.replace(result, chunks=judged[1], ttft_s=judged[0]), gpus
