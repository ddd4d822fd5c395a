"""The profile cost model (sim/cost/profiled.py) on synthetic profiles: exact at grid points,
interpolation between them, extrapolation counted, machine-speed normalisation, held-out report
(sim/validation/held_out.py); and scenarios that name a profile or measured results (sim/scenario.py)."""
import json

import pytest
import yaml

from sim.cost.profiled import ProfileCost, ProfileError
from sim.model import ModelSpec
from sim.scenario import ScenarioError, load
from sim.validation.held_out import held_out_errors, main

SPEC = ModelSpec.preset("tiny-llama")


def synthetic(probe_of=lambda i: None, speed_probe_s=None) -> dict:
    """Linear parts take 1 us per token plus 10 us; attention 1 ns per dense query-key product."""
    comps = {name: [] for name in ("embed", "pre_attention", "post_attention", "kv_copy", "attention", "head")}
    i = 0
    for t, held in ((8, False), (16, False), (24, True), (32, False)):
        for name in ("embed", "pre_attention", "post_attention", "kv_copy"):
            comps[name].append({"tokens": t, "held_out": held, "median_s": 1e-5 + 1e-6 * t,
                                "probe_s": probe_of(i)})
            i += 1
    for c in (8, 16, 32):
        for past in (0, 8, 32):
            comps["attention"].append({"queries": c, "keys": c + past, "held_out": False,
                                       "median_s": 1e-9 * c * (c + past), "probe_s": probe_of(i)})
            i += 1
    comps["attention"].append({"queries": 12, "keys": 30, "held_out": True, "median_s": 1e-9 * 12 * 30})
    comps["head"].append({"held_out": False, "median_s": 2e-5, "probe_s": probe_of(i)})
    return {"schema_version": 3, "model": SPEC.to_dict(), "dtype": "fp32", "device": "test", "device_type": "cpu",
            "speed_probe_s": speed_probe_s, "components": comps}


def test_exact_at_grid_points_linear_between_and_extrapolation_counted():
    cost = ProfileCost(synthetic())
    assert cost.pre_attention_s(16) == pytest.approx(1e-5 + 16e-6)
    assert cost.post_attention_s(20) == pytest.approx(1e-5 + 20e-6)  # between 16 and 32
    assert cost.attention_s(16, 24, 0) == pytest.approx(1e-9 * 16 * 24)
    assert cost.attention_s(12, 12, 0) == pytest.approx(1e-9 * 144)  # the square row, between grid points
    assert cost.attention_s(12, 30, 0) == pytest.approx(1e-9 * 360)  # bilinear in (log c, log past)
    assert not cost.extrapolated
    assert cost.embed_s(64) == pytest.approx(1e-5 + 64e-6)  # the end segment's line
    assert cost.attention_s(64, 200, 0) == pytest.approx(1e-9 * 64 * 200)  # y held at the edge
    assert cost.extrapolated == {"embed": 1, "attention": 1}
    assert cost.head_s() == 2e-5


def test_speed_probes_normalise_points_and_scaled_answers_for_another_speed():
    # Every other point was measured while the machine ran at half speed: its probe says so.
    doc = synthetic(probe_of=lambda i: 2.0 if i % 2 else 1.0, speed_probe_s=1.0)
    for name, entries in doc["components"].items():
        for e in entries:
            e["median_s"] *= e.get("probe_s") or 1.0
    cost = ProfileCost(doc)
    assert cost.pre_attention_s(16) == pytest.approx(1e-5 + 16e-6)
    assert cost.attention_s(32, 64, 0) == pytest.approx(1e-9 * 32 * 64)
    assert cost.scaled(3.0).attention_s(32, 64, 0) == pytest.approx(3e-9 * 32 * 64)
    assert cost.scaled(3.0).head_s() == pytest.approx(3 * cost.head_s())


