"""The command line: a good run writes the report files, plots and timelines, the same twice; the
docs show the real help; the simulator runs without torch. Bad input: test_bad_input.py."""
import json
import os
import subprocess
import sys

import yaml


from clitools import ROOT, edit, run_cli


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
        "links.csv", "ranks.csv", "report.html", "report.json", "timeline_kvr-4_4gpu_256_tiny-falcon_split.png",
        "timeline_kvr-4_4gpu_256_tiny-falcon_split.trace.json", "timeline_tsp_4gpu_256_tiny-falcon_fast.png",
        "timeline_tsp_4gpu_256_tiny-falcon_fast.trace.json", "ttft.csv",
        "ttft_tiny-falcon_fast.png", "ttft_tiny-falcon_split.png",
        "winners_tiny-falcon_fast.png", "winners_tiny-falcon_split.png"]
    report = json.loads(files["report.json"])
    # 2 clusters x (single at 2 contexts + tsp, kvr-e at 2 GPU counts x 2 contexts + kvr-4 at 1)
    assert len(report["results"]) == 2 * (2 + 4 + 4 + 1)
    assert files["ttft.csv"].decode().splitlines()[0] == (
        "model,cluster,scheme,gpus,context,ttft_s,speedup_vs_tsp,chunks,fits,memory_need_bytes")
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


def test_set_overrides_a_field_and_is_validated_like_the_file(tmp_path):
    proc = run_cli(tmp_path, edit(lambda d: None), "--set", "workload.contexts=[128]", "--set",
                   "clusters[0].bandwidth_gb_per_s=10", "--set", "workload.schemes=[single, tsp, kvr-e]")
    assert proc.returncode == 0, proc.stderr
    heads = [line.split() for line in proc.stdout.splitlines() if line.startswith("scheme ")]
    assert heads and all(h[2:] == ["128"] for h in heads)
    for args, message in [
        (["--set", "workload.contexts=[12.5]"], "with --set: workload.contexts[0]: must be an integer, got 12.5"),
        (["--set", "clusters[5].gpus=2"], "error: --set clusters[5].gpus=2: clusters[5] does not exist (clusters is a list of 2)"),
        (["--set", "workload.colour=red"], "with --set: workload.colour: unknown key"),
        (["--set", "workload"], "error: --set workload: must be KEY.PATH=VALUE"),
    ]:
        bad = run_cli(tmp_path, edit(lambda d: None), *args)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and message in bad.stderr, bad.stderr


def test_every_installed_command_answers_its_help():
    """``[project.scripts]``: each command is on the PATH of the environment that installed the
    project, and its --help exits 0."""
    import shutil
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    bindir = os.path.dirname(sys.executable)
    missing = [name for name in scripts if not shutil.which(name, path=bindir)]
    assert missing == [], f"not installed in {bindir} (pip install -e .)"
    for name in scripts:
        proc = subprocess.run([os.path.join(bindir, name), "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout.lower(), (name, proc.stderr[-500:])


def test_a_sweep_on_two_processes_gives_the_same_report(tmp_path):
    one = run_cli(tmp_path, edit(lambda d: None), "--jobs", "1")
    two = run_cli(tmp_path, edit(lambda d: None), "--jobs", "2")
    assert one.returncode == two.returncode == 0 and one.stdout == two.stdout
    bad = run_cli(tmp_path, edit(lambda d: None), "--jobs", "0")
    assert bad.returncode == 2 and bad.stderr == "error: --jobs: must be >= 1, got 0\n"
