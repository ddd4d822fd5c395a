"""``reference.launch --trace``: a measured prefill's Chrome trace, and ``python -m sim --timeline``
drawing it beside the simulated one (docs/reference.md "Trace", docs/simulator.md)."""
import json
import sys

import yaml

from clitools import TORCHRUN, run
from sim.schemas import validate


def test_a_traced_kvr_run_is_drawn_beside_its_simulation(tmp_path):
    trace, results, out = tmp_path / "t.json", tmp_path / "r.json", tmp_path / "o"
    proc = run([*TORCHRUN, "--nproc-per-node", "2", "-m", "reference.launch", "--model", "tiny-llama-gqa",
                "--scheme", "kvr", "--context", "24", "--repeat", "1", "--link", "cluster=loop", "--timeout", "30",
                "--trace", str(trace), "--out", str(results)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(results.read_text())["trace"] == "t.json"  # relative to the results' folder
    doc = json.loads(trace.read_text())
    validate(doc, "trace", str(trace))  # the shipped schema of the file the halves exchange
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert list(names.values())[1:] == ["rank 0", "rank 1"]
    spans = [e for e in events if e["ph"] == "X"]
    for pid in (1, 2):  # a span per layer (tiny-llama-gqa has 2) on each rank, in time order
        mine = [e for e in spans if e["pid"] == pid]
        assert [e["name"] for e in mine if e["cat"] == "layer"] == ["layer L0", "layer L1"]
        assert [e["ts"] for e in mine] == sorted(e["ts"] for e in mine) and all(e["dur"] >= 0 for e in mine)
    assert [(e["name"], e["args"]["layer"]) for e in spans if e["pid"] == 2 and e["cat"] == "wait"] == [
        ("recv", 0), ("recv", 1)]
    sends = [e for e in spans if e["cat"] == "send"]
    assert [(e["pid"], e["args"]["peer"], e["args"]["layer"]) for e in sends] == [(1, 1, 0), (1, 1, 1)]
    assert all(e["args"]["bytes"] > 0 for e in sends)
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert sorted(starts) == sorted(ends) == [0, 1]
    assert all((starts[i]["pid"], ends[i]["pid"]) == (1, 2) and starts[i]["ts"] < ends[i]["ts"] for i in starts)

    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "traced", "models": ["tiny-llama-gqa"], "hardware": {"gpu": "h100-sxm", "dtype": "fp32"},
        "clusters": [{"name": "loop", "kind": "uniform", "gpus": 2, "bandwidth_gb_per_s": 10, "latency_us": 5}],
        "workload": {"contexts": [24], "gpus": [2], "schemes": ["kvr-e"]},
        "measured": {"results": [str(results)]}}))
    proc = run([sys.executable, "-m", "sim", str(scenario), "--no-progress", "--jobs", "1", "--out", str(out),
                "--timeline", "kvr-e,2,24"])
    assert proc.returncode == 0, proc.stderr
    stem = out / "timeline_kvr-e_2gpu_24_tiny-llama-gqa_loop"
    merged = json.loads(stem.with_suffix(".trace.json").read_text())["traceEvents"]
    assert [e["args"]["name"] for e in merged if e["name"] == "process_name"] == [
        "kvr-e: tiny-llama-gqa, C=24, 2 GPUs on loop", "simulated rank 0", "simulated rank 1",
        "measured kvr: tiny-llama-gqa, C=24, 2 ranks", "measured rank 0", "measured rank 1"]
    assert len([e for e in merged if e["ph"] in "sf"]) == 4
    assert stem.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

def test_a_timeline_without_a_measured_trace_is_the_simulation_alone(tmp_path):
    scenario, out = tmp_path / "s.yaml", tmp_path / "o"
    scenario.write_text(yaml.safe_dump({
        "models": ["tiny-llama-gqa"], "hardware": {"gpu": "h100-sxm", "dtype": "fp32"},
        "clusters": [{"name": "loop", "kind": "uniform", "gpus": 2, "bandwidth_gb_per_s": 10}],
        "workload": {"contexts": [24], "gpus": [2], "schemes": ["kvr-e"]}}))
    proc = run([sys.executable, "-m", "sim", str(scenario), "--no-progress", "--jobs", "1", "--out", str(out),
                "--timeline", "kvr-e,2,24"])
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((out / "timeline_kvr-e_2gpu_24_tiny-llama-gqa_loop.trace.json").read_text())["traceEvents"]
    assert [e["args"]["name"] for e in merged if e["name"] == "process_name"][1:] == ["rank 0", "rank 1"]
