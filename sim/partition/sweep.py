"""The partition tools' sweeps: KVR-S jobs of a scenario, and a job's TTFT under another scheme."""
from __future__ import annotations

import dataclasses

from ..job import BUILTIN, Job, SchemeSpec
from ..scenario import Scenario
from ..simulate import simulate
from . import PartitionError


def jobs(scenario: Scenario, gpus, contexts, order: str = "given", models=None, clusters=None) -> list[Job]:
    """KVR-S jobs for every model, cluster, GPU count and context asked (default: the scenario's)."""
    scheme = SchemeSpec(name="kvr-s", kind="kvr", partitioner="kvr-s", order=order)
    profiles = dict(scenario.profiles)
    out = []
    for model in scenario.models:
        for cluster in scenario.clusters:
            if (models and model.name not in models) or (clusters and cluster.name not in clusters):
                continue
            for n in gpus or scenario.gpu_counts:
                for c in contexts or scenario.contexts:
                    if n > cluster.num_gpus or n > c:
                        raise PartitionError(f"{n} GPUs and {c} tokens do not fit cluster {cluster.name!r}")
                    out.append(Job(model=model, gpu=scenario.gpu, dtype=scenario.dtype, cluster=cluster, scheme=scheme,
                                   context=c, num_gpus=n, cost_model=profiles.get(model.name)))
    if not out:
        raise PartitionError(f"no model or cluster of the scenario matches {models or ''} {clusters or ''}")
    return out


def with_scheme(job: Job, scheme: str) -> float:
    """The simulated TTFT of ``job`` under the built-in ``scheme`` (its own plan, order given)."""
    return simulate(dataclasses.replace(job, scheme=BUILTIN[scheme], gpu_order=None)).ttft_s
