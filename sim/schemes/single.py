"""single: one GPU prefills the whole context. The baseline every parallel scheme is measured against."""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras


def rank(sim, r: int, chunks: list[int], scheme):
    """The only rank: embed, then per layer QKV, causal attention of C queries to C keys, MLP; then
    the LM head on the last token."""
    (context,) = chunks
    cost = sim.cost
    qkv_s, mlp_s = cost.pre_attention_s(context), cost.post_attention_s(context)
    attention_s = cost.attention_s(context, context, causal_pairs(context, context))
    host = layer_extras(cost, qkv_s, attention_s, mlp_s, tokens=context)
    yield from sim.compute(r, None, ("embed", cost.embed_s(context)))
    for layer in range(sim.num_layers):
        yield from sim.compute(r, layer, ("qkv", qkv_s))
        yield from sim.compute(r, layer, ("attention", attention_s), ("mlp", mlp_s), *host)
    yield from sim.compute(r, None, ("head", cost.head_s()))
    sim.first_token()


def kv_tokens(chunks: list[int], r: int) -> tuple[int, int]:
    """The whole context's K/V kept; no transient buffer."""
    return sum(chunks), 0
