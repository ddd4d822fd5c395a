"""A rank that is a tensor-parallel group: the cost of its layer split over its ``tp`` GPUs, and the
two ring all-reduces a layer that Megatron-style tensor parallelism adds (after attention, after
the MLP), over the group's link inside its node.

Wrapping the rank's cost model keeps every scheme unchanged: a scheme run with ``plan.tp > 1`` asks
the same questions and gets the group's answers. The all-reduces are charged inside the layer's
``post_attention`` (they block the layer, so its time is the same wherever they are drawn). As
``sim/schemes/tp.py``, a GPU's share of a part is 1/tp of it. docs/schemes.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..model import dtype_bytes
from . import CostModel


def allreduce_s(nbytes: float, tp: int, bandwidth_bytes_per_s: float, latency_s: float) -> float:
    """A ring all-reduce of ``nbytes`` among ``tp`` GPUs: 2(tp-1) steps of nbytes/tp."""
    return 2 * (tp - 1) * (latency_s + nbytes / tp / bandwidth_bytes_per_s)


@dataclass(frozen=True)
class TensorParallelCost(CostModel):
    inner: CostModel
    tp: int
    hidden_bytes: float  # bytes of one token's hidden state
    bandwidth_bytes_per_s: float
    latency_s: float

    def embed_s(self, tokens: int) -> float:
        return self.inner.embed_s(tokens)

    def pre_attention_s(self, tokens: int) -> float:
        return self.inner.pre_attention_s(tokens) / self.tp

    def kv_copy_s(self, tokens: int) -> float:
        return self.inner.kv_copy_s(tokens) / self.tp

    def attention_s(self, queries: int, keys: int, pairs: float) -> float:
        return self.inner.attention_s(queries, keys, pairs) / self.tp

    def past_attention_s(self, queries: int, keys: int) -> float:
        return self.inner.past_attention_s(queries, keys) / self.tp

    def post_attention_s(self, tokens: int) -> float:
        reduce_s = allreduce_s(tokens * self.hidden_bytes, self.tp, self.bandwidth_bytes_per_s, self.latency_s)
        return self.inner.post_attention_s(tokens) / self.tp + 2 * reduce_s

    def head_s(self) -> float:
        return self.inner.head_s()

    def layer_floor_s(self, tokens: float, past: bool = False) -> float:
        return self.inner.layer_floor_s(tokens, past)

    def forward_factor(self, tokens: float) -> float:
        return self.inner.forward_factor(tokens)


def tensor_parallel(cost: CostModel, job, plan) -> TensorParallelCost:
    """The group cost of ``plan``'s ranks: the link between the first rank's first two GPUs (inside
    its node) carries the all-reduces."""
    cluster = job.cluster
    first = plan.gpus[0]
    links = [cluster.link(*hop) for hop in cluster.route(first, first + 1)]
    return TensorParallelCost(inner=cost, tp=plan.tp,
                              hidden_bytes=job.model.hidden_size * dtype_bytes(job.dtype),
                              bandwidth_bytes_per_s=min(l.bandwidth_bytes_per_s for l in links),
                              latency_s=sum(l.latency_s for l in links))
