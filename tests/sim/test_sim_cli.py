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
        "links.csv", "ranks.csv", "report.json", "timeline_kvr-4_4gpu_256_tiny-falcon_split.png",
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
