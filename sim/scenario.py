"""A YAML scenario -> frozen dataclasses. Loading validates everything; a bad value raises
``ScenarioError`` naming the YAML path, the rule and the value. Every field: docs/scenarios.md.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any, Iterator

import yaml

from . import multinode
from .cluster import ClusterSpec
from . import scenario_hardware as hardware
from .cost.profiled import ProfileCost
from .hardware import GpuSpec
from .job import ATTENTION, BUILTIN, ORDERS, PARTITIONERS, PIECE_SIZES, SCHEME_KINDS, Job, SchemeSpec
from .model import PRESETS, ModelSpec, ModelSpecError
from .overrides import OverrideError
from .overrides import apply as apply_overrides
from .partition import PartitionError, check, from_fractions, table
from .scenario_clusters import parse_cluster
from .schemes import unsupported
from .yaml_fields import ScenarioError, integer, listed, mapping, need, number, scenario_path, text


@dataclass(frozen=True)
class MeasuredSpec:
    """The scenario's ``measured:`` section: result file patterns (globs or literal paths), with the
    YAML path of each (``measured.results[0]``) for errors."""

    patterns: tuple[str, ...]
    replays: tuple[str, ...] = ()  # per-rank replay results (reference.measure.replay; sim/validation/replay.py)
    labels: tuple[str, ...] = ()
    replay_labels: tuple[str, ...] = ()
    host: str | None = None  # the rounds' host's busy-cpu fit (reference.netcluster busy-cpu --sizes ...)

    def files(self) -> list[str]:
        return sorted({p for pat in self.patterns for p in glob.glob(pat)})

    def missing(self) -> list[tuple[str, str]]:
        """(YAML path, file) of each literal path that names no file. A glob that matches nothing is
        not missing: its measurements are pending."""
        pairs = zip(self.labels or [f"measured.results[{i}]" for i in range(len(self.patterns))], self.patterns)
        pairs = [*pairs, *zip(self.replay_labels or [f"measured.replays[{i}]" for i in range(len(self.replays))],
                              self.replays)]
        pairs += [("measured.host", self.host)] if self.host is not None else []
        return [(at, p) for at, p in pairs if not glob.has_magic(p) and not os.path.isfile(p)]


@dataclass(frozen=True)
class ValidatedOn:
    """The ``validated_on`` section: a scenario of measured shaped-link CPU clusters of this scenario's
    shapes, and which of its clusters to compare (``sim/validation/companion.py``)."""

    scenario: str
    clusters: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str
    models: tuple[ModelSpec, ...]
    gpu: GpuSpec
    dtype: str
    clusters: tuple[ClusterSpec, ...]
    contexts: tuple[int, ...]
    gpu_counts: tuple[int, ...]
    schemes: tuple[SchemeSpec, ...]
    profiles: tuple[tuple[str, ProfileCost], ...] = ()  # (model name, cost model); else analytic
    measured: MeasuredSpec | None = None
    validated_on: ValidatedOn | None = None

    def jobs(self) -> Iterator[Job]:
        """Every simulation of the sweep, in report order; ``single`` runs once per context on 1 GPU;
        a scheme with an explicit partition runs where the partition fits, and a scheme runs only
        where it can (``skipped`` says where not)."""
        for model in self.models:
            for cluster in self.clusters:
                for scheme in self.schemes:
                    counts = (1,) if scheme.kind == "single" else self.gpu_counts
                    for n in counts:
                        for context in self.contexts:
                            if scheme.runs_at(context, n) and unsupported(scheme.kind, model, n, context,
                                                                          scheme.tp) is None:
                                yield Job(model=model, gpu=self.gpu, dtype=self.dtype, cluster=cluster,
                                          scheme=scheme, context=context, num_gpus=n,
                                          cost_model=dict(self.profiles).get(model.name))


    def skipped(self, model: ModelSpec) -> list[tuple[str, int, int, str]]:
        """(scheme, GPUs, context, why) of each configuration a scheme cannot run for ``model``."""
        out = []
        for scheme in self.schemes:
            for n in (1,) if scheme.kind == "single" else self.gpu_counts:
                for context in self.contexts:
                    why = unsupported(scheme.kind, model, n, context, scheme.tp) if scheme.runs_at(context, n) else None
                    if why:
                        out.append((scheme.name, n, context, why))
        return out


def load(path: str | os.PathLike, overrides: list[str] = ()) -> Scenario:
    """Read and validate a scenario file, after applying ``--set`` ``overrides`` (``sim/overrides.py``)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read the scenario ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not a UTF-8 text file (byte 0x{e.object[e.start]:02x} at offset "
                            f"{e.start}); a scenario is YAML text") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if overrides:
        try:
            doc = apply_overrides(doc, list(overrides))
        except OverrideError as e:
            raise ScenarioError(str(e)) from None
    try:
        return parse(doc, default_name=os.path.splitext(os.path.basename(path))[0], base_dir=os.path.dirname(path))
    except ScenarioError as e:
        raise ScenarioError(f"{path}{' with --set' if overrides else ''}: {e}") from None


