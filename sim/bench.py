"""``python -m sim.bench``: the simulator's speed figures (docs/benchmarks.md).

1. One simulation of Llama-2-7B (32 layers) at 16k tokens on 8 GPUs of a uniform 300 GB/s cluster,
   per scheme: the median and best of ``--repeat`` runs, in ms.
2. All of ``scenarios/nonuniform.yaml`` (load, every simulation, the text report), in s.
3. All of ``scenarios/contenders.yaml`` (every scheme on three clusters), in s.
4. One simulation a scheme of Llama-3.1-405B (126 layers) at 1M tokens on 16 x 8 H100s, tensor
   parallel in each node (the memory check skipped: in bf16 most do not fit), CPU s; and all of
   ``scenarios/multinode.yaml``.
5. All of ``scenarios/large-cluster.yaml`` (a 1,000-GPU mesh and a 10,000-GPU cluster of nodes): load,
   run, and the peer it replaces: routes between every pair of the 10,000 GPUs, estimated from one
   source's Dijkstra search times the GPUs (what the simulator did before it routed only the GPUs a
   job uses).
Each figure is given as wall-clock time and as this process's CPU time (``time.process_time``); on a
machine shared with other work the CPU time is the one that says how fast the simulator is.

``--scaling-plot PATH`` instead draws one simulation's CPU time against GPUs, layers and context
(log-log, one panel each, the others fixed; ``scaling_points``, the best of two runs) to PATH, a PNG.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time

from . import report
from .cluster import ClusterSpec
from .hardware import GpuSpec
from .model import ModelSpec
from .regen import SCENARIOS
from .scenario import load
from .job import BUILTIN, Job
from .simulate import simulate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.bench", description="Print the simulator's speed figures.")
    p.add_argument("--repeat", type=int, default=20, help="runs per scheme (default 20)")
    p.add_argument("--scaling-plot", metavar="PATH", help="instead: draw simulation CPU time against GPUs, "
                   "layers and context (Llama-3.1-405B, tp 8, multinode.yaml's cluster) to PATH, a PNG (~1 min)")
    p.add_argument("--communication", choices=("links", "nccl"), help="the 405B lines and multinode.yaml under this "
                   "communication model (default: the scenario's)")
    args = p.parse_args(argv)
    if args.scaling_plot:
        from .outputs import OutputError, check_file_writable
        try:
            check_file_writable(args.scaling_plot, "--scaling-plot")
        except OutputError as e:
            print(f"python -m sim.bench: error: {e}", file=sys.stderr)
            return 2
        scaling_plot(scaling_points(), args.scaling_plot)
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    cluster = ClusterSpec.uniform("nvlink-300", 8, 300e9, 10e-6)
    print("one simulation: llama-2-7b, 32 layers, C=16384, 8 GPUs, uniform 300 GB/s")
    for name in ("single", "tsp", "tsp-masked", "kvr-e"):
        job = Job(model=ModelSpec.preset("llama-2-7b"), gpu=GpuSpec.preset("a100-80gb-sxm"), dtype="fp16",
                  cluster=cluster, scheme=BUILTIN[name], context=16384, num_gpus=1 if name == "single" else 8)
        simulate(job)  # warm-up: routes are cached per cluster
        wall_ms, cpu_ms = [], []
        for _ in range(args.repeat):
            wall, cpu = time.perf_counter(), time.process_time()
            simulate(job)
            wall_ms.append((time.perf_counter() - wall) * 1e3)
            cpu_ms.append((time.process_time() - cpu) * 1e3)
        print(f"  {name:<11} wall median {statistics.median(wall_ms):6.1f} ms, best {min(wall_ms):6.1f} ms;"
              f"  CPU median {statistics.median(cpu_ms):6.1f} ms, best {min(cpu_ms):6.1f} ms")
    _sweep("nonuniform.yaml", unit="simulations")
    _sweep("contenders.yaml")
    scenario = load(os.path.join(SCENARIOS, "multinode.yaml"))
    if args.communication:
        scenario = dataclasses.replace(scenario, gpu=scenario.gpu.replace(communication=args.communication))
    big = scenario.clusters[0]
    print(f"one simulation: llama-3.1-405b, 126 layers, C=1048576, 128 GPUs ({big.name}), tp 8, "
          f"communication {scenario.gpu.communication}")
    for scheme in scenario.schemes:
        job = Job(model=ModelSpec.preset("llama-3.1-405b"), gpu=scenario.gpu, dtype="bf16", cluster=big,
                  scheme=scheme, context=1048576, num_gpus=128)
        cpu = time.process_time()
        simulate(job)
        print(f"  {scheme.name:<16} CPU {time.process_time() - cpu:6.2f} s")
    _sweep("multinode.yaml", scenario=scenario)
    scenario, cpu_s = _sweep("large-cluster.yaml", show_load=True)
    big = scenario.clusters[-1]
    fresh = ClusterSpec(name=big.name, num_gpus=big.num_gpus, links=big.links, switches=big.switches)
    start = time.process_time()
    fresh.route(big.num_gpus - 1, 0)  # one source's search, as all-pairs routing did per GPU
    one_s = time.process_time() - start
    print(f"  peer: all-pairs routes of {big.num_gpus} GPUs ~ {big.num_gpus} x {one_s:.3f} s = "
          f"{big.num_gpus * one_s:.0f} s CPU, {big.num_gpus * one_s / cpu_s:.0f}x the whole scenario")
    return 0


def _sweep(name: str, *, unit: str = "configurations", scenario=None, show_load: bool = False):
    """All of ``scenarios/NAME`` (load unless ``scenario`` is given, every simulation, the text
    report), timed and printed; returns the scenario and its CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    if scenario is None:
        scenario = load(os.path.join(SCENARIOS, name))
    load_s = time.process_time() - cpu
    table = report.run(scenario, progress=False)
    report.text(scenario, table)
    cpu_s = time.process_time() - cpu
    loaded = f"load CPU {load_s:.2f} s, all " if show_load else ""
    print(f"scenarios/{name}: {len(table)} {unit}, {loaded}wall {time.perf_counter() - wall:.2f} s, "
          f"CPU {cpu_s:.2f} s")
    return scenario, cpu_s