def test_held_out_points_are_predicted_without_being_fitted(tmp_path, capsys):
    doc = synthetic()
    doc["components"]["pre_attention"][2]["median_s"] *= 1.5  # the held-out t=24 point: 50% off the line
    errors = {(name, point): (m, p) for name, point, m, p in held_out_errors(doc)}
    m, p = errors[("pre_attention", "t=24")]
    assert p == pytest.approx(1e-5 + 24e-6) and m == pytest.approx(1.5 * p)
    assert errors[("attention", "c=12 k=30")][1] == pytest.approx(360e-9)
    path = tmp_path / "p.json"
    doc.update(torch_version="x", timestamp_utc="now", repeat=3)
    path.write_text(json.dumps(doc))
    assert main([str(path)]) == 0
    assert "mean absolute error, pre_attention: 33.3% over 1 points" in capsys.readouterr().out


def test_a_profile_needs_both_attention_kinds():
    doc = synthetic()
    doc["components"]["attention"] = [e for e in doc["components"]["attention"] if e["queries"] == e["keys"]]
    with pytest.raises(ProfileError, match="needs attention with and without a past"):
        ProfileCost(doc)


def _scenario(tmp_path, **hardware):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "models": ["tiny-llama"], "hardware": hardware,
        "clusters": [{"name": "u", "kind": "uniform", "gpus": 2, "bandwidth_gb_per_s": 1}],
        "workload": {"contexts": [32], "gpus": [2], "schemes": ["tsp", "kvr-e"]},
        "measured": {"results": [str(tmp_path / "none" / "*.json")]}}))
    return path


def test_a_scenario_uses_its_profile_and_checks_it(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(synthetic()))
    s = load(_scenario(tmp_path, profile=str(prof), dtype="fp32"))
    job = next(s.jobs())
    assert isinstance(job.cost(), ProfileCost) and s.gpu.name == "profile: test"
    assert s.measured.files() == []
    with pytest.raises(ScenarioError, match=r"hardware.profile: was measured in fp32, but hardware.dtype is fp16"):
        load(_scenario(tmp_path, profile=str(prof)))
    other = synthetic()
    other["model"] = SPEC.replace(hidden_size=128, head_dim=32).to_dict()
    prof.write_text(json.dumps(other))
    with pytest.raises(ScenarioError, match=r"models\[0\]: has no profile of its shapes"):
        load(_scenario(tmp_path, profile=str(prof), dtype="fp32"))
    with pytest.raises(ScenarioError, match=r"hardware: needs `gpu` \(analytic costs\) or `profile`"):
        load(_scenario(tmp_path, dtype="fp32"))


def _with_layers(doc: dict, device_type: str, floor_s: float) -> dict:
    """``doc`` with whole-layer points: at the smallest chunk (8 tokens) the layer takes ``floor_s``."""
    layers = [{"tokens": 8, "keys": 8, "held_out": False, "median_s": floor_s},
              {"tokens": 8, "keys": 40, "held_out": False, "median_s": floor_s},
              {"tokens": 32, "keys": 32, "held_out": False, "median_s": 1.0}]
    return {**doc, "device_type": device_type, "components": {**doc["components"], "layer": layers}}