def parse(doc: Any, default_name: str = "scenario", base_dir: str = "") -> Scenario:
    """Validate a parsed YAML document (``ScenarioError`` messages start at the YAML path); relative
    paths in it (model config.json files, profiles, kvr-p tables, measured results and their plot) are
    relative to ``base_dir`` (the scenario file's folder)."""
    top = mapping(doc, "(top level)", required=("models", "hardware", "clusters", "workload"),
                   optional=("name", "description", "measured", "validated_on"))
    hw, dtype = hardware.section(top["hardware"])
    models = tuple(_model(m, f"models[{i}]", base_dir) for i, m in enumerate(listed(top["models"], "models")))
    profiles = hardware.profiles(hw, models, dtype, base_dir)
    clusters = tuple(parse_cluster(c, f"clusters[{i}]") for i, c in enumerate(listed(top["clusters"], "clusters")))
    names = [c.name for c in clusters]
    for i, name in enumerate(names):
        need(names.index(name) == i, f"clusters[{i}].name", "must be unique", name)
    wl = mapping(top["workload"], "workload", required=("contexts", "gpus", "schemes"))
    contexts = tuple(integer(c, f"workload.contexts[{i}]") for i, c in enumerate(listed(wl["contexts"], "workload.contexts")))
    counts = tuple(integer(n, f"workload.gpus[{i}]") for i, n in enumerate(listed(wl["gpus"], "workload.gpus")))
    for name, values in (("contexts", contexts), ("gpus", counts)):
        for i, v in enumerate(values):
            need(values.index(v) == i, f"workload.{name}[{i}]", "must not repeat an earlier value", v)
    for i, n in enumerate(counts):
        for cluster in clusters:
            need(n <= cluster.num_gpus, f"workload.gpus[{i}]",
                  f"must not exceed the {cluster.num_gpus} GPUs of cluster {cluster.name!r}", n)
    for i, c in enumerate(contexts):
        need(c >= max(counts), f"workload.contexts[{i}]",
              f"must be at least the largest GPU count ({max(counts)}) so no chunk is empty", c)
    schemes = tuple(_scheme(s, f"workload.schemes[{i}]", contexts, counts, base_dir)
                    for i, s in enumerate(listed(wl["schemes"], "workload.schemes")))
    for i, scheme in enumerate(schemes):
        for cluster in clusters:
            per_node = cluster.gpus_per_node or cluster.num_gpus
            need(scheme.tp <= 1 or per_node % scheme.tp == 0, f"workload.schemes[{i}].tp",
                 f"must divide the {per_node} GPUs of a node of cluster {cluster.name!r}", scheme.tp)
    for i, c in enumerate(top["clusters"]):
        if isinstance(c, dict) and c.get("kind") == "multinode" and "gpu" in hw:
            preset = multinode.NODES[c["node"]]["gpu"]
            need(preset == hw["gpu"], f"clusters[{i}].node", f"holds {preset} GPUs, but hardware.gpu is "
                 f"{hw['gpu']!r}", c["node"])
    labels = [s.name for s in schemes]
    for i, label in enumerate(labels):
        need(labels.index(label) == i, f"workload.schemes[{i}]", "scheme names must be unique", label)
    gpu = hardware.gpu(hw, profiles)
    _check_tables(schemes, lambda i: f"workload.schemes[{i}]", lambda scheme: [
        Job(model=m, gpu=gpu, dtype=dtype, cluster=c, scheme=scheme, context=max(contexts), num_gpus=n)
        for m in models for c in clusters for n in counts])
    return Scenario(
        name=text(top.get("name", default_name), "name"),
        description=text(top["description"], "description") if "description" in top else "",
        models=models, gpu=gpu, dtype=dtype, clusters=clusters,
        contexts=contexts, gpu_counts=counts, schemes=schemes, profiles=profiles,
        measured=_measured(top["measured"], base_dir) if "measured" in top else None,
        validated_on=_validated_on(top["validated_on"], base_dir) if "validated_on" in top else None)


