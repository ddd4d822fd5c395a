"""kvr: KV-Runahead (Cho et al., ICML 2024). Ranks form a chain over contiguous chunks; each passes the
cumulative KV-cache on to the next with an asynchronous send. See docs/design.md, "Scheme semantics".
"""
from __future__ import annotations

from ..cost import causal_pairs, chain_kv_s, layer_extras
from ..memory import RankMemory, rank_parts


def supports(model, num_gpus: int, context: int) -> str | None:
    """Runs any model on any GPU count (the scenario checks that every rank gets a token)."""
    return None


def rank(sim, r: int, plan, scheme):
    """Rank r holds tokens [S_{r-1}, S_r). Per layer: QKV of its chunk; wait for rank r-1's K, V of
    tokens [0, S_{r-1}); send K, V of [0, S_r) to rank r+1 without waiting; attend its c_r queries to
    S_r keys (causal, bottom right), its own K, V written after the received ones (no copy of the past:
    the runtime's ``ResidentKVCache``; under ``kv_chain: copy``, ``kv-cat``, a copy of all S_r tokens
    on ranks after the first, the runtime's torch.cat before 2026-12-06); MLP. The last rank then runs
    the LM head: the first token."""
    chunks = list(plan.chunks)
    last = len(chunks) - 1
    c, keys = chunks[r], sum(chunks[: r + 1])
    cost = sim.cost
    qkv_s, mlp_s = cost.pre_attention_s(c), cost.post_attention_s(c)
    attention_s = cost.attention_s(c, keys, causal_pairs(c, keys))
    concat_s = chain_kv_s(cost, sim.kv_chain, r, keys)
    concat = [("kv-cat", concat_s)] if concat_s else []
    host = layer_extras(cost, qkv_s, attention_s, mlp_s, *(s for _, s in concat), tokens=c, past=r > 0)
    yield from sim.compute(r, None, ("embed", cost.embed_s(c)))
    for layer in range(sim.num_layers):
        yield from sim.compute(r, layer, ("qkv", qkv_s))
        if r > 0:
            yield sim.message(r - 1, r, layer)
        if r < last:
            sim.send(r, r + 1, keys * sim.kv_bytes_per_token, layer)
        yield from sim.compute(r, layer, *concat, ("attention", attention_s), ("mlp", mlp_s), *host)
    if r == last:
        yield from sim.compute(r, None, ("head", cost.head_s()))
        sim.first_token()


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """K/V of [0, S_r) kept, received in place (under ``kv_chain: copy`` the received [0, S_{r-1}) was
    a one-layer buffer besides; this memory check keeps that bound, the larger)."""
    chunks = plan.chunks
    end = sum(chunks[: r + 1])
    return rank_parts(model, dtype, kept_tokens=end, transient_tokens=end - chunks[r], activation_tokens=chunks[r])
