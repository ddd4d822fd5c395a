"""The kvr chain's TTFT in closed form: the simulator's answer without SimPy, where the two are the same.

When the chain's routes (rank i's GPU -> rank i+1's GPU) cross no link with background traffic and those
that share a link fit in it together, every transfer runs at its route's slowest bandwidth, and
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
    """Whether ``chain_ttft_s`` equals the simulator for this job's cluster under this rank -> GPU order:
    no route of the chain crosses a link with background traffic, and where routes share a link, their
    rates (each its route's slowest link) fit in it together, so no transfer is ever slowed by another
    (the chain's own sends are its only traffic)."""
    busy = {(bg.src, bg.dst) for bg in job.cluster.background}
    load: dict = {}
    for a, b in zip(gpus, gpus[1:]):
        route = job.cluster.route(a, b)
        if set(route) & busy:
            return False
        rate = min(job.cluster.link(*link).bandwidth_bytes_per_s for link in route)
        for link in route:
            load[link] = load.get(link, 0.0) + rate
    fits = all(total <= job.cluster.link(*link).bandwidth_bytes_per_s * (1 + 1e-12) for link, total in load.items())
    return fits and len(set(gpus)) == len(gpus)


def chain_ttft_s(job, chunks: Sequence[int], gpus: Sequence[int]) -> float:
    """TTFT of kvr with ``chunks`` on GPUs ``gpus`` (rank order), by the recurrence of the docstring.
    Under NCCL's model a send takes NCCL's p2p latency and moves at its protocol's share of the route,
    and compute beside a send or receive runs ``1 + comm_slowdown`` times slower (``_advance``), as in
    the engine."""
    from ..engine.collectives import communication_model, comm_slowdown

    cost = job.cost()
    cluster = job.cluster
    nccl = communication_model(job)
    slow = comm_slowdown(job) if nccl is not None else 0.0
    kv = job.model.kv_bytes_per_token_per_layer(job.dtype)
    layers, last = job.model.num_layers, len(chunks) - 1
    arrive_prev: list[float] = []  # arrival times of the previous rank's messages, per layer
    send_prev: list[float] = []  # and when each began (its kernels' start on both GPUs)
    keys = 0
    for r, c in enumerate(chunks):
        keys += c
        qkv_s = cost.pre_attention_s(c)
        ops = ([cost.kv_copy_s(keys)] if r > 0 else []) + [cost.attention_s(c, keys, causal_pairs(c, keys)),
                                                          cost.post_attention_s(c)]
        rest_s = sum(ops) + layer_extra_s(cost, qkv_s, *ops, tokens=c, past=r > 0)
        if r < last:
            nbytes = keys * kv
            if nccl is None:
                route = [cluster.link(*link) for link in cluster.route(gpus[r], gpus[r + 1])]
                lat_s = sum(link.latency_s for link in route)
                flow_s = nbytes / min(link.bandwidth_bytes_per_s for link in route)
            else:
                choice, _ = nccl.send(gpus[r], gpus[r + 1], nbytes)
                lat_s, flow_s = choice.latency_s, nbytes / choice.bus_bytes_per_s
        t = cost.embed_s(c)
        arrive: list[float] = []
        began: list[float] = []
        # the communication kernels on this rank's GPU: its receives (known) and its sends (as they come)
        busy = list(zip(send_prev, arrive_prev)) if slow else []
        sent = 0.0
        for layer in range(layers):
            ready = _advance(t, qkv_s, busy, slow)
            if r > 0 and arrive_prev[layer] > ready:
                ready = arrive_prev[layer]
            if r < last:
                start = ready if ready > sent else sent
                sent = start + lat_s + flow_s
                arrive.append(sent)
                began.append(start)
                if slow:
                    busy.append((start, sent))
            t = _advance(ready, rest_s, busy, slow)
        arrive_prev, send_prev = arrive, began
    return t + cost.head_s()


def _advance(t: float, work_s: float, busy: list[tuple[float, float]], slow: float) -> float:
    """When ``work_s`` seconds of compute begun at ``t`` end, running ``1 + slow`` times slower inside
    any of the ``busy`` intervals (communication kernels on the GPU)."""
    if not slow or not busy:
        return t + work_s
    left = work_s
    for a, b in _union_after(busy, t):
        if a > t:  # full speed until the interval
            if t + left <= a:
                return t + left
            left -= a - t
            t = a
        span = (b - t) / (1 + slow)  # work done inside the interval
        if left <= span:
            return t + left * (1 + slow)
        left -= span
        t = b
    return t + left


def _union_after(busy: list[tuple[float, float]], t: float) -> list[tuple[float, float]]:
    """The union of the ``busy`` intervals, clipped to begin no earlier than ``t``, sorted."""
    out: list[list[float]] = []
    for a, b in sorted((max(a, t), b) for a, b in busy if b > t):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]
