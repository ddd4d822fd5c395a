"""The launcher from the outside: a good run writes the documented results JSON; a rank killed
mid-prefill makes the others exit with an error within a bounded time. Bad input: test_bad_input.py."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from clitools import ENV, LAUNCH, ROOT, TORCHRUN, run

RESULT_FIELDS = {
    "schema_version", "model", "model_arg", "model_source", "scheme", "partition", "world_size", "context",
    "dtype", "backend", "device", "torch_version", "nccl_version", "link", "seed", "input_ids_file", "warmup",
    "repeat", "ttft_s", "ttft_median_s", "first_token_id", "generated_ids", "layer_times_s", "trace", "host", "hosts",
    "timestamp_utc"}


def test_kvr_run_over_torchrun_writes_results(tmp_path):
    out = tmp_path / "r.json"
    proc = run([*TORCHRUN, "--nproc-per-node", "2", "-m", "reference.launch", "--model", "tiny-llama-gqa",
                "--scheme", "kvr", "--partition", "12,8", "--context", "20", "--warmup", "1", "--repeat", "2",
                "--generate", "3", "--layer-timings", "--link", "loopback", "--timeout", "30", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stdout.splitlines() if line.startswith("scheme=")]
    assert len(summary) == 1 and summary[0].startswith("scheme=kvr model=tiny-llama-gqa P=2 C=20 partition=12,8")
    r = json.loads(out.read_text())
    assert set(r) == RESULT_FIELDS
    assert (r["schema_version"], r["scheme"], r["partition"], r["world_size"], r["context"], r["backend"],
            r["link"], r["model"]["name"], r["model_source"]) == (1, "kvr", [12, 8], 2, 20, "gloo", "loopback",
                                                                  "tiny-llama-gqa", "preset")
    assert len(r["ttft_s"]) == 2 and r["ttft_median_s"] > 0
    assert r["generated_ids"][0] == r["first_token_id"] and len(r["generated_ids"]) == 3
    assert [len(t) for t in r["layer_times_s"]] == [2, 2]


def test_single_with_input_ids_matches_kvr_first_token(tmp_path):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(list(range(3, 40))))
    first = []
    for cmd in ([*LAUNCH, "--scheme", "single"],
                [*TORCHRUN, "--nproc-per-node", "2", "-m", "reference.launch", "--scheme", "tsp"]):
        out = tmp_path / "r.json"
        proc = run([*cmd, "--model", "tiny-falcon", "--input-ids", str(ids), "--repeat", "1", "--out", str(out)])
        assert proc.returncode == 0, proc.stderr
        first.append(json.loads(out.read_text())["first_token_id"])
    assert first[0] == first[1]


@pytest.fixture(scope="module")
def single_first_token():
    """`--scheme single`'s first token per (model, context), from one process each."""
    seen: dict = {}

    def first(model: str, context: int) -> int:
        if (model, context) not in seen:
            proc = run([*LAUNCH, "--model", model, "--scheme", "single", "--context", str(context), "--repeat", "1"])
            assert proc.returncode == 0, proc.stderr
            seen[model, context] = int(re.search(r"first_token_id=(\d+)", proc.stdout).group(1))
        return seen[model, context]
    return first


@pytest.mark.parametrize("scheme, extra", [("ring", []), ("ring-zigzag", []), ("ulysses", []), ("tp", []),
                                           ("pipeline", ["--pieces", "3"])])
def test_new_scheme_over_torchrun_gives_single_first_token(tmp_path, single_first_token, scheme, extra):
    """One model for all (one single run; GQA, fused GEMMs as launch runs them): Falcon and the other
    layouts are the property tests' (test_ref_properties.py)."""
    out, model = tmp_path / "r.json", "tiny-llama-gqa"
    proc = run([*TORCHRUN, "--nproc-per-node", "2", "-m", "reference.launch", "--model", model, "--scheme", scheme,
                "--context", "21", "--warmup", "1", "--repeat", "2", "--timeout", "30", *extra, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert (r["scheme"], r["world_size"], r["context"], len(r["ttft_s"])) == (scheme, 2, 21, 2)
    assert r["partition"] == {"ring-zigzag": [11, 10], "tp": [21, 21], "pipeline": [21, 21]}.get(scheme, [11, 10])
    assert r["first_token_id"] == single_first_token(model, 21)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["kvr", "tsp"])
def test_killed_rank_makes_the_others_fail_in_bounded_time(tmp_path, scheme):
    """Three ranks started by hand (no torchrun to tear them down); SIGKILL rank 1 while the others
    are in the middle of prefills: ranks 0 and 2 print one error line and exit 1 well within
    --timeout + a margin."""
    world, port = 3, _free_port()
    procs = []
    for rank in range(world):
        env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(
            [*LAUNCH, "--model", "tiny-llama", "--scheme", scheme, "--context", "256", "--warmup", "1",
             "--repeat", "1000000", "--timeout", "10", "--out", str(tmp_path / "r.json")],
            cwd=ROOT, env={**ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        assert procs[0].stdout.readline().startswith("reference.launch: warm-up done"), procs[0].stderr.read()
        time.sleep(0.5)  # the ranks are now looping over timed prefills
        procs[1].send_signal(signal.SIGKILL)
        start = time.monotonic()
        codes = [procs[r].wait(timeout=40) for r in (0, 2)]
        elapsed = time.monotonic() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert codes == [1, 1] and elapsed < 30
    for r in (0, 2):
        err = procs[r].stderr.read().strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"reference.launch: error: rank {r}: "), err
    assert not (tmp_path / "r.json").exists()


def test_docs_describe_every_flag_and_results_field():
    """docs/reference.md's flag table matches --help, and its schema table lists every field."""
    from reference.launch import _parser

    with open(os.path.join(ROOT, "docs", "reference.md"), encoding="utf-8") as f:
        doc = f.read()
    launch, schema = doc.split("## Launch")[1].split("## TTFT")[0], doc.split("## Results JSON")[1].split("## Errors")[0]
    flags = {a.option_strings[-1] for a in _parser()._actions if a.option_strings and a.dest != "help"}
    assert set(re.findall(r"^\| `(--[a-z-]+)", launch, re.M)) == flags
    fields = {f for row in re.findall(r"^\| (`[^|]+)\|", schema, re.M) for f in re.findall(r"`([a-z_]+)`", row)}
    assert fields == RESULT_FIELDS


def test_two_torchrun_agents_make_one_job_across_nodes(tmp_path):
    """Multi-node torchrun, two nodes of two ranks on this machine: two agents meet at a c10d
    rendezvous; rank 0 writes the results of the 4-rank job with every rank's host."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "r.json"
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
             "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
             "-m", "reference.launch", "--model", "tiny-llama-gqa", "--scheme", "kvr", "--context", "24",
             "--repeat", "1", "--timeout", "60", "--out", str(out)]
    procs = [subprocess.Popen(agent, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        outs = [p.communicate(timeout=150) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    r = json.loads(out.read_text())
    assert r["world_size"] == 4 and r["partition"] == [6, 6, 6, 6] and len(r["hosts"]) == 4
    assert set(r) == RESULT_FIELDS
