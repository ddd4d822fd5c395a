"""Bad input, every kind a user has met: one line naming the file or flag and what is wrong, exit code
2, no traceback, no hang, and no partial or truncated output file (the old outputs or none).

The simulator (``python -m sim``, ``python -m sim.partition``) and the launcher
(``reference.launch``). Read-only folders and full disks are real: as root, small tmpfs mounts made
and removed by the tests (a read-only one, a full one); skipped where mounting is not permitted.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from sim.cli import main
from clitools import GOOD, LAUNCH, ROOT, TORCHRUN, edit, run, run_cli


def one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("reference.launch: error: "), proc.stderr
    return lines[0]


def sim_error(proc, *, printed: bool = False) -> str:
    """The simulator's one error line (no traceback; no stdout unless the report was ``printed``
    before the failure)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and (proc.stdout != "") == printed, proc.stderr
    return lines[0]


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A tmpfs mounted at ``path`` with ``options`` (e.g. "ro" or "size=128k"), unmounted after."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


# ----- the simulator: scenario files ------------------------------------------------------------------
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
    ("unknown KV chain", lambda d: d["hardware"].update(kv_chain="paged"),
     "hardware.kv_chain: must be one of ['resident', 'copy'], got 'paged'"),
    ("unknown scheme", lambda d: d["workload"].update(schemes=["tsp", "warp"]),
     "workload.schemes[1]: must be one of ['single', 'tsp', 'tsp-masked', 'kvr-e', 'kvr-s', 'ring', 'ring-zigzag', "
     "'ulysses', 'tp', 'pipeline', 'pipeline-et'] or a mapping, got 'warp'"),
    ("missing key", lambda d: d.pop("workload"), "(top level): missing required key 'workload'"),
    ("bad link end", lambda d: d["clusters"][1]["links"][0].update(mesh=[0, 9]),
     "clusters[1].links[0].mesh[1]: must be a GPU index 0..3 or a listed switch, got 9"),
    ("efficiency above one", lambda d: d["hardware"].update(matmul_efficiency=1.2),
     "matmul_efficiency=1.2 must be in (0, 1]"),
    ("noise without seeds", lambda d: d["clusters"][0].update(noise={"flows": 2}),
     "clusters[0].noise: missing required key 'seeds'"),
    ("noise rate jitter above one", lambda d: d["clusters"][0].update(noise={"seeds": 4, "rate_jitter": 2}),
     "clusters[0].noise.rate_jitter: must be in [0, 1], got 2"),
    ("noise on a missing link", lambda d: d["clusters"][1].update(noise={"seeds": 4, "links": [[0, 3]]}),
     "clusters[1]: cluster 'split': noise on 0->3, which is not a link"),
    ("noise links neither used nor pairs", lambda d: d["clusters"][0].update(noise={"seeds": 4, "links": "some"}),
     "clusters[0].noise.links: must be 'used' or a list of [from, to] pairs, got 'some'"),
    ("host-staged switch size", lambda d: d["clusters"].__setitem__(0, {"name": "fast", "kind": "host-staged",
                                                                        "gpus": 4, "gpus_per_switch": 3}),
     "clusters[0].gpus_per_switch: must divide gpus=4, got 3"),
    ("host-staged sockets", lambda d: d["clusters"].__setitem__(0, {"name": "fast", "kind": "host-staged",
                                                                    "gpus": 4, "sockets": 3}),
     "clusters[0].sockets: must be at most the 2 PCIe switches, got 3"),
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




