"""ulysses: DeepSpeed-Ulysses sequence parallelism. Each rank holds a sequence shard; before
attention an all-to-all turns sequence shards into head shards (every rank gets all C tokens of
H/P query heads), attention runs on whole sequences, and a second all-to-all turns its output back.
With fewer K/V heads than ranks (GQA, MQA: Falcon-7B has one) each rank receives the one K/V head its
query heads use, as the published implementations replicate K/V heads (docs/schemes.md).
Needs H divisible by P.
"""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras
from ..memory import RankMemory, rank_parts


def kv_heads_per_rank(model, p: int) -> float:
    """K/V heads a rank holds after the all-to-all: nkv/P, or one replicated head when nkv < P."""
    return max(model.num_kv_heads / p, 1.0)


def supports(model, num_gpus: int, context: int) -> str | None:
    """Why the scheme cannot run (None: it can)."""
    if model.num_heads % num_gpus:
        return f"{model.num_heads} query heads are not divisible by {num_gpus} GPUs"
    return None


def rank(sim, r: int, plan, scheme):
    """Rank r holds tokens [s_r, e_r). Per layer: QKV of its shard; all-to-all (to each rank its
    query heads and their K/V head of this shard); causal attention of all C tokens for H/P heads;
    all-to-all back (each rank's tokens of this rank's heads); output projection and MLP. The last
    rank runs the LM head."""
    chunks = list(plan.chunks)
    p, c, cost, model = len(chunks), chunks[r], sim.cost, sim.model
    context = sum(chunks)
    b = sim.kv_bytes_per_token / (2 * model.kv_size)  # bytes per element
    qkv_width = model.q_size / p + 2 * model.head_dim * kv_heads_per_rank(model, p)
    there = [[chunks[a] * qkv_width * b for _ in range(p)] for a in range(p)]
    back = [[chunks[d] * model.q_size / p * b for d in range(p)] for _ in range(p)]
    qkv_s, mlp_s = cost.pre_attention_s(c), cost.post_attention_s(c)
    attention_s = cost.attention_s(context, context, causal_pairs(context, context)) / p
    host = layer_extras(cost, qkv_s, attention_s, mlp_s, tokens=c, past=r > 0)
    yield from sim.compute(r, None, ("embed", cost.embed_s(c)))
    for layer in range(sim.num_layers):
        yield from sim.compute(r, layer, ("qkv", qkv_s))
        yield sim.all_to_all((layer, 0), there, layer)
        yield from sim.compute(r, layer, ("attention", attention_s))
        yield sim.all_to_all((layer, 1), back, layer)
        yield from sim.compute(r, layer, ("mlp", mlp_s), *host)
    if r == p - 1:
        yield from sim.compute(r, None, ("head", cost.head_s()))
        sim.first_token()


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """After prefill it keeps the K/V of all C tokens for its heads; Q, K, V of C tokens for its heads
    are the transient buffer."""
    p, context = len(plan.chunks), sum(plan.chunks)
    fraction = kv_heads_per_rank(model, p) / model.num_kv_heads
    return rank_parts(model, dtype, kept_tokens=context, kv_head_fraction=fraction, transient_tokens=context,
                      activation_tokens=plan.chunks[r])
