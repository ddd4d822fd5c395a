"""The command line: every validation error is one line on stderr, exit code 2, no traceback and no
output files; a good run writes the report files, plots and timelines."""
import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from sim.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = {
    "name": "small",
    "models": ["tiny-llama", "tiny-falcon"],
    "hardware": {"gpu": "h100-sxm", "dtype": "bf16"},
    "clusters": [
        {"name": "fast", "kind": "uniform", "gpus": 4, "bandwidth_gb_per_s": 300, "latency_us": 5},
        {"name": "split", "kind": "nonuniform", "gpus": 4, "switches": ["sw"],
         "links": [{"mesh": [0, 1], "bandwidth_gb_per_s": 300}, {"mesh": [2, 3], "bandwidth_gb_per_s": 300},
                   {"ends": [1, "sw"], "bandwidth_gb_per_s": 10, "latency_us": 20},
                   {"ends": [2, "sw"], "bandwidth_gb_per_s": 10, "latency_us": 20}],
         "background": [{"link": [1, "sw"], "on_us": 30, "off_us": 70}]},
    ],
    "workload": {"contexts": [64, 256], "gpus": [2, 4],
                 "schemes": ["single", "tsp", "kvr-e", {"name": "kvr-4", "kind": "kvr",
                                                       "partition": {256: [90, 70, 56, 40]}}]},
}


def run_cli(tmp_path, doc, *args):
    path = tmp_path / "s.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return subprocess.run([sys.executable, "-m", "sim", str(path), "--no-progress", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def edit(change):
    doc = copy.deepcopy(GOOD)
    change(doc)
    return doc


CASES = [
    ("unknown top-level key", lambda d: d.update(colour="red"), "colour: unknown key"),
    ("unknown cluster key", lambda d: d["clusters"][0].update(speed=3), "clusters[0].speed: unknown key"),
    ("key of another kind", lambda d: d["clusters"][0].update(switches=["sw"]),
     "clusters[0].switches: is not a field of a uniform cluster, got ['sw']"),
    ("wrong type", lambda d: d["workload"].update(contexts="long"), "workload.contexts: must be a list, got 'long'"),
    ("non-integer context", lambda d: d["workload"].update(contexts=[64.5]),
     "workload.contexts[0]: must be an integer, got 64.5"),
    ("zero bandwidth", lambda d: d["clusters"][0].update(bandwidth_gb_per_s=0),
     "clusters[0].bandwidth_gb_per_s: must be > 0, got 0"),
    ("negative link bandwidth", lambda d: d["clusters"][1]["links"][2].update(bandwidth_gb_per_s=-10),
     "clusters[1].links[2].bandwidth_gb_per_s: must be > 0, got -10"),
    ("negative latency", lambda d: d["clusters"][0].update(latency_us=-1),
     "clusters[0].latency_us: must be >= 0, got -1"),
    ("unreachable GPUs", lambda d: d["clusters"][1]["links"].pop(),
     "clusters[1]: cluster 'split': GPU 2 cannot be reached from GPU 0"),
    ("partition sum", lambda d: d["workload"]["schemes"][3].update(partition={256: [90, 70, 56, 41]}),
     "workload.schemes[3].partition.256: chunks must be >= 1 and sum to the context, got [90, 70, 56, 41]"),
    ("zero chunk", lambda d: d["workload"]["schemes"][3].update(partition={256: [100, 100, 56, 0]}),
     "workload.schemes[3].partition.256: chunks must be >= 1 and sum to the context, got [100, 100, 56, 0]"),
    ("zero chunk from fractions", lambda d: d["workload"]["schemes"][3].update(partition=[0.97, 0.01, 0.01, 0.01]),
     "workload.schemes[3].partition: every chunk must get >= 1 token at every context"),
    ("fractions sum", lambda d: d["workload"]["schemes"][3].update(partition=[0.5, 0.2, 0.2]),
     "workload.schemes[3].partition: fractions must sum to 1, got [0.5, 0.2, 0.2]"),
    ("partition size", lambda d: d["workload"]["schemes"][3].update(partition=[0.5, 0.3, 0.2]),
     "workload.schemes[3].partition: must have as many fractions as a GPU count in workload.gpus [2, 4]"),
    ("more GPUs than the cluster", lambda d: d["workload"].update(gpus=[2, 8]),
     "workload.gpus[1]: must not exceed the 4 GPUs of cluster 'fast', got 8"),
    ("context below GPU count", lambda d: d["workload"].update(contexts=[3, 256]),
     "workload.contexts[0]: must be at least the largest GPU count (4) so no chunk is empty, got 3"),
    ("repeated context", lambda d: d["workload"].update(contexts=[64, 256, 64]),
     "workload.contexts[2]: must not repeat an earlier value, got 64"),
    ("unknown model", lambda d: d.update(models=["gpt-9"]), "models[0]: must be a model preset or a config.json"),
    ("unknown GPU", lambda d: d["hardware"].update(gpu="tpu"), "hardware.gpu: must be one of"),
    ("unknown scheme", lambda d: d["workload"].update(schemes=["tsp", "ring"]),
     "workload.schemes[1]: must be one of ['single', 'tsp', 'tsp-masked', 'kvr-e', 'kvr-s'] or a mapping, got 'ring'"),
    ("missing key", lambda d: d.pop("workload"), "(top level): missing required key 'workload'"),
    ("bad link end", lambda d: d["clusters"][1]["links"][0].update(mesh=[0, 9]),
     "clusters[1].links[0].mesh[1]: must be a GPU index 0..3 or a listed switch, got 9"),
    ("efficiency above one", lambda d: d["hardware"].update(matmul_efficiency=1.2),
     "matmul_efficiency=1.2 must be in (0, 1]"),
]


