"""Per-rank replays (reference/measure/replay.py) and their comparison with the simulator
(sim/validation/replay.py): a tiny model at a tiny context runs every rank, and every rank gets a
finite error."""
import json
import math

import pytest

from reference.measure.replay import main as replay_main
from sim.scenario import load
from sim.validation import replay

SCENARIO = """\
name: replay-tiny
models: [tiny-llama]
hardware: {gpu: h100-sxm, dtype: fp32}
clusters:
  - {name: u, kind: uniform, gpus: 2, bandwidth_gb_per_s: 1}
workload:
  contexts: [48]
  gpus: [2]
  schemes: [tsp, kvr-e, {name: kvr-x, kind: kvr, partition: [0.75, 0.25]}]
measured:
  results: []
  replays: [replay.json]
"""


def test_replay_runs_every_rank_and_compares_with_a_finite_error(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "replay.json"
    assert replay_main([str(path), "--out", str(out), "--warmup", "0", "--repeat", "1"]) == 0
    doc = json.loads(out.read_text())
    got = [(e["scheme"], e["rank"], e["chunk"], e["past"]) for e in doc["replays"]]
    assert got == [("tsp", 0, 24, 0), ("tsp", 1, 24, 24), ("kvr-e", 0, 24, 0), ("kvr-e", 1, 24, 24),
                   ("kvr-x", 0, 36, 0), ("kvr-x", 1, 12, 36)]
    assert all(e["median_s"] > 0 and e["probe_s"] > 0 for e in doc["replays"])
    scenario = load(path)
    assert scenario.measured.replays == (str(out),)
    rows = replay.compare(scenario, replay.load(list(scenario.measured.replays)))
    assert [(r.scheme, r.rank, r.chunk, r.past) for r in rows] == got
    assert all(r.simulated_s > 0 and math.isfinite(r.error) for r in rows)
    table = replay.text(rows)
    assert "MAPE per-rank replays:" in table and "kvr-x" in table


def test_simulated_busy_time_is_compute_only():
    from sim.cluster import ClusterSpec
    from sim.hardware import GpuSpec
    from sim.model import ModelSpec
    from sim.job import BUILTIN, Job

    spec = ModelSpec.preset("tiny-llama")
    slow = ClusterSpec.uniform("slow", 2, 1e3, 0.0)  # transfers take seconds: busy time must not see them
    fast = ClusterSpec.uniform("fast", 2, 1e18, 0.0)
    for scheme in ("tsp", "kvr-e"):
        busy = [replay.simulated_busy_s(Job(model=spec, gpu=GpuSpec.preset("h100-sxm"), dtype="fp32",
                                            cluster=c, scheme=BUILTIN[scheme], context=64, num_gpus=2),
                                        (32, 32), None) for c in (slow, fast)]
        assert busy[0] == pytest.approx(busy[1]) and max(busy[0]) < 1e-2


def test_unreadable_replay_file_is_a_replay_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(replay.ReplayError, match="bad.json"):
        replay.load([str(bad)])


def test_replay_rounds_take_the_median_of_each_ranks_rounds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "replay.json"
    assert replay_main([str(path), "--out", str(out), "--warmup", "0", "--repeat", "2", "--rounds", "3",
                        "--schemes", "kvr-x"]) == 0
    doc = json.loads(out.read_text())
    assert doc["rounds"] == 3 and [(e["rank"], e["chunk"]) for e in doc["replays"]] == [(0, 36), (1, 12)]
    for e in doc["replays"]:
        assert len(e["rounds_median_s"]) == 3 and len(e["samples_s"]) == 6
        assert e["median_s"] == sorted(e["rounds_median_s"])[1]
    assert replay_main([str(path), "--out", str(out), "--rounds", "0"]) == 2
