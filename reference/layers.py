"""Shared leaf maths of the models: RMSNorm, rotary position embeddings, the attention call.

References: Hugging Face ``LlamaRMSNorm`` / ``LlamaRotaryEmbedding`` / ``rotate_half`` (the NeoX
rotate-half convention that HF Llama and Falcon checkpoints are stored for); gpt-fast ``model.py``;
``reference/chunk_attention.py`` (the attention kernel choice).

Shapes: B batch, T query tokens (this call), S key tokens (cache so far, T of them new),
nh query heads, nkv KV heads, hd head dim, H hidden.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reference.chunk_attention import chunk_attention
from reference.cuda_fused import cuda_fused


@cuda_fused
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dim, in fp32 and cast back (as HF Llama does)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


@cuda_fused
def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's SiLU(gate) * up."""
    return F.silu(gate) * up


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 and cast back (as HF Llama does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """"rmsnorm" (weight) or "layernorm" (weight and bias)."""
    return RMSNorm(dim, eps) if kind == "rmsnorm" else nn.LayerNorm(dim, eps=eps)


def rotary_cos_sin(start_pos: int | torch.Tensor, num_tokens: int, *, head_dim: int, theta: float,
                   dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, hd) for absolute positions start_pos .. start_pos + T - 1, or for the
    positions in `start_pos` itself when it is a (T,) tensor (tokens that are not contiguous).

    A chunk that starts at token s of the prompt gets positions offset by s, so a chunked prefill
    rotates every token exactly as the whole-prompt prefill does.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=device) / head_dim))
    if isinstance(start_pos, torch.Tensor):
        assert start_pos.shape == (num_tokens,), (start_pos.shape, num_tokens)
        pos = start_pos.to(device).float()
    else:
        pos = torch.arange(start_pos, start_pos + num_tokens, device=device).float()
    freqs = pos[:, None] * inv_freq[None, :]          # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)           # (T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@cuda_fused
def rotate_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, T, ..., hd) and k (B, T, ..., hd), token-major views of a fused QKV output (any strides;
    Falcon's q is (B, T, nkv, nh / nkv, hd)), rotated by cos, sin (T, hd); returned contiguous in the
    same shapes, so that a reshape to (B, T, n, hd) and ``.transpose(1, 2)`` give the (B, n, T, hd)
    views the attention reads, without a copy.

    One compiled kernel on CUDA for both, reading the GEMM's output where it lies (docs/benchmarks.md,
    "Rotary from the QKV output")."""
    def rotate(x: torch.Tensor) -> torch.Tensor:
        shape = (cos.shape[0],) + (1,) * (x.dim() - 3) + (cos.shape[1],)   # (T, 1.., hd): over heads
        return x * cos.view(shape) + _rotate_half(x) * sin.view(shape)
    return rotate(q), rotate(k)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the T newest tokens' queries to S >= T keys; returns (B, nh, T, hd).

    q (B, nh, T, hd); k, v (B, nkv, S, hd) with nkv dividing nh (query head h reads KV head
    h // (nh / nkv)). The queries are the last T of the S positions, so the causal mask is aligned at
    the bottom right: query t sees keys [0, S - T + t]. Grouped KV stay compact and no dense mask is
    built; ``reference/chunk_attention.py`` picks the kernel (SDPA with ``causal_lower_right`` and
    ``enable_gqa``, or cuDNN with an exact log-sum-exp merge on GPUs).
    """
    return chunk_attention(q, k, v)
