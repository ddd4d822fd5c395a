"""Causal attention of a chunk of queries against its past plus itself, at flash speed on GPUs.

Every scheme reduces to one call: ``c`` query tokens (the chunk) attend to ``k >= c`` keys, where the
last ``c`` keys are the chunk's own and the first ``k - c`` are its past (the KV-Runahead chain's
cumulative cache, or TSP's gathered keys up to the chunk's end). The causal mask is aligned at the
bottom right: query ``i`` of the chunk sees keys ``0 .. k - c + i``.

Shapes: q (B, nh, c, hd); k, v (B, nkv, k, hd) with nh a multiple of nkv (MHA, GQA, MQA). K and V are
never expanded to nh heads and no dense mask is built.

Paths, by device and dtype (measured TFLOP/s and host times: docs/benchmarks.md):
- CUDA, fp16/bf16, cuDNN available: cuDNN's fused attention (the fastest measured on Hopper).
  cuDNN through PyTorch only knows top-left causal alignment, so a chunk with a past is split in two:
  queries against the past (no mask) and queries against the chunk (square causal); the two partial
  results are merged exactly with their log-sum-exps (the same merge flash attention does between
  key blocks):  l = logaddexp(l1, l2);  o = o1 * exp(l1 - l) + o2 * exp(l2 - l).
- CUDA, a chunk of at most ``FLASH_MAX_CHUNK`` (512) queries with a past: one flash call (below).
  The split is three calls for the host to issue against flash's one; a small chunk's layer runs at
  the host's pace, so there flash's slower kernel costs less than the host time it saves
  (docs/benchmarks.md, "Attention with a past").
- Otherwise: ``scaled_dot_product_attention`` with a bottom-right ``CausalBias`` and
  ``enable_gqa=True``, which PyTorch serves with flash attention on GPUs and exactly on CPUs.

References: PyTorch SDPA and ``torch.nn.attention.bias.causal_lower_right``; FlashAttention-2
(Dao, 2023) for the log-sum-exp merge.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from reference.cuda_fused import cuda_fused

_CUDNN_OK: dict[tuple, bool] = {}
FLASH_MAX_CHUNK = 512


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of the last ``c`` positions (queries) to all ``k`` keys, causal at the bottom right.

    q: (B, nh, c, hd); k, v: (B, nkv, k, hd), k >= c. Returns (B, nh, c, hd) in q's dtype.
    """
    c, n_keys = q.shape[-2], k.shape[-2]
    if n_keys < c:
        raise ValueError(f"chunk attention needs keys >= queries, got {n_keys} keys < {c} queries")
    if _use_cudnn(q) and (c == n_keys or c > FLASH_MAX_CHUNK):
        try:
            return _cudnn_chunk_attention(q, k, v)
        except RuntimeError:  # cuDNN refused this shape (version, head dim): fall back for good
            _CUDNN_OK[_cudnn_key(q)] = False
    gqa = q.shape[1] != k.shape[1]
    if c == n_keys:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(c, n_keys),
                                          enable_gqa=gqa)


def _cudnn_key(q: torch.Tensor) -> tuple:
    return (q.device.index, q.dtype, q.shape[-1])


def _use_cudnn(q: torch.Tensor) -> bool:
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and torch.backends.cudnn.is_available()
            and _CUDNN_OK.get(_cudnn_key(q), True))


def _cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool):
    """cuDNN fused attention with its log-sum-exp: (out (B,nh,c,hd), lse (B,nh,c) fp32)."""
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, causal, False)[:2]
    return out, lse.reshape(out.shape[:-1])


def _cudnn_chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    c, n_keys = q.shape[-2], k.shape[-2]
    if c == n_keys:
        return _cudnn(q, k, v, causal=True)[0]
    past = n_keys - c
    o1, l1 = _cudnn(q, k[..., :past, :], v[..., :past, :], causal=False)
    o2, l2 = _cudnn(q, k[..., past:, :], v[..., past:, :], causal=True)
    return merge_partials(o1, l1, o2, l2)


@cuda_fused
def merge_partials(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor) -> torch.Tensor:
    """Exact softmax merge of two partial attentions over disjoint key sets, in o1's dtype (one
    compiled kernel on CUDA instead of eight eager ones)."""
    lse = torch.logaddexp(l1, l2)
    w1 = torch.exp(l1 - lse).unsqueeze(-1)
    w2 = torch.exp(l2 - lse).unsqueeze(-1)
    return (o1.float() * w1 + o2.float() * w2).to(o1.dtype)