def test_gpu_profiles_floor_each_layer_at_the_host_rate_in_every_scheme():
    """A GPU profile's whole-layer time at its smallest chunk is a per-layer floor (the host issues a
    layer no faster): every scheme pads a cheaper layer to it, the kvr closed form agrees with SimPy,
    and CPU profiles have no floor."""
    import dataclasses

    from sim.cluster import ClusterSpec
    from sim.job import Job, SchemeSpec
    from sim.partition.chain import chain_ttft_s, exact_for
    from sim.simulate import simulate

    floor = 1e-3  # far above any layer's parts at these sizes (tens of microseconds)
    gpu = ProfileCost(_with_layers(synthetic(), "cuda", floor))
    assert gpu.layer_floor_s() == pytest.approx(floor)
    assert ProfileCost(_with_layers(synthetic(), "cpu", floor)).layer_floor_s() == 0.0
    assert gpu.scaled(2.0).layer_floor_s() == pytest.approx(2 * floor)
    # Schema 2: layers carry their host time; the floor is the host time, apart with and without a past.
    timed = _with_layers(synthetic(), "cuda", floor)
    timed["components"]["layer"][0]["host_s"] = floor / 2
    timed["components"]["layer"][1]["host_s"] = floor / 4
    assert ProfileCost(timed).layer_floor_s(past=False) == pytest.approx(floor / 2)
    assert ProfileCost(timed).layer_floor_s(past=True) == pytest.approx(floor / 4)

    cluster = ClusterSpec.uniform("u", 4, 100e9, 1e-6)
    base = Job(model=SPEC, gpu=None, dtype="fp32", cluster=cluster, scheme=SchemeSpec(name="single", kind="single"),
               context=32, num_gpus=1, cost_model=gpu)
    layers = SPEC.num_layers
    for kind, n in (("single", 1), ("tsp", 4), ("kvr", 4)):
        job = dataclasses.replace(base, scheme=SchemeSpec(name=kind, kind=kind), num_gpus=n)
        result = simulate(job)
        hosts = [s for s in result.segments if s.op == "host"]
        assert len(hosts) == n * layers, kind
        for rank in result.ranks:  # every layer costs exactly the floor: parts plus the host pad
            assert rank.busy_s == pytest.approx(layers * floor + sum(
                s.end_s - s.start_s for s in result.segments if s.rank == rank.rank and s.layer is None))
        if kind == "kvr":
            gpus = list(range(n))
            assert exact_for(job, gpus)
            assert chain_ttft_s(job, result.chunks, gpus) == pytest.approx(result.ttft_s, rel=1e-9)
    cpu_job = dataclasses.replace(base, cost_model=ProfileCost(_with_layers(synthetic(), "cpu", floor)))
    assert not [s for s in simulate(cpu_job).segments if s.op == "host"]


def test_forward_points_make_a_floor_by_chunk_and_past_and_calibrate_layers_to_whole_forwards():
    """Schema 3: the floor is the host's time per layer of whole forwards (``host_s``), interpolated
    in tokens between the points with and without a past, held at the ends, and preferred to the
    layers'. The forwards with a past calibrate every layer (``forward_factor``): a model fitted on
    forwards 1.25x slower than its parts predicts exactly those forwards; the held-out ones check it."""
    from sim.cost import layer_extra_s, layer_extras

    doc = _with_layers(synthetic(), "cuda", 1e-3)
    fwd = [(8, 8, 2e-4), (32, 32, 4e-4), (8, 40, 6e-4), (32, 64, 1e-3)]
    doc["components"]["forward"] = [{"tokens": t, "keys": k, "held_out": k == t, "median_s": 1.0, "host_s": h}
                                    for t, k, h in fwd]
    cost = ProfileCost(doc, calibrated=False)
    assert cost.forward_factor(8) == 1.0
    assert cost.layer_floor_s(8, past=False) == pytest.approx(2e-4)
    assert cost.layer_floor_s(20, past=False) == pytest.approx(3e-4)
    assert cost.layer_floor_s(20, past=True) == pytest.approx(8e-4)
    assert cost.layer_floor_s(1, past=True) == pytest.approx(6e-4)       # held below the grid
    assert cost.layer_floor_s(1000, past=False) == pytest.approx(4e-4)   # and above it
    assert cost.layer_floor_s(past=True) == pytest.approx(6e-4)          # no chunk: the smallest
    assert cost.scaled(3.0).layer_floor_s(20, past=False) == pytest.approx(9e-4)
    assert layer_extra_s(cost, 1e-4, tokens=20, past=True) == pytest.approx(7e-4)  # padded to its own floor
    assert layer_extra_s(cost, 5e-3, tokens=20, past=True) == 0.0

    for e in doc["components"]["forward"]:  # forwards 1.25x the uncalibrated model's layers
        t, k = e["tokens"], e["keys"]
        e["median_s"] = cost.embed_s(t) + 1.25 * (cost.forward_s(t, k) - cost.embed_s(t))
    calibrated = ProfileCost(doc)
    for t in (1, 8, 20, 32, 1000):
        assert calibrated.forward_factor(t) == pytest.approx(1.25)
    for e in doc["components"]["forward"]:
        assert calibrated.forward_s(e["tokens"], e["keys"]) == pytest.approx(e["median_s"])
    pieces = dict(layer_extras(calibrated, 1e-4, tokens=20, past=True))
    assert pieces["host"] == pytest.approx(7e-4) and pieces["calibration"] == pytest.approx(0.25 * 8e-4)
    errors = {(name, point): (m, p) for name, point, m, p in held_out_errors(doc)}
    m, p = errors[("forward, calibrated", "t=32 k=32")]
    assert p == pytest.approx(m)
    m, p = errors[("forward, uncalibrated", "t=32 k=32")]
    assert p < m