@pytest.mark.parametrize("name,change,message", CASES, ids=[c[0] for c in CASES])
def test_validation_error_is_one_line_exit_2_no_files(tmp_path, capsys, name, change, message):
    """In-process through ``main`` (the same code path as ``python -m sim``, without the start-up cost;
    the subprocess tests below cover the real entry point)."""
    out = tmp_path / "out"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(edit(change)))
    assert main([str(path), "--no-progress", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ")
    assert message in lines[0]


@pytest.mark.parametrize("text,message", [
    ("models: [llama-2-7b\n", "not valid YAML"),
    ("name: x\nhardware: {gpu: tpu}\nmodels: [tiny-llama]\nclusters: []\nworkload: {}\n",
     "clusters: must not be empty, got []"),
    ("- 1\n- 2\n", "(top level): must be a mapping, got [1, 2]"),
])
def test_unreadable_yaml(tmp_path, text, message):
    proc = run_cli(tmp_path, text)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr


def test_missing_file(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sim", str(tmp_path / "none.yaml")], cwd=ROOT,
                          capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr.count("\n")) == (2, "", 1)
    assert proc.stderr.startswith("error: ") and "cannot read the scenario" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--timeline", "kvr-e,4"], "--timeline: must be SCHEME,GPUS,CONTEXT[,MODEL[,CLUSTER]], got 'kvr-e,4'"),
    (["--timeline", "ring,4,64"], "--timeline: scheme must be one of the scenario's"),
    (["--timeline", "kvr-e,5,64"], "--timeline: GPUS must be 1..4 and CONTEXT an integer >= GPUS, got '5','64'"),
    (["--timeline", "kvr-4,2,256"], "--timeline: scheme 'kvr-4' has no partition for 2 GPUs at context 256"),
    (["--timeline", "tsp,2,64,gpt-9"], "--timeline: model must be one of ['tiny-llama', 'tiny-falcon'], got 'gpt-9'"),
])
def test_bad_timeline(tmp_path, capsys, args, message):
    path, out = tmp_path / "s.yaml", tmp_path / "o"
    path.write_text(yaml.safe_dump(GOOD))
    assert main([str(path), "--out", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    assert captured.err.count("\n") == 1 and message in captured.err


def test_timeline_needs_out(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    assert main([str(path), "--timeline", "kvr-e,4,64"]) == 2
    assert capsys.readouterr().err == "error: --timeline: needs --out DIR, got no --out\n"


def test_a_run_writes_every_output_and_is_deterministic(tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}"
        proc = run_cli(tmp_path, edit(lambda d: d.update(models=["tiny-falcon"])), "--out", str(out),
                       "--timeline", "kvr-4,4,256,tiny-falcon,split", "--timeline", "tsp,4,256")
        assert proc.returncode == 0, proc.stderr
        outs.append((proc.stdout, {p: (out / p).read_bytes() for p in sorted(os.listdir(out))}))
    assert outs[0] == outs[1]
    stdout, files = outs[0]
    assert sorted(files) == [
        "links.csv", "ranks.csv", "report.json", "timeline_kvr-4_4gpu_256_tiny-falcon_split.png",
        "timeline_kvr-4_4gpu_256_tiny-falcon_split.trace.json", "timeline_tsp_4gpu_256_tiny-falcon_fast.png",
        "timeline_tsp_4gpu_256_tiny-falcon_fast.trace.json", "ttft.csv",
        "ttft_tiny-falcon_fast.png", "ttft_tiny-falcon_split.png"]
    report = json.loads(files["report.json"])
    # 2 clusters x (single at 2 contexts + tsp, kvr-e at 2 GPU counts x 2 contexts + kvr-4 at 1)
    assert len(report["results"]) == 2 * (2 + 4 + 4 + 1)
    assert files["ttft.csv"].decode().splitlines()[0] == "model,cluster,scheme,gpus,context,ttft_s,speedup_vs_tsp,chunks"
    trace = json.loads(files["timeline_tsp_4gpu_256_tiny-falcon_fast.trace.json"])
    assert {e["ph"] for e in trace["traceEvents"]} == {"M", "X", "i"}
    assert "== tiny-falcon on split ==" in stdout


def test_docs_show_the_real_help(monkeypatch):
    import re

    from sim.cli import parser

    monkeypatch.setenv("COLUMNS", "80")
    with open(os.path.join(ROOT, "docs", "simulator.md"), encoding="utf-8") as f:
        documented = re.search(r"```\n(usage: python -m sim .*?)```", f.read(), re.S).group(1)
    assert parser().format_help() == documented


def test_the_simulator_runs_without_torch(tmp_path):
    """``pip install -e .`` alone must run it: block torch, run the CLI, check no torch module loaded."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(edit(lambda d: d.update(models=["tiny-falcon"]))))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sim.cli import main\n"
            f"rc = main([{str(path)!r}, '--no-progress', '--out', {str(tmp_path / 'o')!r}])\n"
            "assert rc == 0 and not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
