"""How long each operation of a prefill takes on one GPU: the one interface the schemes ask.

``CostModel`` lists every question a scheme may ask (times in seconds, ``tokens`` a rank's chunk
length); ``analytic.AnalyticCost`` answers from shapes and a GPU preset, ``profiled.ProfileCost`` from
a measured profile. The two host-side questions have defaults here (no floor, no calibration), so a
cost model overrides them only where it knows better. Pure functions: no SimPy, no torch.
docs/cost_model.md.
"""
from __future__ import annotations


class CostModel:
    """What the schemes ask. Subclasses answer the six op questions; the last three have defaults."""

    def embed_s(self, tokens: int) -> float:
        raise NotImplementedError

    def pre_attention_s(self, tokens: int) -> float:
        raise NotImplementedError

    def kv_copy_s(self, tokens: int) -> float:
        raise NotImplementedError

    def attention_s(self, queries: int, keys: int, pairs: float) -> float:
        raise NotImplementedError

    def post_attention_s(self, tokens: int) -> float:
        raise NotImplementedError

    def head_s(self) -> float:
        raise NotImplementedError

    def past_attention_s(self, queries: int, keys: int) -> float:
        """Attention of ``queries`` queries to ``keys`` earlier keys, unmasked: a block of another
        rank's K/V (ring attention), merged by log-sum-exp. By default the marginal cost of those keys
        on top of the queries' own causal attention, which is how the runtime attends to a past."""
        own = self.attention_s(queries, queries, causal_pairs(queries, queries))
        both = self.attention_s(queries, queries + keys, causal_pairs(queries, queries + keys))
        return max(both - own, 0.0)

    def layer_floor_s(self, tokens: float, past: bool = False) -> float:
        """The least time one decoder layer of a ``tokens``-token chunk takes however little it
        computes (a GPU whose host cannot issue kernels faster): none by default."""
        return 0.0

    def forward_factor(self, tokens: float) -> float:
        """How much longer a layer takes inside a whole forward than its parts: 1 by default."""
        return 1.0


def kv_chain_of(job) -> str:
    """How the job's runtime holds a KV-Runahead rank's cumulative cache and a pipeline stage's growing
    one (``GpuSpec.kv_chain``)."""
    return job.gpu.kv_chain if job.gpu is not None else "resident"


def chain_kv_s(cost: CostModel, kv_chain: str, step: int, keys: float) -> float:
    """Per-layer seconds a KV-Runahead rank (or a pipeline stage's piece) ``step`` spends copying K/V in
    its own memory besides the stack of its own K and V that ``pre_attention_s`` charges every step (a
    cache's first copy): ``resident``, none (that copy is the write of its tokens into the layer's
    cache, after the past already there); ``copy``, every step after the first copies all ``keys``
    tokens (the past concatenated with its own). docs/cost_model.md, "The KV chain"."""
    if kv_chain == "copy":
        return cost.kv_copy_s(keys) if step > 0 else 0.0
    return 0.0


def causal_pairs(queries: int, keys: int) -> float:
    """Query-key pairs computed when ``queries`` queries (the last ones) attend to ``keys`` keys with a
    causal mask aligned at the bottom right: q * (k - q) + q * (q + 1) / 2."""
    assert 1 <= queries <= keys, (queries, keys)
    return queries * (keys - queries) + queries * (queries + 1) / 2


def layer_extras(cost: CostModel, *layer_parts_s: float, tokens: float,
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
    wait = max(0.0, cost.layer_floor_s(tokens, past) - parts)
    calibration = (parts + wait) * (cost.forward_factor(tokens) - 1.0)
    return [(op, s) for op, s in (("host", wait), ("calibration", calibration)) if s != 0.0]


def layer_extra_s(cost: CostModel, *layer_parts_s: float, tokens: float, past: bool = False) -> float:
    """Seconds a layer adds to its parts: the ``layer_extras`` pieces, summed."""
    return sum(s for _, s in layer_extras(cost, *layer_parts_s, tokens=tokens, past=past))
