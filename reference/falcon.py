"""Falcon: rotary, LayerNorm, GELU MLP, fused QKV; single-device, gpt-fast style.

Two layouts (both as Hugging Face ``FalconForCausalLM`` stores them):
- Falcon-7B: one LayerNorm feeds attention and MLP in parallel; multi-query (nkv = 1).
- Falcon-40B ``new_decoder_architecture``: ``ln_attn`` and ``ln_mlp`` on the same input, attention
  and MLP in parallel; grouped KV heads.
(The old sequential layout, ``parallel_attn=false``, is also built: attention, then MLP.)

The fused QKV output is grouped per KV head: for each of the nkv groups, nh/nkv query heads, then one
key head, then one value head, each hd wide. HF's three cases (multi-query ``[q.., k, v]``, MHA
``(nh, 3, hd)`` and new-architecture groups) are all this layout with nkv = 1, nh and nkv.

References: gpt-fast ``model.py``; HF ``modeling_falcon.py`` (``FalconAttention._split_heads``,
``FalconDecoderLayer``). Shapes: B batch, T tokens of this call, S cached tokens after it,
H hidden, nh / nkv query / KV heads, hd head dim, g = nh / nkv, I MLP inner size, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reference.decoder import DecoderBlock, DecoderLM, merge_heads
from reference.layers import make_norm, rotate_qk
from sim.model import ModelSpec


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.nh, self.nkv, self.hd = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.wqkv = nn.Linear(spec.hidden_size, spec.q_size + 2 * spec.kv_size, bias=spec.bias)
        self.wo = nn.Linear(spec.q_size, spec.hidden_size, bias=spec.bias)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, T, H) -> rotated q (B, nh, T, hd), rotated k and v (B, nkv, T, hd)."""
        b, t, _ = x.shape
        g = self.nh // self.nkv
        qkv = self.wqkv(x).view(b, t, self.nkv, g + 2, self.hd)
        q, k = rotate_qk(qkv[:, :, :, :g], qkv[:, :, :, g], cos, sin)           # (B, T, nkv, g, hd), (B, T, nkv, hd)
        q = q.reshape(b, t, self.nh, self.hd)                                    # a view: q is contiguous
        v = qkv[:, :, :, g + 1]                                                 # (B, T, nkv, hd)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)          # (B, n, T, hd) views


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.w1 = nn.Linear(spec.hidden_size, spec.intermediate_size, bias=spec.bias)  # h -> 4h
        self.w2 = nn.Linear(spec.intermediate_size, spec.hidden_size, bias=spec.bias)  # 4h -> h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


class Block(DecoderBlock):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        self.layer_idx, self.parallel = layer_idx, spec.parallel_attn
        self.attn_norm = make_norm(spec.norm_kind, spec.hidden_size, spec.norm_eps)
        # With one norm per layer the MLP reads the attention's normed input.
        self.mlp_norm = (make_norm(spec.norm_kind, spec.hidden_size, spec.norm_eps)
                         if spec.num_ln_per_layer == 2 else None)
        self.attention = Attention(spec)
        self.mlp = MLP(spec)

    def pre(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a = self.attn_norm(x)
        q, k, v = self.attention.qkv(a, cos, sin)
        if not self.parallel:
            return q, k, v
        return q, k, v, (a if self.mlp_norm is None else self.mlp_norm(x))  # the MLP's normed input

    def post(self, x: torch.Tensor, y: torch.Tensor, *mlp_in: torch.Tensor) -> torch.Tensor:
        attn = self.attention.wo(merge_heads(y))
        if not self.parallel:
            h = x + attn
            return h + self.mlp(self.mlp_norm(h))
        return x + (self.mlp(mlp_in[0]) + attn)


class Falcon(DecoderLM):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        assert spec.family == "falcon", spec.family
        self.spec = spec
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(Block(spec, i) for i in range(spec.num_layers))
        self.norm = make_norm(spec.norm_kind, spec.hidden_size, spec.norm_eps)
        self.output = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def fuse_(self) -> "Falcon":
        """Nothing to do: Falcon's checkpoint already stores Q, K and V as one fused weight."""
        return self
