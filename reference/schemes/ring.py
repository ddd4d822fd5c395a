"""ring: ring attention over contiguous even chunks (PyTorch's ``context_parallel``, Meta's
context-parallel inference). Rank r holds tokens [s_r, e_r) and attends with a ``RingCache``: per
layer every rank's K/V block travels around the ring in P-1 steps (send the block in hand to r+1
without waiting, receive the next from r-1); the rank's queries attend to its own block causally and
to each earlier rank's block unmasked, skip later ranks' blocks (above the causal diagonal), and the
partial results are merged exactly by log-sum-exp. The last rank emits the first token; every rank
keeps the K/V of its own tokens only.

Messages carry K and V stacked: (2, B, nkv, c_j, hd). The same cache runs ``ring_zigzag.py``, whose
ranks hold two pieces each. Reference: Liu et al., "Ring Attention with Blockwise Transformers"
(2023); sim/schemes/ring.py; docs/reference.md, "How the schemes hook in".
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import KVCache
from reference.schemes import check_supported
from reference.schemes.base import Prefill, chunk_bounds
from reference.transport import Transport

Pieces = Sequence[tuple[int, int]]  # a rank's token ranges [a, b), in the order its tokens are laid out


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q (B, nh, T, hd) to one key block k, v (B, nkv, S, hd), with its log-sum-exp:
    (out (B, nh, T, hd) fp32, lse (B, nh, T) fp32). `causal`: the block is the queries' own tokens
    (T == S, square causal mask); else every key is visible. A flash kernel that returns the
    log-sum-exp where torch has one for the device and dtype (CPU: any float; CUDA: fp16/bf16), as
    ring-flash-attention does; else the scores in fp32 (``_eager_block``)."""
    kernel = _flash_with_lse(q)
    if kernel is None:
        return _eager_block(q, k, v, causal=causal)
    if causal:
        assert q.shape[-2] == k.shape[-2], (q.shape, k.shape)
    g = q.shape[1] // k.shape[1]
    if g > 1:  # the kernels want as many K/V heads as query heads: query head h reads KV head h // g
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    out, lse = kernel(q.contiguous(), k.contiguous(), v.contiguous(), causal)[:2]
    return out.float(), lse.float()


def _flash_with_lse(q: torch.Tensor):
    """aten's flash attention that returns the log-sum-exp, for q's device and dtype, or None."""
    if q.device.type == "cpu":
        return lambda q, k, v, causal: torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal)
    if q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        return lambda q, k, v, causal: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False)
    return None


def _eager_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_attention`` with the scores materialised, in fp32 maths."""
    b, nh, t, hd = q.shape
    nkv, s = k.shape[1], k.shape[-2]
    qg = q.float().reshape(b, nkv, nh // nkv, t, hd)           # query head h reads KV head h // g
    scores = qg @ k.float().unsqueeze(2).transpose(-1, -2) * hd ** -0.5  # (B, nkv, g, T, S)
    if causal:
        assert t == s, (t, s)
        scores = scores.masked_fill(torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    lse = scores.logsumexp(-1)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ v.float().unsqueeze(2)
    return out.reshape(b, nh, t, hd), lse.reshape(b, nh, t)


def merge(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Exact softmax merge of partial attentions over disjoint key sets: (out, lse) pairs ->
    sum_i out_i * exp(lse_i - logsumexp_i lse_i), fp32 (B, nh, T, hd)."""
    lse = torch.logsumexp(torch.stack([l for _, l in parts]), dim=0)
    return sum(o * torch.exp(l - lse).unsqueeze(-1) for o, l in parts)


class RingCache(KVCache):
    """Ring attention: keeps this rank's own K/V; ``attend`` circulates every rank's block.

    `pieces[j]` are rank j's token ranges. A query piece attends to a key piece that ends before it
    unmasked, to itself causally, and skips one that starts after it."""

    def keeps_inputs(self, layer_idx: int) -> bool:
        return False  # k and v are stacked into a new tensor first

    def __init__(self, num_layers: int, transport: Transport, pieces: Sequence[Pieces]):
        super().__init__(num_layers)
        assert len(pieces) == transport.world_size, (pieces, transport.world_size)
        self.transport, self.pieces = transport, [list(p) for p in pieces]

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = self.transport
        r, p = t.rank, t.world_size
        block = torch.stack([k, v])                                     # (2, B, nkv, c_r, hd)
        self._append(layer_idx, block[0], block[1])
        queries, at = [], 0
        for a, b in self.pieces[r]:
            queries.append((a, b, q[:, :, at:at + b - a]))
            at += b - a
        partials: list[list] = [[] for _ in queries]
        sends = []
        for step in range(p):
            j = (r - step) % p                                          # whose block is in hand
            if step < p - 1:
                sends.append(t.isend(block, (r + 1) % p))               # never modified afterwards
            at = 0
            for ka, kb in self.pieces[j]:
                kv = block[..., at:at + kb - ka, :]
                at += kb - ka
                for (qa, qb, qi), acc in zip(queries, partials):
                    if ka >= qb:
                        continue                                        # a later piece: fully masked
                    assert kb <= qa or (ka, kb) == (qa, qb), (ka, kb, qa, qb)
                    acc.append(block_attention(qi, kv[0], kv[1], causal=ka == qa))
            if step < p - 1:
                src = (r - step - 1) % p
                block = block.new_empty(*block.shape[:-2], sum(b - a for a, b in self.pieces[src]), block.shape[-1])
                t.recv(block, (r - 1) % p)
        for work in sends:
            work.wait()
        return torch.cat([merge(acc) for acc in partials], dim=-2).to(q.dtype)


def run_pieces(model: torch.nn.Module, input_ids: torch.Tensor, pieces: Sequence[Pieces],
               transport: Transport) -> Prefill:
    """Prefill rank r's pieces (its tokens at their true positions) with a ``RingCache``."""
    mine = pieces[transport.rank]
    ids = torch.cat([input_ids[:, a:b] for a, b in mine], dim=1)
    positions = (mine[0][0] if len(mine) == 1 else
                 torch.cat([torch.arange(a, b, device=input_ids.device) for a, b in mine]))
    cache = RingCache(model.spec.num_layers, transport, pieces)
    logits = model(ids, positions, cache)
    return Prefill(logits, cache.finish())


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C), even chunks -> this rank's chunk logits (B, V) and cache (its c_r tokens)."""
    check_supported("ring", model.spec, context=input_ids.shape[1], world_size=transport.world_size)
    return run_pieces(model, input_ids, [[chunk_bounds(chunks, j)] for j in range(transport.world_size)],
                      transport)
