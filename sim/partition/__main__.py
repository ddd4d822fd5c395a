"""``python -m sim.partition COMMAND``: KVR-S searches, lookup tables, KVR-P checks, the order's gain,
the search's speed and the figures of docs/partitioning.md.

    python -m sim.partition search SCENARIO.yaml --gpus 8 --context 16384 [--model M] [--cluster X]
    python -m sim.partition build-table SCENARIO.yaml --out scenarios/tables/NAME.json [--contexts ...]
    python -m sim.partition check-table TABLE.json SCENARIO.yaml --contexts 3072,6144,12288
    python -m sim.partition order SCENARIO.yaml
    python -m sim.partition bench
    python -m sim.partition figures --out docs/img
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time

from ..job import Job, SchemeSpec
from ..outputs import OutputError, Staged, check_file_writable, check_writable
from ..regen import SCENARIOS
from ..scenario import Scenario, ScenarioError, load
from . import PartitionError, chain, table
from .search import SIMULATOR_BUDGET, grid_search, search_job, simulator_oracle, start_chunks
from .sweep import jobs, with_scheme as _with


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return values


def cmd_search(args) -> None:
    scenario = load(args.scenario)
    for job in jobs(scenario, [args.gpus], [args.context], args.order, args.model, args.cluster):
        wall = time.perf_counter()
        result, gpus = search_job(job)
        wall = time.perf_counter() - wall
        print(f"{job.model.name} on {job.cluster.name}, P={job.num_gpus}, C={job.context}, order {args.order}")
        print(f"  solver start   {list(result.start)}")
        for chunks, ttft_s in result.coarse:
            print(f"  coarse         {list(chunks)}  {ttft_s * 1e3:.3f} ms")
        print(f"  kvr-s          {list(result.chunks)}  {result.ttft_s * 1e3:.3f} ms on GPUs {list(gpus)}")
        print(f"  kvr-e          {_with(job, 'kvr-e') * 1e3:.3f} ms; tsp {_with(job, 'tsp') * 1e3:.3f} ms")
        print(f"  {result.evaluations} candidates scored, refinement steps {list(result.steps)} tokens, {wall:.2f} s")


def cmd_build_table(args) -> None:
    scenario = load(args.scenario)
    check_file_writable(args.out, "--out")  # before the searches, which take minutes
    todo = jobs(scenario, args.gpus, args.contexts, args.order, args.model, args.cluster)
    doc = table.build(todo, progress=not args.no_progress, desc=f"kvr-s table {scenario.name}")
    doc["command"] = "python -m sim.partition build-table " + " ".join(args.argv)
    table.save(doc, args.out)
    print(f"wrote {len(doc['entries'])} entries to {args.out}")


def held_out(path: str, scenario: Scenario, contexts, gpus=None, order: str = "given") -> list[dict]:
    """KVR-P from the table at ``path`` against KVR-S at each of ``contexts`` (simulated TTFT)."""
    doc = table.load(path)
    rows = []
    for job in jobs(scenario, gpus, contexts, order):
        predicted = table.predict(table.matching(doc, job, path), job.context)
        p_ttft_s = simulator_oracle(job, predicted.gpus)(predicted.chunks)
        result, _ = search_job(job)
        rows.append({"model": job.model.name, "cluster": job.cluster.name, "gpus": job.num_gpus,
                     "context": job.context, "kvr_p_ttft_s": p_ttft_s, "kvr_s_ttft_s": result.ttft_s,
                     "kvr_e_ttft_s": _with(job, "kvr-e"), "kvr_p": predicted.chunks, "kvr_s": result.chunks})
    return rows


def cmd_check_table(args) -> int:
    scenario = load(args.scenario)
    rows = held_out(args.table, scenario, args.contexts, args.gpus, args.order)
    print(f"KVR-P from {args.table} against KVR-S at held-out contexts (simulated TTFT, ms)")
    print(f"{'model':<12}{'cluster':<12}{'P':>3}{'C':>7}{'kvr-e':>10}{'kvr-s':>10}{'kvr-p':>10}{'p/s - 1':>9}")
    worst = 0.0
    for r in rows:
        gap = r["kvr_p_ttft_s"] / r["kvr_s_ttft_s"] - 1
        worst = max(worst, gap)
        print(f"{r['model']:<12}{r['cluster']:<12}{r['gpus']:>3}{r['context']:>7}{r['kvr_e_ttft_s'] * 1e3:>10.2f}"
              f"{r['kvr_s_ttft_s'] * 1e3:>10.2f}{r['kvr_p_ttft_s'] * 1e3:>10.2f}{gap * 100:>8.2f}%")
    print(f"worst: kvr-p is {worst * 100:.2f}% slower than kvr-s (target: within {args.tolerance:g}%)")
    return 0 if worst * 100 <= args.tolerance else 1


def order_gain(scenario: Scenario, gpus=None, contexts=None) -> list[dict]:
    """KVR-S under the given order (rank r on GPU r) against ``order: auto``, per job."""
    rows = []
    for job in jobs(scenario, gpus, contexts, "given"):
        given, _ = search_job(job)
        auto_job = dataclasses.replace(job, scheme=dataclasses.replace(job.scheme, order="auto"))
        auto, gpus_auto = search_job(auto_job)
        rows.append({"model": job.model.name, "cluster": job.cluster.name, "gpus": job.num_gpus,
                     "context": job.context, "given_ttft_s": given.ttft_s, "auto_ttft_s": auto.ttft_s,
                     "order": gpus_auto})
    return rows


def cmd_order(args) -> None:
    scenario = load(args.scenario)
    contexts = args.contexts or [max(scenario.contexts)]
    print(f"KVR-S with order given (rank r on GPU r) and auto, {scenario.name} (simulated TTFT, ms)")
    print(f"{'model':<12}{'cluster':<12}{'P':>3}{'C':>7}{'given':>10}{'auto':>10}{'gain':>8}  auto order")
    for r in order_gain(scenario, args.gpus, contexts):
        print(f"{r['model']:<12}{r['cluster']:<12}{r['gpus']:>3}{r['context']:>7}{r['given_ttft_s'] * 1e3:>10.2f}"
              f"{r['auto_ttft_s'] * 1e3:>10.2f}{r['given_ttft_s'] / r['auto_ttft_s']:>7.3f}x  {list(r['order'])}")


def cmd_bench(args) -> None:
    """The full KVR-S search for 8 GPUs at 16k tokens (Llama-2-7B on A100s), wall and CPU seconds, on
    three clusters: uniform NVLink, throttled 10 GB/s (candidates scored by the closed form) and the
    noisy cluster of nonuniform.yaml (background traffic: SimPy scores them)."""
    from ..cluster import ClusterSpec
    from ..hardware import GpuSpec
    from ..model import ModelSpec

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    noisy = next(c for c in load(os.path.join(SCENARIOS, "nonuniform.yaml")).clusters if c.name == "noisy")
    clusters = [ClusterSpec.uniform("nvlink-300", 8, 300e9, 10e-6), ClusterSpec.uniform("throttled-10", 8, 10e9, 20e-6),
                noisy]  # noisy: background traffic on the chain, so SimPy scores every candidate
    for cluster in clusters:
        for order in ("given", "auto"):
            job = Job(model=ModelSpec.preset("llama-2-7b"), gpu=GpuSpec.preset("a100-80gb-sxm"), dtype="fp16",
                      cluster=cluster, scheme=SchemeSpec(name="kvr-s", kind="kvr", partitioner="kvr-s", order=order),
                      context=16384, num_gpus=8)
            wall, cpu = time.perf_counter(), time.process_time()
            result, gpus = search_job(job)
            scorer = "closed form" if chain.exact_for(job, gpus) else "SimPy"
            print(f"kvr-s search, llama-2-7b, C=16384, 8 GPUs, {cluster.name}, order {order}: "
                  f"{result.evaluations} candidates scored by {scorer}, wall {time.perf_counter() - wall:.2f} s, "
                  f"CPU {time.process_time() - cpu:.2f} s")
    # The worst case: SimPy scoring a search that keeps improving (throttled), until the budget stops it.
    job = dataclasses.replace(job, cluster=clusters[1], scheme=dataclasses.replace(job.scheme, order="given"))
    wall, cpu = time.perf_counter(), time.process_time()
    result = grid_search(16384, 8, simulator_oracle(job), start_chunks(job), budget=SIMULATOR_BUDGET)
    print(f"kvr-s search, llama-2-7b, C=16384, 8 GPUs, throttled-10, SimPy forced: {result.evaluations} candidates "
          f"(the budget), wall {time.perf_counter() - wall:.2f} s, CPU {time.process_time() - cpu:.2f} s")


def cmd_figures(args) -> None:
    from .figures import fractions_plot, landscape_plot

    scenario = load(args.scenario)
    check_writable(args.out, "--out")
    stem = "partition_{}_" + scenario.name + ".png"
    with Staged(args.out, "--out") as stage:
        landscape_plot(scenario, args.context, stage.path(stem.format("landscape")))
        fractions_plot(scenario, args.contexts, stage.path(stem.format("fractions")), progress=not args.no_progress)
    for path in stage.finals:
        print(f"wrote {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim.partition", description="KVR-S searches, lookup tables, "
                                "KVR-P checks, the chain order's gain, the search's speed and figures.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(q, scenario=True, order=True):
        if scenario:
            q.add_argument("scenario", help="scenario YAML (its models, hardware and clusters)")
        q.add_argument("--gpus", type=_ints, help="GPU counts, e.g. 2,4,8 (default: the scenario's)")
        q.add_argument("--contexts", type=_ints, help="contexts, e.g. 1024,2048 (default: the scenario's)")
        if order:
            q.add_argument("--order", choices=("given", "auto"), default="given", help="rank -> GPU order")
        q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    q = sub.add_parser("search", help="one KVR-S search, step by step")
    q.add_argument("scenario", help="scenario YAML (its models, hardware and clusters)")
    q.add_argument("--gpus", type=int, required=True, help="GPU count P of the search")
    q.add_argument("--context", type=int, required=True, help="context C in tokens")
    q.add_argument("--model", action="append", help="a model of the scenario (default: all; repeatable)")
    q.add_argument("--cluster", action="append", help="a cluster of the scenario (default: all; repeatable)")
    q.add_argument("--order", choices=("given", "auto"), default="given",
                   help="rank -> GPU order: given (rank r on GPU r, default) or auto (from the topology)")
    q = sub.add_parser("build-table", help="KVR-S at every model, cluster, P and C: a lookup table (JSON)")
    common(q)
    q.add_argument("--out", required=True, metavar="FILE", help="the table file to write")
    q.add_argument("--model", action="append", help="a model of the scenario (default: all)")
    q.add_argument("--cluster", action="append", help="a cluster of the scenario (default: all)")
    q = sub.add_parser("check-table", help="KVR-P from a table against KVR-S at held-out contexts")
    q.add_argument("table", help="the KVR-P table JSON (build-table)")
    common(q)
    q.add_argument("--tolerance", type=float, default=2.0, help="percent (default 2): exit 1 above it")
    q = sub.add_parser("order", help="KVR-S with the given order against order: auto (default: largest context)")
    common(q, order=False)
    sub.add_parser("bench", help="time the full search for 8 GPUs at 16k tokens")
    q = sub.add_parser("figures", help="the landscape (2 GPUs) and fractions (2/4/8 GPUs) PNGs")
    common(q, order=False)
    q.add_argument("--context", type=int, default=16384, help="context of the landscape (default 16384)")
    q.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        run = {"search": cmd_search, "build-table": cmd_build_table, "check-table": cmd_check_table,
               "order": cmd_order, "bench": cmd_bench, "figures": cmd_figures}[args.command]
        return run(args) or 0
    except (ScenarioError, PartitionError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
