"""The analytic cost model: how long each operation of a prefill takes on one GPU. Pure functions.

Every op takes ``max(FLOPs / (peak * eff_op), bytes / (HBM * eff_mem)) + launch overhead`` (a roofline
with a fixed launch cost). Formulas are written out in docs/cost_model.md. References: the roofline
model (Williams et al., 2009); FlashAttention's FLOP count (4 * pairs * heads * head_dim); Vidur's
split of "what happens" (the schemes) from "how long it takes" (this module).

``AnalyticCost`` answers the ``CostModel`` questions (``sim/cost/__init__.py``) from shapes and a
``GpuSpec``; ``sim/cost/profiled.py`` answers them from a measured profile.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..hardware import GpuSpec
from ..model import ModelSpec, dtype_bytes
from . import CostModel


def roofline_s(gpu: GpuSpec, flops: float, nbytes: float, efficiency: float, launches: int = 1) -> float:
    """Seconds of one op: max(flops / (peak * efficiency), bytes / (HBM * memory efficiency)) + launches."""
    return (max(flops / (gpu.peak_flops_per_s * efficiency),
                nbytes / (gpu.hbm_bytes_per_s * gpu.memory_efficiency))
            + launches * gpu.launch_overhead_s)


def gemm_s(gpu: GpuSpec, m: int, k: int, n: int, elem_bytes: int) -> float:
    """(m x k) @ (k x n): 2mkn FLOPs; reads both operands, writes the result."""
    return roofline_s(gpu, 2 * m * k * n, (m * k + k * n + m * n) * elem_bytes, gpu.matmul_efficiency)


def memory_op_s(gpu: GpuSpec, nbytes: float) -> float:
    """An elementwise or normalisation op: bytes read plus written, no FLOP limit."""
    return roofline_s(gpu, 0, nbytes, 1.0)


def attention_s(gpu: GpuSpec, spec: ModelSpec, queries: int, keys: int, pairs: float, elem_bytes: int) -> float:
    """Fused attention of ``queries`` queries against ``keys`` keys computing ``pairs`` query-key pairs per
    head: 4 * pairs * nh * hd FLOPs (QK^T and PV); reads Q, K, V and writes O once."""
    flops = 4 * pairs * spec.num_heads * spec.head_dim
    nbytes = (2 * queries * spec.q_size + 2 * keys * spec.kv_size) * elem_bytes
    return roofline_s(gpu, flops, nbytes, gpu.attention_efficiency)


# Bytes an eager attention moves per element of its score matrix (queries x keys x heads), by the
# passes transformers' ``eager_attention_forward`` makes, each a separate kernel over the whole matrix
# (b: the dtype's bytes): Q K^T writes it (b); ``* scaling`` reads and writes it (2b); ``+ mask`` reads
# it and the broadcast mask and writes it (3b); ``softmax(dtype=float32)`` reads b and writes fp32
# (b + 4); ``.to(dtype)`` reads fp32 and writes b (4 + b); P V reads it (b). Checked against
# transformers on an H200: docs/cost_model.md, "Attention implementations".
def eager_score_bytes(elem_bytes: int) -> int:
    return 9 * elem_bytes + 8


def eager_attention_s(gpu: GpuSpec, spec: ModelSpec, queries: int, keys: int, elem_bytes: int) -> float:
    """Eager attention of ``queries`` queries against ``keys`` keys: every query-key pair computed, the
    masked ones too (no causal skipping), the scores materialised (``eager_score_bytes`` a score);
    repeat_kv copies K and V to every query head (GQA/MQA); two batched GEMMs, five elementwise passes."""
    scores = float(queries) * keys * spec.num_heads
    groups_copy = 0.0
    if spec.num_heads != spec.num_kv_heads:  # repeat_kv: read nkv heads, write nh heads, for K and V
        groups_copy = memory_op_s(gpu, 2 * keys * (spec.kv_size + spec.q_size) * elem_bytes)
    gemms = 2 * roofline_s(gpu, 2 * scores * spec.head_dim,
                           (queries * spec.q_size + keys * spec.q_size) * elem_bytes, gpu.matmul_efficiency)
    passes = memory_op_s(gpu, scores * eager_score_bytes(elem_bytes)) + 4 * gpu.launch_overhead_s
    out = memory_op_s(gpu, 2 * queries * spec.q_size * elem_bytes)  # the output's transpose to contiguous
    return groups_copy + gemms + passes + out


@dataclass(frozen=True)
class AnalyticCost(CostModel):
    """The roofline cost model of one decoder layer and the head, from shapes and a GPU."""

    spec: ModelSpec
    gpu: GpuSpec
    dtype: str = "fp16"

    @property
    def _b(self) -> int:
        return dtype_bytes(self.dtype)

    def _norm_s(self, tokens: int) -> float:
        # Reads and writes the (tokens x H) activations.
        return memory_op_s(self.gpu, 2 * tokens * self.spec.hidden_size * self._b)

    def _residual_s(self, tokens: int) -> float:
        # out = x + y: two reads, one write.
        return memory_op_s(self.gpu, 3 * tokens * self.spec.hidden_size * self._b)

    def embed_s(self, tokens: int) -> float:
        """Embedding lookup of a chunk: read and write tokens x H."""
        return memory_op_s(self.gpu, 2 * tokens * self.spec.hidden_size * self._b)

    def pre_attention_s(self, tokens: int) -> float:
        """Norm(s) on the layer input, fused QKV projection, rotary on Q and K, and stacking the chunk's
        K and V into one tensor for the KV-cache."""
        s, b = self.spec, self._b
        norms = s.num_ln_per_layer if s.parallel_attn else 1  # parallel blocks norm the input only
        rotary = memory_op_s(self.gpu, 2 * tokens * (s.q_size + s.kv_size) * b)
        return (norms * self._norm_s(tokens)
                + gemm_s(self.gpu, tokens, s.hidden_size, s.q_size + 2 * s.kv_size, b) + rotary
                + self.kv_copy_s(tokens))

    def kv_copy_s(self, tokens: int) -> float:
        """Copy one layer's K and V of ``tokens`` tokens (read and write): the runtime's torch.stack and
        torch.cat on the KV-cache."""
        return memory_op_s(self.gpu, 2 * tokens * self.kv_bytes_per_token())

    def attention_s(self, queries: int, keys: int, pairs: float) -> float:
        """Flash-style (the GPU's ``attention_impl``): the ``pairs`` computed, masked blocks skipped;
        eager: all queries x keys pairs, the scores materialised."""
        if self.gpu.attention_impl == "eager":
            return eager_attention_s(self.gpu, self.spec, queries, keys, self._b)
        return attention_s(self.gpu, self.spec, queries, keys, pairs, self._b)

    def past_attention_s(self, queries: int, keys: int) -> float:
        """An unmasked block of ``queries`` x ``keys`` pairs, its own kernel call."""
        return self.attention_s(queries, keys, float(queries) * keys)

    def post_attention_s(self, tokens: int) -> float:
        """Output projection, the MLP (and the second norm of a sequential block), two residual adds."""
        s, b, g = self.spec, self._b, self.gpu
        t, h, i = tokens, s.hidden_size, s.intermediate_size
        if s.mlp_kind == "swiglu":  # gate and up (one GEMM of width 2I), silu(gate) * up, down
            mlp = gemm_s(g, t, h, 2 * i, b) + memory_op_s(g, 3 * t * i * b) + gemm_s(g, t, i, h, b)
        else:  # up, gelu, down
            mlp = gemm_s(g, t, h, i, b) + memory_op_s(g, 2 * t * i * b) + gemm_s(g, t, i, h, b)
        second_norm = 0.0 if s.parallel_attn else self._norm_s(t)
        return gemm_s(g, t, s.q_size, h, b) + second_norm + mlp + 2 * self._residual_s(t)

    def head_s(self) -> float:
        """Final norm and LM head on the last token only."""
        s = self.spec
        return self._norm_s(1) + gemm_s(self.gpu, 1, s.hidden_size, s.vocab_size, self._b)

    def kv_bytes_per_token(self) -> int:
        """K and V of one token in one layer: 2 * nkv * hd * dtype bytes."""
        return self.spec.kv_bytes_per_token_per_layer(self.dtype)
