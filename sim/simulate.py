"""``simulate(job)``: the planner's plan run by the engine, ``run(job, plan(job))``.

The one place that joins the two (``sim/partition/plan.py`` decides the chunks and the rank -> GPU
order; ``sim/engine`` runs them): the reports, the CLI and the tests call this.
"""
from __future__ import annotations

from .cost import CostModel
from .engine import Result, Sim, run
from .job import Job
from .partition.plan import plan


def simulate(job: Job, cost: CostModel | None = None, sim_class: type[Sim] | None = None) -> Result:
    """Plan ``job`` and run it; ``cost`` replaces the job's cost model (a measured profile, a test
    stub), ``sim_class`` the engine's ``Sim`` (``engine/cpu_cluster.py``)."""
    return run(job, plan(job), cost=cost, sim_class=sim_class)
