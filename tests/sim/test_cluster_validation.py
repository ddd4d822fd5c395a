"""The pieces of the 4- and 8-rank cluster validation on the simulator's side (docs/validation.md,
section 8): random on/off competing flows, the noise phases a measured prefill may meet, each rank's
compute and waits (simulated and from a measured trace), the compute-to-communication ratio, and a
front door's ``validated_on`` section."""
import itertools
import os
import statistics

import pytest

from sim.cli import main as sim_main
from sim.cluster import BackgroundFlow, ClusterSpec, onoff_periods
from sim.hardware import GpuSpec
from sim.job import BUILTIN, Job
from sim.model import ModelSpec
from sim.scenario import ScenarioError, parse
from sim.simulate import simulate
from sim.validation.companion import comm_ratio
from sim.validation.measured import NOISE_PHASES, noise_phases
from sim.validation.ranks import RankRow, RankTimes, measured_ranks, simulated_ranks
from tests.stubs import StubCost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = ModelSpec.preset("tiny-llama").replace(num_layers=2)


def _job(scheme: str, cluster: ClusterSpec, gpus: int = 2, context: int = 8) -> Job:
    return Job(model=SPEC, gpu=GpuSpec.preset("h100-sxm"), dtype="fp32", scheme=BUILTIN[scheme], context=context,
               num_gpus=gpus, cluster=cluster, cost_model=StubCost())


def test_random_periods_are_exponential_draws_of_the_given_means_and_repeat_with_the_seed():
    draws = list(itertools.islice(onoff_periods(0.2, 0.3, 5), 4000))
    assert draws[:50] == list(itertools.islice(onoff_periods(0.2, 0.3, 5), 50))
    assert draws[:50] != list(itertools.islice(onoff_periods(0.2, 0.3, 6), 50))
    assert statistics.fmean(on for on, _ in draws) == pytest.approx(0.2, rel=0.06)
    assert statistics.fmean(off for _, off in draws) == pytest.approx(0.3, rel=0.06)
    assert list(itertools.islice(onoff_periods(0.2, 0.3, None), 3)) == [(0.2, 0.3)] * 3


def test_a_random_flow_slows_a_transfer_by_its_draws():
    """tsp on 2 GPUs: each layer's all-gather moves 4 tokens' K and V (256 B here: 1 s at 256 B/s) over
    the link 0 -> 1, shared half-half with the competing flow while it is on."""
    nbytes = 4 * SPEC.kv_bytes_per_token_per_layer("fp32")
    quiet = ClusterSpec.uniform("u", 2, nbytes, 0.0)
    on = ClusterSpec.uniform("u", 2, nbytes, 0.0, background=(BackgroundFlow(src=0, dst=1),))
    rand = ClusterSpec.uniform("u", 2, nbytes, 0.0,
                               background=(BackgroundFlow(src=0, dst=1, on_s=1.0, off_s=1.0, seed=3),))
    t_quiet, t_on, t_rand = (simulate(_job("tsp", c)).ttft_s for c in (quiet, on, rand))
    assert t_quiet < t_rand < t_on
    assert t_on - t_quiet == pytest.approx(2.0)  # two layers, each transfer twice as long
    assert simulate(_job("tsp", rand)).ttft_s == t_rand


def test_noise_phases_shift_periodic_flows_and_advance_random_seeds():
    flows = (BackgroundFlow(src=0, dst=1), BackgroundFlow(src=1, dst=0, on_s=2.0, off_s=6.0, start_s=1.0),
             BackgroundFlow(src=0, dst=1, on_s=1.0, off_s=1.0, seed=9))
    variants = noise_phases(ClusterSpec.uniform("u", 2, 1e9, 0.0, background=flows))
    assert len(variants) == NOISE_PHASES
    assert [v.background[1].start_s for v in variants] == [1.0 + 8.0 * k / NOISE_PHASES for k in range(NOISE_PHASES)]
    assert [v.background[2].seed for v in variants] == [9 + k for k in range(NOISE_PHASES)]
    assert all(v.background[0] == flows[0] for v in variants)
    constant = ClusterSpec.uniform("u", 2, 1e9, 0.0, background=flows[:1])
    assert noise_phases(constant) == [constant]


def test_a_simulated_rank_waits_for_the_rest_of_its_layer_span():
    """kvr-e on 2 GPUs, 4 tokens each, a 1 s message: rank 1's layer l waits for rank 0's K/V."""
    nbytes = 4 * SPEC.kv_bytes_per_token_per_layer("fp32")
    result = simulate(_job("kvr-e", ClusterSpec.uniform("u", 2, nbytes, 0.0)))
    r0, r1 = simulated_ranks(result)
    busy0 = sum(s.end_s - s.start_s for s in result.segments if s.rank == 0 and s.kind == "compute"
                and s.layer is not None)
    assert r0 == RankTimes(compute_s=pytest.approx(busy0), wait_s=pytest.approx(0.0))
    assert r1.wait_s > 0.5 and r1.compute_s > r0.compute_s  # rank 1 attends to 8 keys, rank 0 to 4


