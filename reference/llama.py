"""Llama (Llama-2, Llama-3): MHA or GQA, RMSNorm, SwiGLU, rotary; single-device, gpt-fast style.

References: gpt-fast ``model.py``; Hugging Face ``LlamaForCausalLM`` (the checkpoint layout, see
``reference/checkpoint.py``). Parallel prefill happens in the cache passed to ``forward``.

Shapes: B batch, T tokens of this call, S tokens in the cache after it, H hidden, nh query heads,
nkv KV heads, hd head dim, I MLP inner size, V vocabulary.
"""
from __future__ import annotations

import torch
from torch import nn

from reference.decoder import DecoderBlock, DecoderLM, merge_heads
from reference.cuda_graphs import forget_graphs
from reference.layers import RMSNorm, rotate_qk, silu_mul
from sim.model import ModelSpec


def _fused_linear(*parts: nn.Linear) -> nn.Linear:
    """One bias-free Linear whose output is the parts' outputs side by side (weights concatenated).
    Built on the meta device, then given the concatenated weight: no initialisation of a weight that
    is replaced at once, so no draw from the device's random generator. On CUDA such a draw fails while
    another thread captures a CUDA graph ("Offset increment outside graph capture"), which thread
    ranks (``transport.run_in_threads``) do."""
    w = torch.cat([p.weight for p in parts], dim=0)
    fused = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta", dtype=w.dtype)
    fused.weight = nn.Parameter(w, requires_grad=False)
    return fused


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.nh, self.nkv, self.hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.wq = nn.Linear(spec.hidden_size, spec.q_size, bias=False)
        self.wk = nn.Linear(spec.hidden_size, spec.kv_size, bias=False)
        self.wv = nn.Linear(spec.hidden_size, spec.kv_size, bias=False)
        self.wo = nn.Linear(spec.q_size, spec.hidden_size, bias=False)
        self.wqkv: nn.Linear | None = None  # set by fuse_(): one GEMM instead of three

    def fuse_(self) -> None:
        self.wqkv = _fused_linear(self.wq, self.wk, self.wv)
        del self.wq, self.wk, self.wv

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, T, H) -> rotated q (B, nh, T, hd), rotated k and v (B, nkv, T, hd)."""
        b, t, _ = x.shape
        if self.wqkv is not None:
            q, k, v = self.wqkv(x).split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], -1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q, k = rotate_qk(q.view(b, t, self.nh, self.hd), k.view(b, t, self.nkv, self.hd), cos, sin)
        v = v.view(b, t, self.nkv, self.hd)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, n, T, hd) views


class FeedForward(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.w1 = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)  # gate
        self.w3 = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=False)  # up
        self.w2 = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=False)  # down
        self.w13: nn.Linear | None = None  # set by fuse_(): gate and up in one GEMM

    def fuse_(self) -> None:
        self.w13 = _fused_linear(self.w1, self.w3)
        del self.w1, self.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            return self.w2(silu_mul(*self.w13(x).chunk(2, dim=-1)))
        return self.w2(silu_mul(self.w1(x), self.w3(x)))


class Block(DecoderBlock):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.attention_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.attention = Attention(spec)
        self.ffn_norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.feed_forward = FeedForward(spec)

    def pre(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.attention.qkv(self.attention_norm(x), cos, sin)

    def post(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = x + self.attention.wo(merge_heads(y))
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(DecoderLM):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        assert spec.family == "llama", spec.family
        self.spec = spec
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, i) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps)
        self.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def fuse_(self) -> "Llama":
        """Concatenate Q/K/V and gate/up weights into single GEMMs (in place, for speed; the
        checkpoint layout is unchanged until this is called)."""
        for layer in self.layers:
            layer.attention.fuse_()
            layer.feed_forward.fuse_()
        forget_graphs(self)
        return self