# ----- sections --------------------------------------------------------------------------------------
def _model(value: Any, at: str, base_dir: str) -> ModelSpec:
    name = text(value, at)
    try:
        return ModelSpec.resolve(name if name in PRESETS else scenario_path(name, base_dir))
    except ModelSpecError as e:
        raise ScenarioError(f"{at}: must be a model preset or a config.json path, got {value!r} ({e})") from None


def _measured(value: Any, base_dir: str) -> MeasuredSpec:
    """The ``measured`` section. Whether literal paths exist is checked where the files are read
    (``MeasuredSpec.missing``): a measuring tool loads the scenario that names its output before
    writing it."""
    d = mapping(value, "measured", required=("results",), optional=("replays", "host"))
    results = d["results"]
    patterns = [results] if isinstance(results, str) else listed(results, "measured.results", empty=True)
    at = "measured.results" if isinstance(results, str) else "measured.results[{}]"
    replays = listed(d.get("replays", []), "measured.replays", empty=True)
    return MeasuredSpec(
        patterns=tuple(scenario_path(text(p, at.format(i)), base_dir) for i, p in enumerate(patterns)),
        replays=tuple(scenario_path(text(p, f"measured.replays[{i}]"), base_dir) for i, p in enumerate(replays)),
        labels=tuple(at.format(i) for i in range(len(patterns))),
        replay_labels=tuple(f"measured.replays[{i}]" for i in range(len(replays))),
        host=scenario_path(text(d["host"], "measured.host"), base_dir) if "host" in d else None)


def _validated_on(value: Any, base_dir: str) -> ValidatedOn:
    d = mapping(value, "validated_on", required=("scenario", "clusters"))
    clusters = tuple(text(c, f"validated_on.clusters[{i}]") for i, c in enumerate(listed(d["clusters"], "validated_on.clusters")))
    return ValidatedOn(scenario=scenario_path(text(d["scenario"], "validated_on.scenario"), base_dir), clusters=clusters)


def _scheme(value: Any, at: str, contexts: tuple[int, ...], counts: tuple[int, ...], base_dir: str = "") -> SchemeSpec:
    if isinstance(value, str):
        need(value in BUILTIN, at, f"must be one of {list(BUILTIN)} or a mapping", value)
        return BUILTIN[value]
    d = mapping(value, at, required=("name", "kind"),
                 optional=("partition", "partitioner", "attention", "order", "table", "table_contexts", "pieces",
                           "piece_sizes", "tp"))
    name, kind = text(d["name"], f"{at}.name"), d["kind"]
    need(kind in SCHEME_KINDS, f"{at}.kind", f"must be one of {list(SCHEME_KINDS)}", kind)
    if "attention" in d:
        need(kind == "tsp", f"{at}.attention", "applies to kind tsp only", d["attention"])
        need(d["attention"] in ATTENTION, f"{at}.attention", f"must be one of {list(ATTENTION)}", d["attention"])
    for key in ("partition", "partitioner"):
        if key in d:
            need(kind == "kvr", f"{at}.{key}", "applies to kind kvr only", d[key])
    need(not ("partition" in d and "partitioner" in d), at, "give `partition` or `partitioner`, not both",
          sorted(d))
    if "partitioner" in d:
        need(d["partitioner"] in PARTITIONERS, f"{at}.partitioner", f"must be one of {list(PARTITIONERS)}",
              d["partitioner"])
    fractions, tokens = None, ()
    if "partition" in d:
        fractions, tokens = _partition(d["partition"], f"{at}.partition", contexts, counts)
    if "order" in d:
        need(kind in ("kvr", "tsp"), f"{at}.order", "applies to kinds kvr and tsp only", d["order"])
        need(d["order"] in ORDERS, f"{at}.order", f"must be one of {list(ORDERS)}", d["order"])
    tp = 1
    if "tp" in d:
        tp = 0 if d["tp"] == "auto" else integer(d["tp"], f"{at}.tp")
        need(kind not in ("single", "tp"), f"{at}.tp", "applies to the schemes between groups, not single or tp",
             d["tp"])
        need(d.get("partitioner", "even") == "even" and d.get("order", "given") == "given" and "partition" not in d,
             f"{at}.tp", "runs with the scheme's even split in the given order (not kvr-s, kvr-p, an explicit "
             "partition or order: auto)", d["tp"])
    for key in ("pieces", "piece_sizes"):
        need(key not in d or kind == "pipeline", f"{at}.{key}", "applies to kind pipeline only", d.get(key))
    if "piece_sizes" in d:
        need(d["piece_sizes"] in PIECE_SIZES, f"{at}.piece_sizes", f"must be one of {list(PIECE_SIZES)}",
             d["piece_sizes"])
    for key in ("table", "table_contexts"):
        need(key not in d or d.get("partitioner") == "kvr-p", f"{at}.{key}", "applies to partitioner kvr-p only",
              d.get(key))
    need(not ("table" in d and "table_contexts" in d), at, "give `table` or `table_contexts`, not both", sorted(d))
    table_contexts = tuple(integer(c, f"{at}.table_contexts[{j}]") for j, c in
                           enumerate(listed(d["table_contexts"], f"{at}.table_contexts"))) if "table_contexts" in d \
        else _powers_of_two(min(contexts), max(contexts))
    return SchemeSpec(name=name, kind=kind, partitioner=d.get("partitioner", "even"), fractions=fractions,
                      tokens=tokens, attention=d.get("attention", "causal"), order=d.get("order", "given"),
                      table=scenario_path(text(d["table"], f"{at}.table"), base_dir) if "table" in d else None,
                      table_contexts=table_contexts if d.get("partitioner") == "kvr-p" and "table" not in d else (),
                      pieces=integer(d["pieces"], f"{at}.pieces") if "pieces" in d else 0,
                      piece_sizes=d.get("piece_sizes", "even"), tp=tp)


