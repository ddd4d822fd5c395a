"""Each shipped scenario's report equals its checked-in expected report (regenerate deliberately with
``python -m sim.regen``)."""
import glob
import os

import pytest

from sim import report
from sim.regen import SCENARIOS, expected_path
from sim.scenario import load

PATHS = sorted(glob.glob(os.path.join(SCENARIOS, "*.yaml")))


def test_every_scenario_is_shipped_with_its_expected_report():
    assert [os.path.basename(p) for p in PATHS] == ["contenders.yaml", "large-cluster.yaml", "multinode.yaml", "nonuniform.yaml", "paper.yaml", "throttled.yaml", "uniform.yaml",
                                                     "validate-cluster.yaml", "validate-contenders.yaml", "validate-cpu.yaml", "validate-h100-contenders.yaml",
                                                     "validate-h100-kv-chain.yaml", "validate-h100.yaml", "validate-h200-1gpu.yaml"]
    assert all(os.path.exists(expected_path(p)) for p in PATHS)


@pytest.mark.parametrize("path", PATHS, ids=os.path.basename)
def test_report_matches_expected(path):
    scenario = load(path)
    with open(expected_path(path), encoding="utf-8") as f:
        assert report.text(scenario, report.run(scenario, progress=False)) == f.read()
