"""single: one GPU prefills the whole context. The baseline every parallel scheme is measured against."""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras
from ..memory import RankMemory, rank_parts


def supports(model, num_gpus: int, context: int) -> str | None:
    """Runs any model on any GPU count (the scenario checks that every rank gets a token)."""
    return None


def rank(sim, r: int, plan, scheme):
    """The only rank: embed, then per layer QKV, causal attention of C queries to C keys, MLP; then
    the LM head on the last token."""
    chunks = list(plan.chunks)
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


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """The whole context's K/V kept (and the QKV view single prefill's plain cache keeps alive); no
    transient buffer."""
    (context,) = plan.chunks
    return rank_parts(model, dtype, kept_tokens=context, transient_tokens=0, activation_tokens=context,
                      kept_extra_per_token_layer=model.q_size + model.kv_size)
