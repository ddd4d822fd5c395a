"""The kvr chain's TTFT in closed form: the simulator's answer without SimPy, where the two are the same.

When the chain's routes (rank i's GPU -> rank i+1's GPU) cross no link with background traffic and those
that share a link fit in it together, every transfer runs at its route's slowest bandwidth, and
the simulation of ``schemes/kvr.py`` reduces to this recurrence per rank r and layer l (all ranks start
at 0 with their embedding):

    ready[r][l]  = max(t[r] + qkv_r, arrive[r-1][l])                (rank 0: t[r] + qkv_r)
    start[r][l]  = max(ready[r][l], arrive[r][l-1])                 (sends of one pair go in order)
    arrive[r][l] = start[r][l] + latency(route r) + S_r * kv_bytes / bandwidth(route r)
    t[r]         = ready[r][l] + (kv-cat + attention + mlp)     (kv-cat: ``sim.cost.chain_kv_s``)

and TTFT is the last rank's t after its LM head. It costs ~0.3 ms instead of ~30 ms for 8 GPUs, 32
layers, so the search can score thousands of candidates. ``tests/sim/test_partition_properties.py`` checks
that it equals ``simulate`` (relative difference <= 1e-9) on random models, clusters, partitions and
orders; the search's answer is still judged by the simulator (``search.search_job``).
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

from ..cost import causal_pairs, chain_kv_s, kv_chain_of, layer_extra_s


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
    and compute beside a send's or receive's kernel runs ``1 + slowdown(its thread blocks)`` times slower
    (``_advance``), as in the engine."""
    from ..engine.collectives import communication_model, slowdown_model

    cost = job.cost()
    cluster = job.cluster
    nccl = communication_model(job)
    slowdown = slowdown_model(job)
    kv = job.model.kv_bytes_per_token_per_layer(job.dtype)
    chain = kv_chain_of(job)
    layers, last = job.model.num_layers, len(chunks) - 1
    received: list[tuple[float, float, int]] = []  # the previous rank's sends: (start, arrival, blocks)
    keys = 0
    for r, c in enumerate(chunks):
        keys += c
        qkv_s = cost.pre_attention_s(c)
        ops = [chain_kv_s(cost, chain, r, keys), cost.attention_s(c, keys, causal_pairs(c, keys)),
               cost.post_attention_s(c)]
        rest_s = sum(ops) + layer_extra_s(cost, qkv_s, *ops, tokens=c, past=r > 0)
        ctas = 0
        if r < last:
            nbytes = keys * kv
            if nccl is None:
                route = [cluster.link(*link) for link in cluster.route(gpus[r], gpus[r + 1])]
                lat_s = sum(link.latency_s for link in route)
                flow_s = nbytes / min(link.bandwidth_bytes_per_s for link in route)
            else:
                choice, _ = nccl.send(gpus[r], gpus[r + 1], nbytes)
                lat_s, flow_s = choice.latency_s, nbytes / choice.bus_bytes_per_s
                ctas = nccl.send_ctas(gpus[r], gpus[r + 1])
        sends: list[tuple[float, float, int]] = []
        # the kernels on this rank's GPU: its receives and its sends, two streams, each in time order
        streams = (deque(received), deque()) if slowdown else ()
        t = _advance(0.0, cost.embed_s(c), streams, slowdown)  # a long embedding may meet the first receive
        sent = 0.0
        for layer in range(layers):
            ready = _advance(t, qkv_s, streams, slowdown)
            if r > 0 and received[layer][1] > ready:
                ready = received[layer][1]
            if r < last:
                start = ready if ready > sent else sent
                sent = start + lat_s + flow_s
                sends.append((start, sent, ctas))
                if slowdown:
                    streams[1].append(sends[-1])
            t = _advance(ready, rest_s, streams, slowdown)
        received = sends
    return t + cost.head_s()


def _advance(t: float, work_s: float, streams, slowdown) -> float:
    """When ``work_s`` seconds of compute begun at ``t`` end, running ``1 + slowdown(blocks)`` times
    slower while kernels (start, end, thread blocks) are resident on the GPU. ``streams``: deques of
    kernels that follow one another (a channel's sends, a peer's receives: starts and ends both in
    order), so those that ended by ``t`` leave from the front and at most one of each is active."""
    if slowdown is None or not streams:
        return t + work_s
    left = work_s
    while True:
        blocks, edge = 0, float("inf")
        for kernels in streams:
            while kernels and kernels[0][1] <= t:
                kernels.popleft()
            for start, end, k in kernels:
                if start > t:
                    edge = min(edge, start)
                    break
                blocks += k
                edge = min(edge, end)
        rate = 1.0 / (1.0 + slowdown(blocks)) if blocks else 1.0
        if t + left / rate <= edge:
            return t + left / rate
        left -= (edge - t) * rate
        t = edge
