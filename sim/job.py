"""What one simulation is: a ``Job`` (a model prefilling one context on P GPUs of a cluster under a
scheme) and the ``SchemeSpec`` that names the scheme as a scenario lists it. Data only: how the chunks
are chosen is the planner's (``sim/partition/plan.py``), how the ranks run is the engine's
(``sim/engine``), how long ops take is the cost model's (``sim/cost``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .cluster import ClusterSpec
from .cost import CostModel
from .cost.analytic import AnalyticCost
from .hardware import GpuSpec
from .model import ModelSpec

SCHEME_KINDS = ("single", "tsp", "kvr", "ring", "ring-zigzag", "ulysses", "tp", "pipeline")  # sim/schemes/
ATTENTION = ("causal", "masked")
PARTITIONERS = ("even", "kvr-s", "kvr-p")
JOB_PARTITIONERS = ("kvr-s", "kvr-p")  # the partition depends on the whole job: the planner resolves it
ORDERS = ("given", "auto")
PIECE_SIZES = ("even", "equal-time")  # pipeline's prompt pieces


@dataclass(frozen=True, kw_only=True)
class SchemeSpec:
    """A scheme as a scenario names it. ``fractions`` (one per rank, summing to 1) or ``tokens`` (per
    context, one count per rank) pin a kvr partition to one GPU count; otherwise ``partitioner``
    (``even``, ``kvr-s`` searched, ``kvr-p`` predicted from ``table`` or a table built at
    ``table_contexts``) splits any context over any GPU count. ``attention`` is tsp's attention work:
    ``causal`` (keys [0, e_r), bottom-right causal; what the runtime computes) or ``masked`` (the dense
    c_r x C block). ``order``: ``given`` (rank r on GPU r) or ``auto`` (chosen from the topology).
    ``pipeline`` cuts the prompt into ``pieces`` (0: four a stage) of ``piece_sizes`` ``even`` or
    ``equal-time``. ``tp``: every rank a tensor-parallel group of that many GPUs of one node (the
    scheme runs between the groups); 0: the planner tries each group size that fits a node and keeps
    the fastest."""

    name: str
    kind: str
    partitioner: str = "even"
    fractions: tuple[float, ...] | None = None
    tokens: tuple[tuple[int, tuple[int, ...]], ...] = ()  # (context, chunks) pairs
    attention: str = "causal"
    order: str = "given"
    table: str | None = None
    table_contexts: tuple[int, ...] = ()
    pieces: int = 0
    piece_sizes: str = "even"
    tp: int = 1  # GPUs a rank (a tensor-parallel group inside a node); 0: the planner picks the best

    def __post_init__(self) -> None:
        assert self.kind in SCHEME_KINDS and self.attention in ATTENTION
        assert self.partitioner in PARTITIONERS and self.order in ORDERS and self.piece_sizes in PIECE_SIZES

    def num_pieces(self, num_gpus: int) -> int:
        """pipeline: the prompt's pieces (four a stage unless given)."""
        return self.pieces or 4 * num_gpus

    @property
    def pinned_gpus(self) -> int | None:
        """The one GPU count an explicit partition fits, else None."""
        if self.fractions is not None:
            return len(self.fractions)
        if self.tokens:
            return len(self.tokens[0][1])
        return None

    def ranks(self, num_gpus: int, tp: int | None = None) -> int:
        """Ranks on ``num_gpus`` GPUs with groups of ``tp`` (default: the scheme's)."""
        return num_gpus // (tp or self.tp or 1)

    def runs_at(self, context: int, num_gpus: int) -> bool:
        """Whether this scheme runs at this context and GPU count (an explicit partition fits one GPU
        count, and with ``tokens`` only its contexts; the scenario checked that every chunk of
        ``fractions`` gets a token at every context)."""
        if self.kind == "single":
            return True
        pinned = self.pinned_gpus
        if pinned is not None and pinned != num_gpus:
            return False
        return not self.tokens or context in dict(self.tokens)


BUILTIN = {s.name: s for s in (
    SchemeSpec(name="single", kind="single"),
    SchemeSpec(name="tsp", kind="tsp"),
    SchemeSpec(name="tsp-masked", kind="tsp", attention="masked"),
    SchemeSpec(name="kvr-e", kind="kvr"),
    SchemeSpec(name="kvr-s", kind="kvr", partitioner="kvr-s"),
    SchemeSpec(name="ring", kind="ring"),
    SchemeSpec(name="ring-zigzag", kind="ring-zigzag"),
    SchemeSpec(name="ulysses", kind="ulysses"),
    SchemeSpec(name="tp", kind="tp"),
    SchemeSpec(name="pipeline", kind="pipeline"),
    SchemeSpec(name="pipeline-et", kind="pipeline", piece_sizes="equal-time"),
)}


@dataclass(frozen=True, kw_only=True)
class Job:
    model: ModelSpec
    gpu: GpuSpec
    dtype: str
    cluster: ClusterSpec
    scheme: SchemeSpec
    context: int
    num_gpus: int  # 1 for `single`
    cost_model: CostModel | None = field(default=None, compare=False)  # a measured profile (sim/cost/profiled.py)
    gpu_order: tuple[int, ...] | None = None  # cluster GPU of each rank, pinned; None: the planner's order

    def cost(self) -> CostModel:
        return self.cost_model if self.cost_model is not None else AnalyticCost(self.model, self.gpu, self.dtype)
