"""tp: Megatron-style tensor parallelism. Every rank computes all C tokens with 1/P of the attention
heads and MLP columns (1/P of the weights), and sums the partial outputs with one ring all-reduce
after attention and one after the MLP per layer. Needs H divisible by P; with fewer K/V heads than
ranks each rank keeps a replicated K/V head. docs/schemes.md.

The cost model prices a layer's parts for a number of tokens on the whole layer; a rank's share is
taken as 1/P of each part (norms and rotary, which tensor parallelism does not split, are a few
per cent of a part).
"""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras
from ..memory import RankMemory, rank_parts
from . import ulysses
from .ulysses import kv_heads_per_rank


def supports(model, num_gpus: int, context: int) -> str | None:
    """The heads split as Ulysses splits them."""
    return ulysses.supports(model, num_gpus, context)


def rank(sim, r: int, plan, scheme):
    """Every rank: embed all C tokens; per layer 1/P of QKV and of causal attention, the output
    projection's share, an all-reduce of the C x H output, 1/P of the MLP, an all-reduce; then the LM
    head on rank 0 (after the all-reduce every rank has the full hidden state)."""
    p, context, cost, model = len(plan.chunks), plan.chunks[r], sim.cost, sim.model
    b = sim.kv_bytes_per_token / (2 * model.kv_size)
    activation_bytes = context * model.hidden_size * b
    qkv_s = cost.pre_attention_s(context) / p
    attention_s = cost.attention_s(context, context, causal_pairs(context, context)) / p
    post_s = cost.post_attention_s(context) / p
    host = layer_extras(cost, qkv_s, attention_s, post_s, tokens=context)
    yield from sim.compute(r, None, ("embed", cost.embed_s(context)))
    for layer in range(sim.num_layers):
        yield from sim.compute(r, layer, ("qkv", qkv_s), ("attention", attention_s))
        yield sim.all_reduce((layer, 0), activation_bytes, layer)
        yield from sim.compute(r, layer, ("mlp", post_s), *host)
        yield sim.all_reduce((layer, 1), activation_bytes, layer)
    if r == 0:
        yield from sim.compute(r, None, ("head", cost.head_s()))
        sim.first_token()


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """1/P of the weights; K/V of all C tokens for its heads; activations of C tokens, 1/P as wide."""
    p, context = len(plan.chunks), plan.chunks[r]
    fraction = kv_heads_per_rank(model, p) / model.num_kv_heads
    return rank_parts(model, dtype, kept_tokens=context, kv_head_fraction=fraction, transient_tokens=0,
                      activation_tokens=context, weight_fraction=1 / p, activation_fraction=1 / p)