def test_floor_with_a_past_steps_at_the_flash_threshold_and_follows_the_host_probe():
    """A profile that records ``flash_max_chunk`` splits the floor with a past there: a chunk just
    above it (the cuDNN split, two calls and a merge) takes the larger chunks' floor, not a blend with
    the flash call's below; without the key the floor interpolates across. ``host_scaled`` scales the
    floor (only the floor) by a host probe over the profile's own smallest forward without a past."""
    doc = _with_layers(synthetic(), "cuda", 1e-3)
    fwd = [(8, 8, 2e-4), (16, 16, 2e-4), (32, 32, 3e-4), (8, 40, 3e-4), (16, 48, 3e-4), (32, 64, 9e-4)]
    doc["components"]["forward"] = [{"tokens": t, "keys": k, "held_out": k == t, "median_s": 1.0, "host_s": h}
                                    for t, k, h in fwd]
    blended = ProfileCost(doc, calibrated=False)
    assert blended.layer_floor_s(20, past=True) == pytest.approx(3e-4 + 4 / 16 * 6e-4)
    doc["flash_max_chunk"] = 16
    split = ProfileCost(doc, calibrated=False)
    assert split.layer_floor_s(16, past=True) == pytest.approx(3e-4)   # flash: its own points
    assert split.layer_floor_s(17, past=True) == pytest.approx(9e-4)   # above: held at 32's
    assert split.layer_floor_s(17, past=False) == pytest.approx(2e-4 + 1 / 16 * 1e-4)  # no past: no step
    assert split.host_probe_s() == pytest.approx(2e-4)                 # the smallest forward, no past
    fast = split.host_scaled(1e-4)
    assert fast.layer_floor_s(17, past=True) == pytest.approx(4.5e-4)
    assert fast.layer_floor_s(8, past=False) == pytest.approx(1e-4)
    assert fast.pre_attention_s(16) == split.pre_attention_s(16)       # the GPU's parts unchanged
    assert fast.scaled(2.0).layer_floor_s(8, past=False) == pytest.approx(2e-4)
    assert split.host_scaled(None) is split
    del doc["components"]["forward"]
    assert ProfileCost(doc).host_scaled(1e-4).layer_floor_s() == pytest.approx(1e-3)  # no forwards: as is


