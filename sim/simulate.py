"""``simulate(job)``: the planner's plan run by the engine, ``run(job, plan(job))``.

The one place that joins the two (``sim/partition/plan.py`` decides the chunks and the rank -> GPU
order; ``sim/engine`` runs them): the reports, the CLI and the tests call this. On a cluster with
``noise`` the plan is made on the quiet cluster and run under draw 0 (``sim/noise.py``; the reports
run every draw).
"""
from __future__ import annotations

import dataclasses

from . import noise
from .cost import CostModel
from .engine import Result, Sim, run
from .job import Job
from .partition.plan import plan
from .schemes import unsupported


def simulate(job: Job, cost: CostModel | None = None, sim_class: type[Sim] | None = None) -> Result:
    """Plan ``job`` and run it; ``cost`` replaces the job's cost model (a measured profile, a test
    stub), ``sim_class`` the engine's ``Sim`` (``engine/cpu_cluster.py``). A job its scheme cannot
    run (``schemes.unsupported``: a pipeline with fewer layers than stages, heads that tensor-parallel
    groups do not divide) raises ``ValueError`` saying why, before anything is simulated."""
    why = unsupported(job.scheme.kind, job.model, job.num_gpus, job.context, job.scheme.tp)
    if why is not None:
        raise ValueError(f"{job.scheme.name} cannot run {job.model.name} on {job.num_gpus} GPUs: {why}")
    if job.cluster.noise is None:
        return run(job, plan(job), cost=cost, sim_class=sim_class)
    planned = plan(dataclasses.replace(job, cluster=noise.quiet(job.cluster)))
    drawn = noise.draw(job.cluster, 0, noise.links_for(job, planned, cost=cost, sim_class=sim_class))
    return run(dataclasses.replace(job, cluster=drawn), planned, cost=cost, sim_class=sim_class)
