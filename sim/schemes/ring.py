"""ring: ring attention over contiguous chunks (PyTorch's ``context_parallel``, Meta's context-parallel
inference). Per layer every K/V block travels around the ring in P-1 steps, each step's send
overlapped with the attention of the block in hand; partial results merge by log-sum-exp. Blocks of
later ranks are above the causal diagonal and skipped. docs/schemes.md.
"""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras
from ..memory import RankMemory, rank_parts


def supports(model, num_gpus: int, context: int) -> str | None:
    """Runs any model on any GPU count (the scenario checks that every rank gets a token)."""
    return None


def rank(sim, r: int, plan, scheme):
    """Rank r holds tokens [s_r, e_r). Per layer: QKV of its chunk; then P steps: forward the block it
    holds to rank r+1 (its own at step 0, else the one just received), attend its c_r queries to the
    block in hand (its own causally; rank j's unmasked where j < r, skipped where j > r), and receive
    the next block from rank r-1; then the output projection and MLP. The last rank runs the LM head."""
    chunks = list(plan.chunks)
    p, c, cost = len(chunks), chunks[r], sim.cost
    qkv_s, mlp_s = cost.pre_attention_s(c), cost.post_attention_s(c)
    own_s = cost.attention_s(c, c, causal_pairs(c, c))
    block_s = [cost.past_attention_s(c, chunks[j]) for j in range(r)]
    host = layer_extras(cost, qkv_s, own_s, *block_s, mlp_s, tokens=c, past=r > 0)
    yield from ring_rank(sim, r, chunks, tokens=c, qkv_s=qkv_s, mlp_s=mlp_s, host=host, head_rank=p - 1,
                         attention_at=lambda step, j: own_s if step == 0 else block_s[j] if j < r else None)


def ring_rank(sim, r: int, chunks: list[int], *, tokens: int, qkv_s: float, mlp_s: float, host: list,
              head_rank: int, attention_at):
    """The ring's rank body, shared with ``ring-zigzag``: embed; per layer QKV, then P steps: forward
    the block in hand to rank r+1 (its own at step 0, else the one just received), attend to it for
    ``attention_at(step, j)`` seconds (j: whose block it is; None: skipped), receive the next from rank
    r-1; then MLP and the ``host`` pieces. ``head_rank`` runs the LM head."""
    p, cost = len(chunks), sim.cost
    yield from sim.compute(r, None, ("embed", cost.embed_s(tokens)))
    for layer in range(sim.num_layers):
        yield from sim.compute(r, layer, ("qkv", qkv_s))
        for step in range(p):
            j = (r - step) % p  # whose block this rank holds in this step
            if step < p - 1:
                sim.send(r, (r + 1) % p, chunks[j] * sim.kv_bytes_per_token, (layer, step), layer)
            seconds = attention_at(step, j)
            if seconds is not None:
                yield from sim.compute(r, layer, ("attention", seconds))
            if step < p - 1:
                yield sim.message((r - 1) % p, r, (layer, step))
        yield from sim.compute(r, layer, ("mlp", mlp_s), *host)
    if r == head_rank:
        yield from sim.compute(r, None, ("head", cost.head_s()))
        sim.first_token()


def rank_memory(model, dtype: str, plan, r: int) -> RankMemory:
    """Its own chunk's K/V kept (ring-zigzag: its two pieces'); one received block in flight and one
    in hand."""
    chunks = plan.chunks
    return rank_parts(model, dtype, kept_tokens=chunks[r], transient_tokens=2 * max(chunks),
                      activation_tokens=chunks[r])