def test_replays_with_a_host_probe_are_simulated_at_its_pace_and_reported_both_ways(tmp_path):
    """``sim.validation.replay``: a replayed rank with a ``host_probe_s`` is simulated with the profile's floor
    scaled to it (here: a host twice as slow doubles a host-bound rank), and the table and MAPE lines
    also give the simulation without the probe."""
    from sim.validation import replay

    doc = _with_layers(synthetic(), "cuda", 1e-3)
    doc["components"]["forward"] = [{"tokens": t, "keys": k, "held_out": False, "median_s": 1e-9, "host_s": 1e-3}
                                    for t, k in ((8, 8), (32, 32), (8, 40), (32, 64))]  # no calibration
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(doc))
    scenario = load(_scenario(tmp_path, profile=str(prof), dtype="fp32"))
    (job, chunks), = [(j, c) for j, c in replay.replay_jobs(scenario) if j.scheme.name == "kvr-e"]
    plain = replay.simulated_busy_s(job, chunks, None)
    entries = [{"model": job.model.name, "scheme": "kvr-e", "num_gpus": 2, "context": 32, "chunks": list(chunks),
                "rank": r, "median_s": plain[r], "host_probe_s": 2e-3 if r else None} for r in range(2)]
    rows = replay.compare(scenario, entries)
    assert rows[0].unadjusted_s is None and rows[0].error == pytest.approx(0.0)
    layers = SPEC.num_layers
    assert rows[1].simulated_s == pytest.approx(plain[1] + layers * 1e-3, rel=0.05)  # every layer at 2 ms
    assert rows[1].unadjusted_s == pytest.approx(plain[1])
    assert replay.mape(rows, unadjusted=True) == pytest.approx(0.0) and replay.mape(rows) > 0.3
    table = replay.text(rows)
    assert "(without the host probe: 0.0%)" in table and "unadj." in table


def test_calibrated_layers_agree_between_simpy_the_closed_form_chain_and_the_solver():
    """The calibration piece is part of every layer wherever layers are costed: the SimPy schemes, the
    kvr closed form (``chain_ttft_s``) and the partition solver's per-layer compute."""
    import dataclasses

    from sim.cluster import ClusterSpec
    from sim.job import Job, SchemeSpec
    from sim.partition.chain import chain_ttft_s, exact_for
    from sim.partition.search import layer_compute_s
    from sim.simulate import simulate

    doc = _with_layers(synthetic(), "cuda", 1e-3)
    factors = {8: 1.5, 32: 1.1}
    doc["components"]["forward"] = [{"tokens": t, "keys": t + 16, "held_out": False, "host_s": 1e-5,
                                     "median_s": 1.0} for t in factors]
    raw = ProfileCost(doc, calibrated=False)  # the host floor of these forwards, no calibration
    for e in doc["components"]["forward"]:
        t = e["tokens"]
        e["median_s"] = raw.embed_s(t) + factors[t] * (raw.forward_s(t, t + 16) - raw.embed_s(t))
    cost = ProfileCost(doc)
    assert cost.forward_factor(8) == pytest.approx(1.5) and cost.forward_factor(32) == pytest.approx(1.1)
    job = Job(model=SPEC, gpu=None, dtype="fp32", cluster=ClusterSpec.uniform("u", 4, 100e9, 1e-6),
              scheme=SchemeSpec(name="kvr", kind="kvr"), context=48, num_gpus=4, cost_model=cost)
    result = simulate(job)
    assert [s for s in result.segments if s.op == "calibration"]
    assert exact_for(job, list(range(4)))
    assert chain_ttft_s(job, result.chunks, list(range(4))) == pytest.approx(result.ttft_s, rel=1e-9)
    # the solver's layer of rank 1 is the SimPy layer: every compute segment of rank 1, layer 0
    c0, c1 = result.chunks[:2]
    simpy_layer = sum(s.end_s - s.start_s for s in result.segments
                      if s.rank == 1 and s.layer == 0 and s.kind == "compute")
    assert layer_compute_s(cost, 1, c1, c0) == pytest.approx(simpy_layer, rel=1e-9)
    uncalibrated = dataclasses.replace(job, cost_model=ProfileCost(doc, calibrated=False))
    assert simulate(uncalibrated).ttft_s < result.ttft_s


