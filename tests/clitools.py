"""Helpers of the command-line tests of both halves: the repository root, a small good scenario and
ways to run ``python -m sim`` and ``reference.launch`` as a user would (a fresh process)."""
import copy
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/ is one below

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


ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
for _k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_k, None)
LAUNCH = [sys.executable, "-m", "reference.launch"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def run(cmd, env=None, timeout=120):
    return subprocess.run(cmd, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout)