def test_a_measured_rank_waits_inside_its_layers_only():
    events = [{"ph": "M", "pid": 1, "tid": 0, "name": "process_name", "args": {"name": "rank 0"}},
              {"ph": "X", "cat": "layer", "pid": 1, "tid": 0, "ts": 0, "dur": 5000, "args": {"layer": 0}},
              {"ph": "X", "cat": "wait", "pid": 1, "tid": 0, "ts": 1000, "dur": 2000, "args": {"layer": 0}},
              {"ph": "X", "cat": "wait", "pid": 1, "tid": 0, "ts": 6000, "dur": 9000, "args": {}},  # outside
              {"ph": "X", "cat": "send", "pid": 1, "tid": 1, "ts": 500, "dur": 100, "args": {"layer": 0}},
              {"ph": "X", "cat": "layer", "pid": 2, "tid": 0, "ts": 0, "dur": 4000, "args": {"layer": 0}}]
    assert measured_ranks(events) == [RankTimes(compute_s=pytest.approx(0.003), wait_s=pytest.approx(0.002)),
                                      RankTimes(compute_s=pytest.approx(0.004), wait_s=0.0)]


@pytest.mark.parametrize("sim_s, meas_s, agrees", [(0.105, 0.100, True), (0.115, 0.100, False),
                                                    (0.0008, 0.0, True), (0.0015, 0.0, False)])
def test_a_rank_agrees_within_ten_percent_or_a_millisecond(sim_s, meas_s, agrees):
    row = RankRow(None, 0, RankTimes(1.0, sim_s), RankTimes(1.0, meas_s), 5)
    assert row.agrees is agrees


@pytest.mark.parametrize("sim_s, waits, within", [(0.020, (0.010, 0.030, 0.025), True),
                                                 (0.008, (0.010, 0.030, 0.025), False),
                                                 (0.031, (0.010, 0.030, 0.025), False),
                                                 (0.020, (), False)])
def test_a_missing_rank_is_told_apart_from_its_rounds_spread(sim_s, waits, within):
    row = RankRow(None, 0, RankTimes(1.0, sim_s), RankTimes(1.0, 0.025), 3, waits)
    assert row.within_rounds is within


def test_compute_to_communication_ratio_is_compute_over_time_on_the_wire():
    nbytes = 4 * SPEC.kv_bytes_per_token_per_layer("fp32")
    result = simulate(_job("tsp", ClusterSpec.uniform("u", 2, nbytes, 0.0)))
    wire = sum(s.end_s - s.start_s for s in result.segments if s.kind == "transfer")
    assert wire == pytest.approx(4.0)  # 2 layers x 2 directions x 1 s
    assert comm_ratio(result) == pytest.approx(sum(r.busy_s for r in result.ranks) / 4.0)
    assert comm_ratio(simulate(_job("single", ClusterSpec.uniform("u", 1, 1e9, 0.0), gpus=1))) == float("inf")


def test_yaml_random_flows_and_validated_on(tmp_path):
    doc = {"models": ["tiny-llama"], "hardware": {"gpu": "h100-sxm", "dtype": "fp32"},
           "clusters": [{"name": "n", "kind": "uniform", "gpus": 2, "bandwidth_gb_per_s": 1,
                         "background": [{"link": [0, 1], "on_us": 200, "off_us": 300, "random_seed": 4}]}],
           "workload": {"contexts": [64], "gpus": [2], "schemes": ["tsp"]},
           "validated_on": {"scenario": "other.yaml", "clusters": ["a"]}}
    s = parse(doc, base_dir=str(tmp_path))
    assert s.clusters[0].background[0] == BackgroundFlow(src=0, dst=1, on_s=2e-4, off_s=3e-4, seed=4)
    assert s.validated_on.scenario == str(tmp_path / "other.yaml") and s.validated_on.clusters == ("a",)
    doc["clusters"][0]["background"] = [{"link": [0, 1], "random_seed": 4}]
    with pytest.raises(ScenarioError, match=r"clusters\[0\].background\[0\].random_seed: needs on_us and off_us"):
        parse(doc)


def test_a_front_door_names_a_cluster_its_companion_lacks(tmp_path, capsys):
    text = open(os.path.join(REPO, "scenarios", "uniform.yaml"), encoding="utf-8").read()
    bad = tmp_path / "uniform.yaml"
    bad.write_text(text.replace("clusters: [nvlink-300]", "clusters: [nvlink-3000]").replace(
        "scenario: validate-cluster.yaml", f"scenario: {os.path.join(REPO, 'scenarios', 'validate-cluster.yaml')}")
        .replace("tables/uniform.json", os.path.join(REPO, "scenarios", "tables", "uniform.json")))
    assert sim_main([str(bad), "--no-progress", "--set", "workload.contexts=[1024]"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "validated_on.clusters[0]: " in err and "no cluster 'nvlink-3000'" in err
