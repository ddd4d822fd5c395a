"""The chain order: which cluster GPU runs rank 0, 1, ..., P-1 (``order: auto``).

KV-Runahead's rank i sends the cumulative K and V of S_i tokens to rank i+1 every layer, so the
messages grow along the chain: the late ones are the large ones. On a non-uniform cluster the order
should put the large late messages on fast links. For an order g_0..g_{P-1} the transfer of message i
takes, on an idle network,

    t_i = route latency(g_i -> g_{i+1}) + S_i * kv_bytes / effective bandwidth(g_i -> g_{i+1})

where the effective bandwidth of a route is its slowest link's bandwidth divided by (1 + the
background flows on that link; on/off flows count as always on). ``chain_order`` picks the order with
the least (max_i t_i, sum_i t_i): the largest per-layer transfer bounds the chain's period once it
exceeds a rank's compute, and the sum is the start-up lag down the chain. Every ordered choice of P of
the cluster's GPUs is tried when there are at most ``EXACT_LIMIT`` of them (8 GPUs: 40 320), else a
beam search keeps the ``BEAM`` best partial chains. Ties keep the earliest order in lexicographic
order, so a uniform cluster keeps 0..P-1. ``ring_order`` does the same for tsp's ring (every message
the same size, the ring closed back to rank 0). docs/partitioning.md, "Chain order".
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

from ..cluster import ClusterSpec
from . import PartitionError

EXACT_LIMIT = 200_000
BEAM = 512


def link_times(cluster: ClusterSpec) -> Callable[[int, int, float], float]:
    """``time(a, b, nbytes)``: seconds for ``nbytes`` from GPU a to GPU b on an otherwise idle network
    (with the background flows on)."""
    busy: dict = {}
    for bg in cluster.background:
        busy[bg.src, bg.dst] = busy.get((bg.src, bg.dst), 0) + bg.flows
    pairs: dict[tuple[int, int], tuple[float, float]] = {}  # (latency, effective bandwidth), as asked

    def time(a: int, b: int, nbytes: float) -> float:
        if (a, b) not in pairs:
            links = [(hop, cluster.link(*hop)) for hop in cluster.route(a, b)]
            pairs[a, b] = (sum(l.latency_s for _, l in links),
                           min(l.bandwidth_bytes_per_s / (1 + busy.get(hop, 0)) for hop, l in links))
        lat, cap = pairs[a, b]
        return lat + nbytes / cap

    return time


def _best(cluster: ClusterSpec, parts: int, message_bytes: Sequence[float], ring: bool) -> tuple[int, ...]:
    """The order of ``parts`` GPUs minimising (max, sum) of the hops' transfer times; hop i carries
    ``message_bytes[i]`` (i = 0..parts-2, and parts-1 back to the start when ``ring``)."""
    if parts == 1:
        return (0,)
    time = link_times(cluster)
    n = cluster.num_gpus

    def score(order: Sequence[int]) -> tuple[float, float]:
        hops = [time(order[i], order[i + 1], message_bytes[i]) for i in range(len(order) - 1)]
        if ring and len(order) == parts:
            hops.append(time(order[-1], order[0], message_bytes[-1]))
        return (max(hops, default=0.0), sum(hops))

    if math.perm(n, parts) <= EXACT_LIMIT:
        return min(itertools.permutations(range(n), parts), key=score)  # min keeps the first of ties
    beam: list[tuple[int, ...]] = [(g,) for g in range(n)]
    for _ in range(parts - 1):
        grown = [o + (g,) for o in beam for g in range(n) if g not in o]
        beam = sorted(grown, key=lambda o: (score(o), o))[:BEAM]
    return min(beam, key=lambda o: (score(o), o))


def chain_order(cluster: ClusterSpec, chunks: Sequence[int], kv_bytes_per_token: float) -> tuple[int, ...]:
    """The GPU of each kvr rank for this partition (message i carries S_i tokens' K and V)."""
    cumulative = list(itertools.accumulate(chunks))
    return _best(cluster, len(chunks), [s * kv_bytes_per_token for s in cumulative[:-1]], ring=False)


def ring_order(cluster: ClusterSpec, parts: int, chunk_bytes: float) -> tuple[int, ...]:
    """The GPU of each tsp rank: the ring (rank order, closed) whose slowest hop is fastest."""
    return _best(cluster, parts, [chunk_bytes] * parts, ring=True)


def order_for(job, chunks: Sequence[int]) -> tuple[int, ...]:
    """The cluster GPU of each rank of ``job`` with these chunks: ``job.gpu_order`` where pinned (it
    must be distinct GPUs of the cluster), else rank r on GPU r (``order: given``), else the chain's or
    the ring's best order (``order: auto``)."""
    if job.gpu_order is not None:
        gpus = tuple(job.gpu_order)
        if len(gpus) != len(chunks) or len(set(gpus)) != len(gpus) or not set(gpus) <= set(range(job.cluster.num_gpus)):
            raise PartitionError(f"gpu_order {list(gpus)} must be {len(chunks)} distinct GPUs of cluster "
                                 f"{job.cluster.name!r} (0..{job.cluster.num_gpus - 1})")
        return gpus
    if job.scheme.order != "auto" or len(chunks) == 1:
        return tuple(range(len(chunks)))
    kv = job.model.kv_bytes_per_token_per_layer(job.dtype)
    if job.scheme.kind == "tsp":
        return ring_order(job.cluster, len(chunks), max(chunks) * kv)
    return chain_order(job.cluster, chunks, kv)
