"""Does a job fit its GPUs' memory? Each rank's bytes at its peak, by scheme; pure functions.

A rank holds, in the job's dtype (docs/cost_model.md, "Memory"):

- the weights: every parameter (``ModelSpec.num_params``): TSP and KV-Runahead replicate the model;
- its KV-cache: K and V of the tokens it keeps, in every layer (each scheme's ``rank_memory``: single
  C; tsp rank r [0, e_r); kvr rank r [0, S_r)), as the runtime's caches end. A single prefill's
  plain cache keeps the layer's V as a view into the fused QKV output, which holds Q and the
  unrotated K alive too: q + kv more elements per token and layer (the runtime's, measured: the
  peaks of docs/cost_model.md, "Memory", within 1-3%);
- one layer's transient K/V buffer: tsp's gathered block (P x the largest
  chunk), kvr's received cumulative K/V before its own are appended (S_{r-1} tokens);
- the activations of one layer for its chunk of c tokens: the residual stream and its normed copy,
  the QKV projection, the attention output, the MLP's inner activations (gate and up, and their
  product; two for a GELU MLP), i.e. c x (3H + q + 2kv + n_inner I) elements, with flash attention
  (no C x C scores);
- the last token's logits in fp32 (V x 4 bytes).

A scenario can give the memory (``hardware.memory_gb``) or switch the check off
(``hardware.check_memory: false``); a GPU of unknown memory (a CPU profile) is not checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .model import ModelSpec, dtype_bytes


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank needs at its peak, by part."""

    weights: float
    kv_cache: float
    kv_transient: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.kv_transient + self.activations


@dataclass(frozen=True)
class MemoryCheck:
    """The job's largest rank against the GPU's memory (``capacity_bytes`` None: not checked)."""

    need_bytes: float  # the largest rank's total
    capacity_bytes: float | None
    worst_rank: int
    ranks: tuple[RankMemory, ...]

    @property
    def fits(self) -> bool:
        return self.capacity_bytes is None or self.need_bytes <= self.capacity_bytes

    def reason(self) -> str:
        """One line: what does not fit, in GB."""
        m = self.ranks[self.worst_rank]
        return (f"rank {self.worst_rank} needs {self.need_bytes / 1e9:.1f} GB (weights {m.weights / 1e9:.1f}, "
                f"KV-cache {m.kv_cache / 1e9:.1f}, KV buffer {m.kv_transient / 1e9:.1f}, activations "
                f"{m.activations / 1e9:.1f}) of the GPU's {self.capacity_bytes / 1e9:.1f} GB")


def activation_elements(model: ModelSpec, tokens: int) -> int:
    """Elements alive in one layer's forward of ``tokens`` tokens (see the module docstring)."""
    inner = 3 if model.mlp_kind == "swiglu" else 2
    return tokens * (3 * model.hidden_size + model.q_size + 2 * model.kv_size + inner * model.intermediate_size)


def rank_parts(model: ModelSpec, dtype: str, *, kept_tokens: int, transient_tokens: int, activation_tokens: int,
               weight_fraction: float = 1.0, layer_fraction: float = 1.0, kv_head_fraction: float = 1.0,
               activation_fraction: float = 1.0, kept_extra_per_token_layer: int = 0) -> RankMemory:
    """One rank's memory from what its scheme keeps: K/V of ``kept_tokens`` in its layers (a
    ``layer_fraction`` of them, a ``kv_head_fraction`` of the K/V heads), one layer's transient K/V of
    ``transient_tokens``, one layer's activations of ``activation_tokens`` (an ``activation_fraction``
    of their width, for schemes that split heads and MLP columns), a ``weight_fraction`` of the
    weights; ``kept_extra_per_token_layer`` elements more kept per token and layer (single prefill's
    QKV view, see the module docstring)."""
    b = dtype_bytes(dtype)
    per_token_layer = model.kv_bytes_per_token_per_layer(dtype) * kv_head_fraction
    layers = model.num_layers * layer_fraction
    return RankMemory(weights=model.num_params * b * weight_fraction,
                      kv_cache=kept_tokens * (per_token_layer + kept_extra_per_token_layer * b) * layers,
                      kv_transient=transient_tokens * per_token_layer,
                      activations=activation_elements(model, activation_tokens) * b * activation_fraction
                      + model.vocab_size * 4)


def check(ranks: Sequence[RankMemory], capacity_bytes: float | None) -> MemoryCheck:
    """The ranks' needs against the GPU's memory."""
    ranks = tuple(ranks)
    worst = max(range(len(ranks)), key=lambda r: ranks[r].total)
    return MemoryCheck(need_bytes=ranks[worst].total, capacity_bytes=capacity_bytes, worst_rank=worst, ranks=ranks)