@pytest.mark.parametrize("blob,message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a UTF-8 text file (byte 0x89 at offset 0)"),
    ("name: caf\u00e9\n".encode("latin-1"), "not a UTF-8 text file (byte 0xe9 at offset 9)"),
    (b"name: a\x00b\n", "not valid YAML"),
])
def test_a_binary_or_non_utf8_scenario_is_one_line(tmp_path, blob, message):
    path, out = tmp_path / "s.yaml", tmp_path / "out"
    path.write_bytes(blob)
    proc = subprocess.run([sys.executable, "-m", "sim", str(path), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    line = sim_error(proc)
    assert line.startswith(f"error: {path}: ") and message in line and not out.exists()


def test_a_missing_literal_results_file_is_an_error_and_an_empty_glob_is_pending(tmp_path):
    doc = edit(lambda d: d.update(measured={"results": [str(tmp_path / "nope.json")]}))
    line = sim_error(run_cli(tmp_path, doc))
    assert f"measured.results[0]: no such file {tmp_path / 'nope.json'}" in line
    doc = edit(lambda d: d.update(measured={"results": "r.json", "replays": [str(tmp_path / "*.json")]}))
    (tmp_path / "r.json").write_text("{}")  # a literal path that exists (unreadable: its own error)
    assert "measured results" in sim_error(run_cli(tmp_path, doc))
    doc = edit(lambda d: d.update(measured={"results": [str(tmp_path / "none-*.json")]}))
    proc = run_cli(tmp_path, doc)
    assert proc.returncode == 0 and "measurements pending" in proc.stdout, proc.stderr


def test_a_missing_or_wrong_host_fit_is_one_line_before_simulating(tmp_path):
    doc = edit(lambda d: d.update(measured={"results": [str(tmp_path / "none-*.json")],
                                            "host": str(tmp_path / "fit.json")}))
    assert f"measured.host: no such file {tmp_path / 'fit.json'}" in sim_error(run_cli(tmp_path, doc))
    (tmp_path / "fit.json").write_text('{"schema": "busy-cpu-probe/1", "cpu_s_per_byte": 2e-9}')
    line = sim_error(run_cli(tmp_path, doc))
    assert line == (f"error: {tmp_path / 'fit.json'}: measured.host is not a busy-cpu fit (schema busy-cpu-fit/1 "
                    "with per_byte_s and per_message_s >= 0: python -m reference.netcluster busy-cpu --sizes "
                    "256KB,1MB,4MB)")


# ----- the simulator: output folders -------------------------------------------------------------------
def test_out_under_a_file_is_refused_before_simulating(tmp_path):
    (tmp_path / "file").write_text("x")
    line = sim_error(run_cli(tmp_path, GOOD, "--out", str(tmp_path / "file" / "out")))
    assert line == f"error: --out {tmp_path / 'file' / 'out'}: a path above it is a file, not a folder"
    assert sim_error(run_cli(tmp_path, GOOD, "--out", str(tmp_path / "file"))) == (
        f"error: --out {tmp_path / 'file'}: must be a folder, but it is a file")


def test_out_on_a_read_only_folder_is_refused_before_simulating(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        start = time.monotonic()
        line = sim_error(run_cli(tmp_path, GOOD, "--out", str(ro / "out")))
        assert line == f"error: --out {ro / 'out'}: not writable (permission denied or a read-only file system)"
        assert time.monotonic() - start < 20  # refused at once, not after the sweep
        assert os.listdir(ro) == []


def test_a_full_disk_leaves_the_old_outputs_and_no_partial_file(tmp_path):
    """The report files fit in 128 KiB, the plots do not: the run fails while writing a plot, and
    every file it had written is removed; the old outputs stay as they were."""
    with tmpfs(tmp_path / "full", "size=128k") as out:
        (out / "ttft.csv").write_text("old ttft\n")
        (out / "notes.txt").write_text("a user's own file\n")
        proc = run_cli(tmp_path, GOOD, "--out", str(out))
        line = sim_error(proc, printed=True)  # the report is on the screen; no file was changed
        assert re.fullmatch(rf"error: --out {re.escape(str(out))}: cannot write \S+: no space left on the device; "
                            "no output was changed", line), line
        assert sorted(os.listdir(out)) == ["notes.txt", "ttft.csv"]
        assert (out / "ttft.csv").read_text() == "old ttft\n"


def test_a_failed_staged_write_removes_every_temporary_file(tmp_path):
    """``outputs.Staged`` in-process: a failure in the third file leaves neither of the first two."""
    from sim.outputs import OutputError, Staged

    (tmp_path / "a.csv").write_text("old a\n")
    with pytest.raises(OutputError, match=r"--out .*: cannot write c.png: no space left on the device"):
        with Staged(str(tmp_path), "--out") as stage:
            for name in ("a.csv", "b.json", "c.png"):
                path = stage.path(name)
                with open(path, "w") as f:
                    f.write("new")
                if name == "c.png":
                    raise OSError(28, "No space left on device", path)
    assert sorted(os.listdir(tmp_path)) == ["a.csv"] and (tmp_path / "a.csv").read_text() == "old a\n"


def test_validation_plots_never_go_into_the_repository(tmp_path):
    """``python -m sim scenarios/validate-cpu.yaml`` without --out: its plots go to a temporary folder it
    names; the repository's files are untouched."""
    def snapshot():
        return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                for d, _, files in os.walk(ROOT) if "/.git" not in d for f in files}
    before = snapshot()
    proc = subprocess.run([sys.executable, "-m", "sim", "scenarios/validate-cpu.yaml", "--no-progress"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert snapshot() == before
    folder = re.search(r"wrote \d+ files to (\S+)", proc.stderr).group(1)
    try:
        assert folder.startswith(tempfile.gettempdir()) and sorted(os.listdir(folder)) == [
            "validation-replays.png", "validation.png"]
    finally:
        for name in os.listdir(folder):
            os.unlink(os.path.join(folder, name))
        os.rmdir(folder)


def test_partition_build_table_checks_its_out_before_searching(tmp_path):
    (tmp_path / "file").write_text("x")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    proc = subprocess.run([sys.executable, "-m", "sim.partition", "build-table", str(path), "--out",
                           str(tmp_path / "file" / "t.json")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = sim_error(proc)
    assert line.startswith(f"error: --out {tmp_path / 'file' / 't.json'}: no such folder")


# ----- the simulator: sizes --------------------------------------------------------------------------
BIG = {"name": "big", "models": ["llama-2-7b"], "hardware": {"gpu": "h100-sxm", "dtype": "bf16"},
       "clusters": [{"name": "mesh", "kind": "uniform", "gpus": 10000, "bandwidth_gb_per_s": 300, "latency_us": 5},
                    {"name": "nodes", "kind": "nonuniform", "gpus": 1000,
                     "nodes": {"gpus_per_node": 8, "intra": {"bandwidth_gb_per_s": 450},
                               "inter": {"bandwidth_gb_per_s": 50, "latency_us": 5}}}],
       "workload": {"contexts": [4096], "gpus": [2, 8], "schemes": ["tsp", "kvr-e"]}}


def test_clusters_of_thousands_of_gpus_route_only_the_gpus_a_job_uses():
    """A 10,000-GPU mesh is one record, not 10^8 links; a 1,000-GPU cluster of nodes finds routes from
    the job's GPUs alone, once per cluster. (Speed: docs/benchmarks.md, "Large clusters".)"""
    from sim import report
    from sim.scenario import parse

    scenario = parse(BIG)
    mesh, nodes = scenario.clusters
    assert mesh.links == () and mesh.route(0, 9999) == ((0, 9999),)
    table = report.run(scenario, progress=False)
    assert len(table) == 2 * 2 * 2 and all(r.result is not None for r in table)
    assert sorted(nodes._paths) == list(range(8))  # sources routed: the 8 GPUs of the largest job
    by = {(r.job.cluster.name, r.job.scheme.name, r.job.num_gpus): r.result.ttft_s for r in table}
    # 8 GPUs of one node on 450 GB/s links beat the 300 GB/s mesh for tsp (its all-gather is on the wire).
    assert by["nodes", "tsp", 8] < by["mesh", "tsp", 8]


def test_a_context_that_does_not_fit_says_so_in_the_table_csv_and_json(tmp_path):
    doc = edit(lambda d: (d["workload"].update(contexts=[64, 10**9]),
                          d["workload"].update(schemes=["single", "tsp", "kvr-e"])))
    out = tmp_path / "out"
    proc = run_cli(tmp_path, doc, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("single ", "tsp ", "kvr-e "))]
    assert rows and all(" ".join(r[-3:]) == "does not fit" for r in rows)
    assert "does not fit the GPU's memory: 5 configurations; e.g. single on 1 GPU at C=1000000000" in proc.stdout
    records = json.loads((out / "report.json").read_text())["results"]
    huge = [r for r in records if r["context"] == 10**9]
    assert len(huge) == 2 * 2 * 5 and all(r["ttft_s"] is None and r["fits"] is False and
                                      r["memory"]["need_bytes"] > r["memory"]["capacity_bytes"] for r in huge)
    csv_rows = [line.split(",") for line in (out / "ttft.csv").read_text().splitlines()[1:]]
    assert {(r[4], r[5], r[8]) for r in csv_rows if r[4] == str(10**9)} == {(str(10**9), "", "no")}
    # Opting out: a time (absurd, but asked for). On the uniform cluster alone: the on/off background
    # flows of the other would switch every 100 us through hours of simulated time.
    doc["clusters"] = doc["clusters"][:1]
    doc["hardware"]["check_memory"] = False
    proc = run_cli(tmp_path, doc)
    assert proc.returncode == 0 and "does not fit" not in proc.stdout
    doc["hardware"].update(check_memory=True, memory_gb=1e9)  # or a GPU with a petabyte
    assert "does not fit" not in run_cli(tmp_path, doc).stdout


# ----- the simulator: help and tables -----------------------------------------------------------------
def _actions(parser):
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {a}", h) for a, h in _actions(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "/".join(action.option_strings) or action.dest, action.help


@pytest.mark.parametrize("module", ["sim.cli", "sim.partition.__main__", "reference.launch"])
def test_every_flag_has_a_help_line(module):
    import importlib
    mod = importlib.import_module(module)
    parser = mod._parser() if hasattr(mod, "_parser") else mod.parser()
    missing = [name for name, text in _actions(parser) if not text]
    assert missing == []


def test_launch_help_says_the_dtype_default_and_each_scheme():
    proc = run([*LAUNCH, "--help"])
    text = " ".join(proc.stdout.split())
    from reference.schemes import SCHEME_NAMES

    assert "default fp32" in text and all(f"{s}:" in text for s in SCHEME_NAMES)


def test_report_tables_keep_their_columns_with_huge_numbers():
    """Per-rank and per-link tables: every number ends where its header ends, whatever its size."""
    from sim import report
    from sim.scenario import parse

    doc = edit(lambda d: (d["workload"].update(contexts=[64, 200000], gpus=[4]),
                          d["clusters"][0].update(bandwidth_gb_per_s=0.001),
                          d["workload"].update(schemes=["tsp", "kvr-e"]), d["hardware"].update(check_memory=False)))
    text = report.text(parse(doc), report.run(parse(doc), progress=False))
    lines = text.splitlines()
    for title in ("per rank:", "MB carried per directed link"):
        for start in [i for i, line in enumerate(lines) if title in line]:
            block = []
            for line in lines[start + 1:]:
                if not line or line.startswith(("On ", "==")):
                    break
                block.append(line)
            header = block[1] if title == "per rank:" else block[0]
            ends = [m.end() for m in re.finditer(r"\S+", header)]
            body = [line for line in block if line.startswith(("rank ", "0->", "1->", "2->", "3->", "sw->"))]
            assert body
            for line in body:
                cells = [m.end() for m in re.finditer(r"\S+", line)]
                assert cells[-len(ends):] == ends, (header, line)


# ----- the launcher -----------------------------------------------------------------------------------
@pytest.mark.parametrize("args, world, message", [
    (["--scheme", "kvr", "--context", "10", "--partition", "4,4"], 2, r"sums to 8, not the context 10"),
    (["--scheme", "kvr", "--context", "10", "--partition", "0,10"], 2, r"every chunk needs at least one token"),
    (["--scheme", "kvr", "--context", "10", "--partition", "5,5"], 3, r"has 2 chunks for world size 3"),
    (["--scheme", "tsp", "--context", "10", "--partition", "6,4"], 2, r"uses the even split \[5, 5\]"),
    (["--scheme", "kvr", "--context", "2"], 3, r"3 ranks for 2 tokens"),
    (["--scheme", "single", "--context", "8"], 2, r"'single' runs on one process"),
    (["--scheme", "kvr", "--context", "8", "--model", "llama-9b"], 1, r"'llama-9b' is neither a model preset"),
    (["--scheme", "fast", "--context", "8"], 1, r"argument --scheme: invalid choice"),
    (["--scheme", "kvr"], 1, r"give --context C or --input-ids FILE"),
    (["--scheme", "ulysses", "--context", "12"], 3,
     r"error: scheme 'ulysses' cannot run here: 4 query heads are not divisible by 3 GPUs$"),
    (["--scheme", "tp", "--context", "12"], 3, r"error: scheme 'tp' cannot run here: 4 query heads are not divisible by 3 GPUs$"),
    (["--scheme", "ring-zigzag", "--context", "5"], 3, r"scheme 'ring-zigzag' cannot run here: 5 tokens cannot fill 6 pieces"),
    (["--scheme", "pipeline", "--context", "8"], 3, r"scheme 'pipeline' cannot run here: 2 layers cannot fill 3 stages"),
    (["--scheme", "ring", "--context", "8", "--partition", "5,3"], 2, r"scheme 'ring' uses the even split \[4, 4\]"),
    (["--scheme", "kvr", "--context", "8", "--pieces", "4"], 1, r"--pieces is for scheme pipeline, not 'kvr'"),
    (["--scheme", "ring", "--context", "8", "--generate", "2"], 2, r"--generate needs the whole KV-cache on one rank"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, world, message):
    out = tmp_path / "r.json"
    out.write_text("previous results\n")
    env = {"RANK": "0", "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    model = [] if "--model" in args else ["--model", "tiny-llama"]
    start = time.monotonic()
    proc = run([*LAUNCH, *model, *args, "--out", str(out)], env=env)
    assert time.monotonic() - start < 30
    assert re.search(message, one_error_line(proc)), proc.stderr
    assert out.read_text() == "previous results\n"  # a failed run never touches the results file


def test_more_ranks_than_tokens_under_torchrun():
    proc = run([*TORCHRUN, "--nproc-per-node", "3", "-m", "reference.launch", "--model", "tiny-llama",
                "--scheme", "kvr", "--context", "2"], timeout=60)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("reference.launch: error:")]
    assert ours == ["reference.launch: error: 3 ranks for 2 tokens: every rank needs at least one token"], \
        (proc.returncode, proc.stderr[-3000:])


@pytest.fixture
def broken_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path)

    def edit(fn):
        path = tmp_path / "model.safetensors"
        tensors = load_file(path)
        fn(tensors)
        save_file(tensors, path, metadata={"format": "pt"})
        return str(tmp_path)
    return edit


def test_checkpoint_missing_tensor_at_cli(broken_checkpoint):
    folder = broken_checkpoint(lambda t: t.pop("model.norm.weight"))
    proc = run([*LAUNCH, "--model", folder, "--scheme", "single", "--context", "4"])
    assert "missing tensor 'model.norm.weight'" in one_error_line(proc)


def test_checkpoint_wrong_shape_at_cli(broken_checkpoint):
    key = "model.layers.0.self_attn.k_proj.weight"
    folder = broken_checkpoint(lambda t: t.__setitem__(key, t[key].T.contiguous()))
    proc = run([*LAUNCH, "--model", folder, "--scheme", "single", "--context", "4"])
    assert f"tensor '{key}' has shape (32, 16), expected (16, 32)" in one_error_line(proc)


def test_launch_out_on_a_folder_or_a_read_only_folder_is_refused_before_the_run(tmp_path):
    line = one_error_line(run([*LAUNCH, "--model", "tiny-llama", "--scheme", "single", "--context", "8",
                               "--out", str(tmp_path)]))
    assert line == f"reference.launch: error: --out {tmp_path}: is a folder; give the path of a file"
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        proc = run([*LAUNCH, "--model", "tiny-llama", "--scheme", "single", "--context", "8",
                    "--out", str(ro / "r.json")])
        assert one_error_line(proc) == (f"reference.launch: error: --out {ro / 'r.json'}: folder {ro}: not "
                                        "writable (permission denied or a read-only file system)")
        assert "warm-up" not in proc.stdout + proc.stderr  # refused before any prefill


def test_launch_trace_in_a_missing_or_read_only_folder_is_refused_before_the_run(tmp_path):
    cmd = [*LAUNCH, "--model", "tiny-llama", "--scheme", "single", "--context", "8", "--trace"]
    line = one_error_line(run([*cmd, str(tmp_path / "no" / "t.json")]))
    assert line.startswith(f"reference.launch: error: --trace {tmp_path / 'no' / 't.json'}: no such folder")
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        proc = run([*cmd, str(ro / "t.json")])
        assert one_error_line(proc) == (f"reference.launch: error: --trace {ro / 't.json'}: folder {ro}: not "
                                        "writable (permission denied or a read-only file system)")
        assert "warm-up" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_safetensors_file_is_one_line(broken_checkpoint, damage):
    folder = broken_checkpoint(lambda t: None)
    path = os.path.join(folder, "model.safetensors")
    data = open(path, "rb").read()
    blob = {"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 64, "empty": b""}[damage]
    with open(path, "wb") as f:
        f.write(blob)
    line = one_error_line(run([*LAUNCH, "--model", folder, "--scheme", "single", "--context", "4"]))
    assert line.startswith(f"reference.launch: error: {path}: not a readable safetensors file (")


@pytest.mark.parametrize("module,args,message", [
    ("reference.measure.comm_cost", ["--sizes", "4 MB"], "--sizes: '4 MB' is not a size like 256KiB"),
    ("reference.measure.comm_cost", ["--ctas", "0,8"], "--ctas: need integers >= 1"),
    ("reference.measure.hf_attention", ["--models", "gpt-9"], "--models: 'gpt-9' is not a preset"),
    ("reference.measure.kv_chain", ["--models", "gpt-9"], "--models: 'gpt-9' is not a preset"),
    ("reference.measure.kv_chain", ["--points", "2048"], "--points '2048': must be CHUNK:PAST"),
])
def test_the_gpu_measurements_refuse_bad_flags_in_one_line(tmp_path, module, args, message):
    """Checked before any GPU work (on a CPU machine too: the flags first, then the missing device)."""
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not out.exists()


def test_the_attention_check_refuses_a_file_that_is_not_its_measurement(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"schema": "profile/3"}')
    proc = subprocess.run([sys.executable, "-m", "sim.validation.attention_impl", str(bad)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "hf-attention/1" in lines[0], proc.stderr