def _powers_of_two(low: int, high: int) -> tuple[int, ...]:
    """kvr-p's default table contexts: the powers of two from the one at or below ``low`` to the one at
    or above ``high``."""
    out = [1 << (low.bit_length() - 1)]
    while out[-1] < high:
        out.append(out[-1] * 2)
    return tuple(out)


def _check_tables(schemes, at_of, jobs_of) -> None:
    """Every kvr-p table covers every model, cluster and GPU count of the sweep."""
    for i, scheme in enumerate(schemes):
        if scheme.partitioner == "kvr-p" and scheme.table is not None:
            try:
                table.covers(scheme.table, jobs_of(scheme))
            except PartitionError as e:
                raise ScenarioError(f"{at_of(i)}.table: {e}") from None


def _partition(value: Any, at: str, contexts, counts):
    if isinstance(value, dict):
        tokens = []
        for ctx, chunks in value.items():
            c = integer(ctx, f"{at} key")
            need(c in contexts, f"{at}.{ctx}", f"must be one of workload.contexts {list(contexts)}", c)
            chunks = tuple(integer(x, f"{at}.{ctx}[{j}]", minimum=0) for j, x in enumerate(listed(chunks, f"{at}.{ctx}")))
            try:
                check(c, chunks)
            except PartitionError as e:
                raise ScenarioError(f"{at}.{ctx}: chunks must be >= 1 and sum to the context, got {list(chunks)} "
                                    f"({e})") from None
            tokens.append((c, chunks))
        need(bool(tokens), at, "must not be empty", value)
        sizes = {len(t[1]) for t in tokens}
        need(len(sizes) == 1, at, "every context's partition must have the same number of chunks", value)
        need(sizes <= set(counts), at, f"must have as many chunks as a GPU count in workload.gpus {list(counts)}",
              value)
        return None, tuple(tokens)
    fractions = tuple(number(x, f"{at}[{j}]") for j, x in enumerate(listed(value, at)))
    need(abs(sum(fractions) - 1) <= 1e-6, at, "fractions must sum to 1", list(fractions))
    need(len(fractions) in counts, at, f"must have as many fractions as a GPU count in workload.gpus {list(counts)}",
          list(fractions))
    for c in contexts:
        try:
            from_fractions(c, fractions)
        except PartitionError as e:
            raise ScenarioError(f"{at}: every chunk must get >= 1 token at every context, got {list(fractions)} "
                                f"at context {c} ({e})") from None
    return fractions, ()
