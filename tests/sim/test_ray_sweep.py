"""A sweep on a local Ray instance gives the process pool's results (sim/ray_sweep.py)."""
import os

import pytest

from sim import report
from sim.regen import SCENARIOS
from sim.scenario import load

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]'): the Ray sweep is untested")


def test_a_sweep_on_ray_gives_the_process_pools_rows():
    scenario = load(os.path.join(SCENARIOS, "uniform.yaml"), ["workload.contexts=[1024, 4096]"])
    pool = report.run(scenario, progress=False, jobs=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = report.run(scenario, progress=False, ray="local")
    finally:
        ray.shutdown()
    assert [repr(row) for row in on_ray] == [repr(row) for row in pool]
    assert [(r.result.segments, r.result.link_bytes) for r in on_ray if r.result] == \
        [(r.result.segments, r.result.link_bytes) for r in pool if r.result]
    assert report.text(scenario, on_ray) == report.text(scenario, pool)
