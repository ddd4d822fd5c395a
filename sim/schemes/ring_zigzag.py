"""ring-zigzag: ring attention with the causal work balanced (ring-flash-attention's zigzag). The
context is cut into 2P pieces and rank r holds pieces r and 2P-1-r, so every rank has one early and
one late piece and the same attention work in every ring step. docs/schemes.md.
"""
from __future__ import annotations

from ..cost import causal_pairs, layer_extras
from ..partition import even
from . import ring


def pieces_of(plan) -> list[int]:
    """The 2P pieces: the even split of the context (``plan.chunks[r]`` = piece r + piece 2P-1-r)."""
    return even(sum(plan.chunks), 2 * len(plan.chunks))


def supports(model, num_gpus: int, context: int) -> str | None:
    """Why the scheme cannot run (None: it can): every one of the 2P pieces needs a token."""
    return f"{context} tokens cannot fill {2 * num_gpus} pieces" if context < 2 * num_gpus else None


def rank(sim, r: int, plan, scheme):
    """Rank r holds pieces a = r and b = 2P-1-r. Per layer: QKV of both; step 0 attends a to itself
    (causal), b to a and itself; in step s it holds rank j = r-s's block (pieces j and 2P-1-j): for
    j < r both its pieces attend to piece j; for j > r piece b attends to both of j's pieces; all
    unmasked. Sends as in ``ring``. Rank 0 holds the last piece and runs the LM head."""
    chunks = list(plan.chunks)
    p, cost = len(chunks), sim.cost
    pieces = pieces_of(plan)
    a, b = pieces[r], pieces[2 * p - 1 - r]
    c = a + b
    qkv_s, mlp_s = cost.pre_attention_s(c), cost.post_attention_s(c)
    own_s = cost.attention_s(a, a, causal_pairs(a, a)) + cost.attention_s(b, a + b, causal_pairs(b, a + b))
    block_s = {j: cost.past_attention_s(c, pieces[j]) if j < r else cost.past_attention_s(b, chunks[j])
               for j in range(p) if j != r}
    host = layer_extras(cost, qkv_s, own_s, *block_s.values(), mlp_s, tokens=c, past=True)
    yield from ring.ring_rank(sim, r, chunks, tokens=c, qkv_s=qkv_s, mlp_s=mlp_s, host=host, head_rank=0,
                              attention_at=lambda step, j: own_s if step == 0 else block_s[j])


rank_memory = ring.rank_memory  # the same holdings: its tokens' K/V and two blocks
