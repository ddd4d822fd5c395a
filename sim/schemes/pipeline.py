"""pipeline: chunked pipeline parallelism for long prefill (SGLang's and vLLM's in 2026). The layers
are split into P stages, one a rank; the prompt is cut into pieces that flow through the stages, each
stage keeping its layers' KV-cache of earlier pieces, so stage s works on piece k while stage s+1
works on piece k-1. Pieces are even, or of equal time (``pipeline-et``: each piece's layer takes the
same time as its past grows, from the cost model, as SGLang sizes them). docs/schemes.md.
"""
from __future__ import annotations

from ..cost import causal_pairs, chain_kv_s, layer_extras
from ..memory import RankMemory, rank_parts
from ..partition import even


def stage_layers(num_layers: int, p: int, r: int) -> range:
    """The layers of stage r: the even split of the layers, earlier stages one more."""
    split = even(num_layers, p)
    start = sum(split[:r])
    return range(start, start + split[r])


def supports(model, num_gpus: int, context: int) -> str | None:
    """Why the scheme cannot run (None: it can): every stage needs a layer."""
    return f"{model.num_layers} layers cannot fill {num_gpus} stages" if model.num_layers < num_gpus else None


def rank(sim, r: int, plan, scheme):
    """Stage r, for each piece k in order: wait for stage r-1's activations of the piece (c_k x H),
    run its layers (QKV, appending to the cache of the S_{k-1} earlier tokens (in place; a copy of the
    S_k tokens under ``kv_chain: copy``, the runtime before 2026-12-06), attention of c_k
    queries to S_k keys, MLP), send the activations on. Stage 0 embeds; the last stage runs the LM
    head after the last piece."""
    p, cost, model = len(plan.chunks), sim.cost, sim.model
    pieces = list(plan.pieces)
    b = sim.kv_bytes_per_token / (2 * model.kv_size)
    layers = stage_layers(sim.num_layers, p, r)
    keys = 0
    for k, c in enumerate(pieces):
        keys += c
        if r == 0:
            yield from sim.compute(r, None, ("embed", cost.embed_s(c)))
        else:
            yield sim.message(r - 1, r, k)
        qkv_s, mlp_s = cost.pre_attention_s(c), cost.post_attention_s(c)
        attention_s = cost.attention_s(c, keys, causal_pairs(c, keys))
        concat_s = chain_kv_s(cost, sim.kv_chain, k, keys)  # a resident cache copies no earlier piece
        concat = [("kv-cat", concat_s)] if concat_s else []
        host = layer_extras(cost, qkv_s, attention_s, mlp_s, *(s for _, s in concat), tokens=c, past=k > 0)
        for layer in layers:
            yield from sim.compute(r, layer, ("qkv", qkv_s), *concat, ("attention", attention_s), ("mlp", mlp_s),
                                   *host)
        if r < p - 1:
            sim.send(r, r + 1, c * model.hidden_size * b, k, layers[-1])
    if r == p - 1:
        yield from sim.compute(r, None, ("head", cost.head_s()))
        sim.first_token()


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """Its stage's share of the weights (the embedding and head spread like the layers) and its
    layers' K/V of all C tokens; one piece's activations."""
    p, context = len(plan.chunks), sum(plan.pieces)
    fraction = len(stage_layers(model.num_layers, p, r)) / model.num_layers
    return rank_parts(model, dtype, kept_tokens=context, layer_fraction=fraction, transient_tokens=max(plan.pieces),
                      activation_tokens=max(plan.pieces), weight_fraction=fraction)
