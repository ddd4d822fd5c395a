"""The cost model: how long each operation of a prefill takes on one GPU. Pure functions, no SimPy.

Every op takes ``max(FLOPs / (peak * eff_op), bytes / (HBM * eff_mem)) + launch overhead`` (a roofline
with a fixed launch cost). Formulas are written out in docs/cost_model.md. References: the roofline
model (Williams et al., 2009); FlashAttention's FLOP count (4 * pairs * heads * head_dim); Vidur's
split of "what happens" (the schemes) from "how long it takes" (this module).

The schemes ask a ``CostModel`` for four per-rank quantities and two one-off ones; ``AnalyticCost``
answers from shapes and a ``GpuSpec``. A measured profile can later answer the same questions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .hardware import GpuSpec
from .model import ModelSpec, dtype_bytes


def causal_pairs(queries: int, keys: int) -> float:
    """Query-key pairs computed when ``queries`` queries (the last ones) attend to ``keys`` keys with a
    causal mask aligned at the bottom right: q * (k - q) + q * (q + 1) / 2."""
    assert 1 <= queries <= keys, (queries, keys)
    return queries * (keys - queries) + queries * (queries + 1) / 2


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


class CostModel(Protocol):
    """What the schemes ask. Times in seconds; ``tokens`` is a rank's chunk length."""

    def embed_s(self, tokens: int) -> float: ...
    def pre_attention_s(self, tokens: int) -> float: ...
    def kv_copy_s(self, tokens: int) -> float: ...
    def attention_s(self, queries: int, keys: int, pairs: float) -> float: ...
    def post_attention_s(self, tokens: int) -> float: ...
    def head_s(self) -> float: ...
    # Optional: layer_floor_s(tokens, past: bool) -> float, the least time one decoder layer of a
    # ``tokens``-token chunk takes however little it computes (a GPU whose host cannot issue kernels
    # faster); 0 when absent. Optional: forward_factor(tokens) -> float, how much longer a layer takes
    # inside a whole forward than that; 1 when absent. See ``layer_extras``.


def layer_extras(cost: "CostModel", *layer_parts_s: float, tokens: float,
                 past: bool = False) -> list[tuple[str, float]]:
    """The ("host", s) and ("calibration", s) pieces a layer of a ``tokens``-token chunk adds to its
    parts, where not zero; a scheme appends them to the layer's compute.

    Host wait: where the parts sum to less than the cost model's per-layer floor
    (``layer_floor_s(tokens, past)``: the host's time to issue one layer, with or without a past to
    attend to), the layer waits for the host. A GPU runs small chunks at the rate its host issues
    their work, which the separately timed parts do not show (docs/validation.md, "Host-bound layers").
    Calibration: a layer inside a whole forward takes ``forward_factor(tokens)`` times that
    (docs/validation.md, "Forward calibration")."""
    parts = sum(layer_parts_s)
    floor = getattr(cost, "layer_floor_s", None)
    factor = getattr(cost, "forward_factor", None)
    wait = max(0.0, (floor(tokens, past) if floor else 0.0) - parts)
    calibration = (parts + wait) * ((factor(tokens) if factor else 1.0) - 1.0)
    return [(op, s) for op, s in (("host", wait), ("calibration", calibration)) if s != 0.0]


def layer_extra_s(cost: "CostModel", *layer_parts_s: float, tokens: float, past: bool = False) -> float:
    """Seconds a layer adds to its parts: the ``layer_extras`` pieces, summed."""
    return sum(s for _, s in layer_extras(cost, *layer_parts_s, tokens=tokens, past=past))


@dataclass(frozen=True)
class AnalyticCost:
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
        return attention_s(self.gpu, self.spec, queries, keys, pairs, self._b)

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
