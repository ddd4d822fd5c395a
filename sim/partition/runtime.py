"""The runtime's partitions from the simulator's code: ``reference.launch --partition searched|predicted``.

``resolve_partition`` answers with the same ``Plan`` (chunks, rank -> GPU order) the simulator would
use for the runtime's model, dtype, context and world size on the hardware and cluster of a scenario
file. KVR-S here runs on the simulator as its oracle; to search the paper's way, on the hardware,
call ``search.grid_search(context, world_size, oracle, start)`` with an oracle that launches and times
real runs (chunks -> TTFT seconds), starting from ``search.start_chunks(job)``.
"""
from __future__ import annotations

from . import Plan, PartitionError, even

PARTITION_KINDS = ("even", "searched", "predicted")


def job_for(model: str, dtype: str, context: int, world_size: int, scenario_path: str,
            cluster: str | None = None, order: str = "given"):
    """A simulator job of the runtime's model and dtype on the scenario's hardware and cluster (its first
    one unless ``cluster`` names another); ``PartitionError`` for a bad scenario or name."""
    # Imported here: the runtime's launcher asks for even partitions without paying for the simulator.
    from ..job import Job, SchemeSpec
    from ..model import ModelSpec, ModelSpecError
    from ..scenario import ScenarioError, load

    try:
        scenario = load(scenario_path)
        spec = ModelSpec.resolve(model)
    except (ScenarioError, ModelSpecError) as e:
        raise PartitionError(str(e)) from None
    clusters = {c.name: c for c in scenario.clusters}
    if cluster is not None and cluster not in clusters:
        raise PartitionError(f"cluster must be one of {list(clusters)} of {scenario_path}, got {cluster!r}")
    chosen = clusters[cluster] if cluster is not None else scenario.clusters[0]
    if world_size > chosen.num_gpus:
        raise PartitionError(f"world size {world_size} exceeds the {chosen.num_gpus} GPUs of cluster {chosen.name!r}")
    profiles = dict(scenario.profiles)
    return Job(model=spec, gpu=scenario.gpu, dtype=dtype, cluster=chosen,
               scheme=SchemeSpec(name="kvr-s", kind="kvr", partitioner="kvr-s", order=order), context=context,
               num_gpus=world_size, cost_model=profiles.get(spec.name))


def resolve_partition(kind: str, context: int, world_size: int, *, model: str | None = None, dtype: str = "fp16",
                      scenario: str | None = None, table: str | None = None, cluster: str | None = None,
                      order: str = "given") -> Plan:
    """``even``: KVR-E. ``searched``: KVR-S on the simulator (needs ``model`` and ``scenario``).
    ``predicted``: KVR-P from the lookup table ``table`` (needs ``model`` and ``scenario``: the table's
    key is the model, the scenario's hardware and cluster, ``dtype`` and ``world_size``)."""
    if kind not in PARTITION_KINDS:
        raise PartitionError(f"partition kind must be one of {list(PARTITION_KINDS)}, got {kind!r}")
    if world_size > context:
        raise PartitionError(f"{world_size} ranks for {context} tokens: every rank needs at least one token")
    if kind == "even":
        return Plan(tuple(even(context, world_size)), tuple(range(world_size)))
    if model is None or scenario is None:
        raise PartitionError(f"a {kind} partition needs the model and a scenario file (its hardware and cluster)")
    if kind == "predicted" and table is None:
        raise PartitionError("a predicted partition needs a lookup table file (python -m sim.partition build-table)")
    job = job_for(model, dtype, context, world_size, scenario, cluster, order)
    if kind == "searched":
        from .search import search_job

        result, gpus = search_job(job)
        return Plan(result.chunks, gpus)
    from . import table as tables

    return tables.predict(tables.matching(tables.load(table), job, table), context)