# The scaling plot's sweep: each panel varies one of GPUs, layers, context; the others stay at these.
SCALING_SCHEMES = ("ring+tp8", "ulysses+tp8", "tsp+tp8", "kvr-e+tp8")
SCALING_FIXED = {"gpus": 128, "layers": 32, "context": 262144}
SCALING_AXES = {"gpus": (16, 32, 64, 128), "layers": (8, 16, 32, 64, 126),
                "context": (32768, 131072, 524288, 1048576)}


def scaling_points() -> list[tuple[str, str, int, float]]:
    """(axis, scheme, value, CPU s of one simulation) for every point of ``SCALING_AXES``: Llama-3.1-405B
    with its layer count cut or kept, on multinode.yaml's 16 x 8 H100 cluster, tp 8, memory not checked."""
    scenario = load(os.path.join(SCENARIOS, "multinode.yaml"))
    schemes = {s.name: s for s in scenario.schemes}
    model = ModelSpec.preset("llama-3.1-405b")
    out = []
    for axis, values in SCALING_AXES.items():
        for name in SCALING_SCHEMES:
            for value in values:
                at = {**SCALING_FIXED, axis: value}
                job = Job(model=dataclasses.replace(model, num_layers=at["layers"]), gpu=scenario.gpu, dtype="bf16",
                          cluster=scenario.clusters[0], scheme=schemes[name], context=at["context"],
                          num_gpus=at["gpus"])
                runs = []
                for _ in range(2):  # the best of two: the first also routes the cluster's GPUs
                    cpu = time.process_time()
                    simulate(job)
                    runs.append(time.process_time() - cpu)
                out.append((axis, name, value, min(runs)))
                print(f"  {axis} {name:<12} {value:>8}: CPU {out[-1][3]:.3f} s", flush=True)
    return out


def scaling_plot(points: list[tuple[str, str, int, float]], path: str) -> None:
    """Three log-log panels of CPU seconds against GPUs, layers and context, a line a scheme; written
    to a temporary file beside ``path``, then renamed."""
    from .plots import plt
    fixed = ", ".join(f"{k} {v}" for k, v in SCALING_FIXED.items())
    fig, axes = plt.subplots(1, len(SCALING_AXES), figsize=(13, 3.8), sharey=True)
    for ax, axis in zip(axes, SCALING_AXES):
        for i, name in enumerate(SCALING_SCHEMES):
            mine = [(value, cpu_s) for a, n, value, cpu_s in points if a == axis and n == name]
            ax.plot(*zip(*mine), marker="osv^"[i % 4], color=f"C{i}", label=name)
        ax.set(xscale="log", yscale="log", xlabel=axis, title=f"CPU s against {axis}")
        ax.set_xticks(SCALING_AXES[axis], [f"{v // 1024}k" if axis == "context" else str(v)
                                           for v in SCALING_AXES[axis]])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("CPU s, one simulation")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Llama-3.1-405B on 16 x 8 H100 (IB NDR), tp 8; fixed: {fixed}", fontsize=10)
    stem, ext = os.path.splitext(path)
    tmp = f"{stem}.tmp{os.getpid()}{ext}"
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
