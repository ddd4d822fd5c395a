"""The kvr chain's TTFT in closed form: the simulator's answer without SimPy, where the two are the same.

When no two of the chain's routes (rank i's GPU -> rank i+1's GPU) share a link and none crosses a link
with background traffic, every transfer runs alone on its links at its route's slowest bandwidth, and
the simulation of ``schemes/kvr.py`` reduces to this recurrence per rank r and layer l (all ranks start
at 0 with their embedding):

    ready[r][l]  = max(t[r] + qkv_r, arrive[r-1][l])                (rank 0: t[r] + qkv_r)
    start[r][l]  = max(ready[r][l], arrive[r][l-1])                 (sends of one pair go in order)
    arrive[r][l] = start[r][l] + latency(route r) + S_r * kv_bytes / bandwidth(route r)
    t[r]         = ready[r][l] + (kv-cat + attention + mlp)

and TTFT is the last rank's t after its LM head. It costs ~0.3 ms instead of ~30 ms for 8 GPUs, 32
layers, so the search can score thousands of candidates. ``tests/sim/test_partition_properties.py`` checks
that it equals ``simulate`` (relative difference <= 1e-9) on random models, clusters, partitions and
orders; the search's answer is still judged by the simulator (``search.search_job``).
"""
from __future__ import annotations

from typing import Sequence

from ..cost import causal_pairs, layer_extra_s


def exact_for(job, gpus: Sequence[int]) -> bool:
    """Whether ``chain_ttft_s`` equals the simulator for this job's cluster under this rank -> GPU order."""
    busy = {(bg.src, bg.dst) for bg in job.cluster.background}
    used: set = set()
    for a, b in zip(gpus, gpus[1:]):
        links = set(job.cluster.route(a, b))
        if links & used or links & busy:
            return False
        used |= links
    return len(set(gpus)) == len(gpus)


def chain_ttft_s(job, chunks: Sequence[int], gpus: Sequence[int]) -> float:
    """TTFT of kvr with ``chunks`` on GPUs ``gpus`` (rank order), by the recurrence of the docstring."""
    cost = job.cost()
    cluster = job.cluster
    kv = job.model.kv_bytes_per_token_per_layer(job.dtype)
    layers, last = job.model.num_layers, len(chunks) - 1
    arrive_prev: list[float] = []  # arrival times of the previous rank's messages, per layer
    keys = 0
    for r, c in enumerate(chunks):
        keys += c
        qkv_s = cost.pre_attention_s(c)
        ops = ([cost.kv_copy_s(keys)] if r > 0 else []) + [cost.attention_s(c, keys, causal_pairs(c, keys)),
                                                          cost.post_attention_s(c)]
        rest_s = sum(ops) + layer_extra_s(cost, qkv_s, *ops, tokens=c, past=r > 0)
        if r < last:
            route = [cluster.link(*link) for link in cluster.route(gpus[r], gpus[r + 1])]
            lat_s = sum(link.latency_s for link in route)
            flow_s = keys * kv / min(link.bandwidth_bytes_per_s for link in route)
        t = cost.embed_s(c)
        arrive: list[float] = []
        sent = 0.0
        for layer in range(layers):
            ready = t + qkv_s
            if r > 0 and arrive_prev[layer] > ready:
                ready = arrive_prev[layer]
            if r < last:
                sent = (ready if ready > sent else sent) + lat_s + flow_s
                arrive.append(sent)
            t = ready + rest_s
        arrive_prev = arrive
    return t + cost.head_s()
