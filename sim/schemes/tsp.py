"""tsp: tensor/sequence-parallel prefill. Even chunks, one ring all-gather of K and V per layer.
See docs/design.md, "Scheme semantics".
"""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras
from ..memory import RankMemory, rank_parts


def supports(model, num_gpus: int, context: int) -> str | None:
    """Runs any model on any GPU count (the scenario checks that every rank gets a token)."""
    return None


def rank(sim, r: int, plan, scheme):
    """Rank r holds tokens [s_r, e_r). Per layer: QKV of its chunk; all-gather K, V (every chunk padded
    to the largest, a copy on the ranks with a shorter chunk); concatenate the gathered keys [0, e_r) (a
    copy, as the runtime's torch.cat); attend its c_r queries to them causally (``causal``, as the
    runtime does) or to all C keys as a dense block (``masked``); MLP. The last rank then runs the LM
    head."""
    chunks = list(plan.chunks)
    attention = scheme.attention
    last = len(chunks) - 1
    c, end, context = chunks[r], sum(chunks[: r + 1]), sum(chunks)
    keys, pairs = (end, causal_pairs(c, end)) if attention == "causal" else (context, c * context)
    cost = sim.cost
    qkv_s, mlp_s = cost.pre_attention_s(c), cost.post_attention_s(c)
    attention_s = cost.attention_s(c, keys, pairs)
    chunk_bytes = max(chunks) * sim.kv_bytes_per_token
    pad = [("kv-pad", cost.kv_copy_s(max(chunks)))] if c < max(chunks) else []
    concat_s = cost.kv_copy_s(keys)
    host = layer_extras(cost, qkv_s, attention_s, mlp_s, concat_s, *(s for _, s in pad), tokens=c, past=keys > c)
    yield from sim.compute(r, None, ("embed", cost.embed_s(c)))
    for layer in range(sim.num_layers):
        yield from sim.compute(r, layer, ("qkv", qkv_s), *pad)
        yield sim.all_gather(layer, chunk_bytes)
        yield from sim.compute(r, layer, ("kv-cat", concat_s), ("attention", attention_s), ("mlp", mlp_s), *host)
    if r == last:
        yield from sim.compute(r, None, ("head", cost.head_s()))
        sim.first_token()


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """K/V of [0, e_r) kept; the gathered block (P x the largest chunk) is the one-layer buffer."""
    chunks = plan.chunks
    return rank_parts(model, dtype, kept_tokens=sum(chunks[: r + 1]), transient_tokens=len(chunks) * max(chunks),
                      activation_tokens=chunks[r])