def test_the_workload_bridge_adds_the_workload_probe_at_the_profiles_speed(tmp_path, capsys):
    """``reference.measure.workload_bridge`` re-times a CPU profile's layer points, takes the workload
    probe between them and writes the probe at the profile's speed into the profile (which the
    simulator then reads); bad input is one line and exit 2, the file untouched."""
    from reference.measure.profile import main as profile_main
    from reference.measure.workload_bridge import main as bridge_main

    path = tmp_path / "p.json"
    assert profile_main(["--model", "tiny-llama", "--device", "cpu", "--dtype", "fp32", "--grid", "small",
                         "--repeat", "1", "--warmup", "0", "--out", str(path)]) == 0
    assert bridge_main([str(path), "--repeat", "1"]) == 0
    doc = json.loads(path.read_text())
    bridge = doc["workload_probe_bridge"]
    assert doc["workload_probe_s"] == pytest.approx(bridge["measured_s"] / bridge["layer_ratio"])
    assert len(bridge["layer_ratios"]) == len(doc["components"]["layer"]) and bridge["layer_ratio"] > 0
    assert ProfileCost.load(path).profile["workload_probe_s"] == doc["workload_probe_s"]  # the schema takes it

    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({**doc, "device_type": "cuda", "speed_probe_s": None}))
    before = gpu.read_text()
    capsys.readouterr()
    assert bridge_main([str(gpu)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "for CPU profiles" in err and gpu.read_text() == before
    assert bridge_main([str(tmp_path / "missing.json")]) == 2


def test_a_cpu_profile_is_extended_below_its_grid_with_add_to(tmp_path, capsys, monkeypatch):
    """``--add-to`` measures a grid's points and writes them merged into an existing profile: the
    base's points, reference speed and head kept, the new points fitted (no longer extrapolated), the
    addition recorded under ``extensions``; a grid that shares points with the base, or flags that
    measure another dtype, are one line and exit 2 before anything is measured, no file written."""
    from reference.measure import profile as prof

    base = tmp_path / "base.json"
    common = ["--model", "tiny-llama", "--device", "cpu", "--repeat", "1", "--warmup", "0"]
    assert prof.main([*common, "--dtype", "fp32", "--grid", "small", "--out", str(base)]) == 0
    before = ProfileCost.load(base)
    before.pre_attention_s(4)
    assert before.extrapolated["pre_attention"] == 1  # below the small grid's 8 tokens

    below = {"tokens": [4], "tokens_held_out": [], "queries": [4], "past": [0, 16, 64], "attention_held_out": []}
    monkeypatch.setitem(prof.GRIDS, "below", below)
    out = tmp_path / "extended.json"
    assert prof.main([*common, "--dtype", "fp32", "--grid", "below", "--add-to", str(base), "--out", str(out)]) == 0
    doc, base_doc = json.loads(out.read_text()), json.loads(base.read_text())
    comps = doc["components"]
    assert [e["tokens"] for e in comps["pre_attention"]] == [e["tokens"] for e in base_doc["components"]["pre_attention"]] + [4]
    assert {(e["queries"], e["keys"]) for e in comps["attention"]} >= {(4, 4), (4, 20), (4, 68)}
    assert comps["head"] == base_doc["components"]["head"]
    assert doc["speed_probe_s"] == base_doc["speed_probe_s"] and doc["timestamp_utc"] == base_doc["timestamp_utc"]
    assert doc["grid"]["tokens"] == [4, 8, 16, 32, 64]
    ext, = doc["extensions"]
    assert ext["grid_name"] == "below" and ext["grid"] == below and ext["speed_probe_s"] > 0
    after = ProfileCost.load(out)  # the schema takes it and the attention grid is still rectangular
    new = next(e for e in comps["pre_attention"] if e["tokens"] == 4)
    assert after.pre_attention_s(4) == pytest.approx(new["median_s"] * doc["speed_probe_s"] / new["probe_s"])
    assert not after.extrapolated

    for flags, words in ((["--dtype", "fp32", "--grid", "small"], "measures points it already has"),
                         (["--dtype", "fp16", "--grid", "below"], "its dtype is 'fp32'")):
        capsys.readouterr()
        bad = tmp_path / "bad.json"
        assert prof.main([*common, *flags, "--add-to", str(base), "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and not bad.exists()
