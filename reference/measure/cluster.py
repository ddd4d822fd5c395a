"""Measure a scenario's sweep on a real shaped-link cluster: every job of a ``scenarios/validate-*.yaml``
runs as P gloo processes of ``reference.launch`` in network namespaces whose links match the job's
cluster (``reference.netcluster``), and each run's results JSON lands in ``--out-dir``.

    python -m reference.measure.cluster scenarios/validate-cpu.yaml --out-dir results/cpu \\
        --rounds 3 --warmup 1 --repeat 3

Pair (i, j) gets the simulator's route bandwidth (``netcluster.from_cluster_spec``), background flows
become fair-share competing TCP flows, and the partitions are the simulator's
(``sim.partition.plan.plan(job)``); one torch thread per rank; rounds are interleaved. The results'
``link`` field (``cluster=NAME ...``) is how the simulator matches them to its jobs, and the harness
adds the machine-speed and workload probes taken around each launch. ``--busy-cpu 256KB,1MB,4MB`` first
measures what moving bytes costs this host's computing ranks (``reference.netcluster busy-cpu``) and writes
the fit a scenario's ``measured.host`` names to ``OUT_DIR/host/busy-cpu-fit.json``. Every namespace, link and
process is torn down after each cluster, also on failure or Ctrl-C; where namespaces are not
permitted the ranks run on plain loopback and ``link`` says so. docs/validation.md, section 4.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

from reference.launch import write_atomic
from reference.measure.timing import speed_probe_s, workload_probe_s
from reference.netcluster import LinkSpec, RankResult, ShapedCluster, from_cluster_spec


class HarnessError(ValueError):
    """Bad command-line input."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.measure.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", help="scenario YAML (its clusters at CPU scale)")
    p.add_argument("--out-dir", required=True, help="folder for the results JSON files")
    p.add_argument("--rounds", type=int, default=3, help="launches of every job, interleaved (default 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="timed prefills per launch (default 3)")
    p.add_argument("--clusters", help="comma-separated cluster names (default: all)")
    p.add_argument("--schemes", help="comma-separated scheme names (default: all but single)")
    p.add_argument("--contexts", help="comma-separated contexts (default: the scenario's)")
    p.add_argument("--gpus", help="comma-separated rank counts (default: the scenario's)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per launch (default 600)")
    p.add_argument("--dtype", help="default: the scenario's hardware.dtype")
    p.add_argument("--busy-cpu", metavar="SIZES",
                   help="first measure the CPU a message and a byte cost this host while every core computes "
                   "(python -m reference.netcluster busy-cpu at these message sizes, e.g. 256KB,1MB,4MB; two or more) "
                   "and write the fit to OUT_DIR/host/busy-cpu-fit.json, for the scenario's measured.host")
    p.add_argument("--busy-cpu-seconds", type=float, default=5.0, help="--busy-cpu: seconds a window (default 5)")
    p.add_argument("--busy-cpu-repeats", type=int, default=10,
                   help="--busy-cpu: traffic windows a size, each between quiet ones (default 10)")
    p.add_argument("--no-trace", dest="trace", action="store_false",
                   help="no traced prefill (by default every launch adds one, for each rank's compute, waits and "
                   "sends: traces/NAME.trace.json beside its results NAME.json)")
    return p


def _select(jobs, args):
    pick = lambda text: None if text is None else set(text.split(","))  # noqa: E731
    clusters, schemes = pick(args.clusters), pick(args.schemes)
    def numbers(text: str | None, flag: str) -> set[int] | None:
        try:
            return None if text is None else {int(c) for c in text.split(",")}
        except ValueError:
            raise HarnessError(f"{flag} {text!r}: expected comma-separated integers") from None
    contexts, gpus = numbers(args.contexts, "--contexts"), numbers(args.gpus, "--gpus")
    return [j for j in jobs
            if (clusters is None or j.cluster.name in clusters)
            and (j.scheme.name in schemes if schemes is not None else j.scheme.kind != "single")
            and (contexts is None or j.context in contexts) and (gpus is None or j.num_gpus in gpus)]


def result_path(out_dir: str, job, round_: int) -> str:
    return os.path.join(out_dir, f"{job.cluster.name}_{job.scheme.name}_P{job.num_gpus}_C{job.context}"
                                 f"_r{round_}.json")


_POOL: concurrent.futures.ProcessPoolExecutor | None = None


_COLD = True  # the pool's workers have not run the workload probe yet


def _pool(ranks: int) -> concurrent.futures.ProcessPoolExecutor:
    global _POOL, _COLD
    if _POOL is None or _POOL._max_workers < ranks:  # forked once: workers start at once
        _POOL = concurrent.futures.ProcessPoolExecutor(ranks, mp_context=multiprocessing.get_context("fork"))
        _COLD = True
    return _POOL


def contended_probe_s(ranks: int) -> float:
    """The machine-speed probe run in ``ranks`` processes at once, mean: the speed of one rank's core
    while every rank computes (docs/validation.md, section 3)."""
    futures = [_pool(ranks).submit(speed_probe_s, 15) for _ in range(ranks)]
    return statistics.fmean(f.result() for f in futures)


def workload_probes_s(model_arg: str, dtype: str, ranks: int) -> tuple[float, float]:
    """(``workload_probe_s`` in one pool process, its mean over ``ranks`` processes at once). A new
    pool's workers first run it once each, untimed: a worker's first forwards are up to 3x slower
    (allocations, kernel selection), and one such "alone" probe once made 4 ranks look uncontended."""
    global _COLD
    pool = _pool(ranks)
    if _COLD:
        for f in [pool.submit(workload_probe_s, model_arg, dtype) for _ in range(pool._max_workers)]:
            f.result()
        _COLD = False
    alone = pool.submit(workload_probe_s, model_arg, dtype).result()
    futures = [pool.submit(workload_probe_s, model_arg, dtype) for _ in range(ranks)]
    return alone, statistics.fmean(f.result() for f in futures)


def job_partition(job) -> list[str]:
    """The job's partition flags as the simulator plans it (``sim.partition.plan.plan``: the even split,
    an explicit partition, or the KVR-S search), rank r on GPU r: ``--partition`` tokens per rank
    (``even`` for schemes with one layout: tp's ranks each hold every token, ring-zigzag's two
    pieces), and pipeline's ``--pieces``, which the runtime cuts evenly."""
    from sim.partition import even
    from sim.partition.plan import plan
    from reference.schemes import SCHEMES

    p = plan(job)
    if tuple(p.gpus) != tuple(range(len(p.chunks))):
        raise HarnessError(f"{job.scheme.name}: rank order {p.gpus} is not 0..P-1; the harness puts rank r on "
                           "namespace r")
    flags = ["--partition", ",".join(map(str, p.chunks)) if SCHEMES[job.scheme.kind].uneven else "even"]
    if job.scheme.kind == "pipeline":
        if list(p.pieces) != even(job.context, len(p.pieces)):
            raise HarnessError(f"{job.scheme.name}: pieces {list(p.pieces)} are not even; the runtime cuts "
                               "--pieces N evenly")
        flags += ["--pieces", str(len(p.pieces))]
    return flags


def trace_path(out: str) -> str:
    """A launch's trace: ``traces/NAME.trace.json`` beside its results ``NAME.json`` (not matched by a
    scenario's ``results/*.json``)."""
    return os.path.join(os.path.dirname(out), "traces", os.path.basename(out).removesuffix(".json") + ".trace.json")


def launch_argv(job, *, model_arg: str, dtype: str, args, out: str, link: str) -> list[str]:
    return ["env", f"LOCAL_WORLD_SIZE={os.cpu_count() or 1}",  # -> 1 torch thread per rank
            sys.executable, "-m", "reference.launch", "--model", model_arg, "--scheme", job.scheme.kind,
            *job_partition(job), "--context", str(job.context), "--dtype", dtype,
            "--warmup", str(args.warmup), "--repeat", str(args.repeat), "--out", out, "--link", link,
            "--timeout", str(args.timeout), *(["--trace", trace_path(out)] if args.trace else [])]


def run(args: argparse.Namespace, say=print) -> list[str]:
    """Run every selected job ``rounds`` times; returns the results files written. Raises
    ``RuntimeError`` naming the first failed launch (after tearing its cluster down)."""
    from sim.scenario import load

    scenario = load(args.scenario)
    model_args = _model_args(args.scenario)
    jobs = _select(list(scenario.jobs()), args)
    if not jobs:
        raise HarnessError("no job of the scenario matches --clusters/--schemes/--contexts/--gpus")
    dtype = args.dtype or scenario.dtype
    sizes = busy_cpu_sizes_arg(args)
    check_speed(jobs, say)
    os.makedirs(os.path.join(args.out_dir, "traces") if args.trace else args.out_dir, exist_ok=True)
    written = []
    if sizes:
        host_fit(args, sizes, model_args[jobs[0].model.name], say)
    # One shaped cluster per (cluster, P): ranks 0..P-1 on the cluster's GPUs 0..P-1, as the simulator
    # places them. Single-rank jobs run as one plain process.
    groups: dict[tuple[str, int], list] = {}
    for j in jobs:
        groups.setdefault((j.cluster.name, j.num_gpus), []).append(j)
    total, done, t_start = len(jobs) * args.rounds, 0, time.monotonic()
    for round_ in range(1, args.rounds + 1):
        for (name, width), mine in groups.items():
            matrix, noise, nodes = shaped_links(mine[0].cluster, width, round_)
            with ShapedCluster(width, matrix, noise=noise, nodes=nodes) as cluster:
                for job in mine:
                    written.append(_run_one(cluster, job, round_=round_, model_arg=model_args[job.model.name],
                                            dtype=dtype, args=args, say=say))
                    done += 1
                    elapsed = time.monotonic() - t_start
                    say(f"  [{done}/{total}] {elapsed / 60:.1f} min, about {elapsed / done * (total - done) / 60:.0f} "
                        "min left")
    return written


BUSY_CPU_BANDWIDTH = 100e6  # bytes/s of the 2-rank link the busy-cpu fit streams over (as in docs/netcluster.md)
BUSY_CPU_FIT = os.path.join("host", "busy-cpu-fit.json")  # under OUT_DIR, not matched by its *.json


def busy_cpu_sizes_arg(args) -> list[int]:
    """``--busy-cpu``'s message sizes in bytes ([] without it); a one-line error for a bad list."""
    from reference.netcluster.links import parse_sizes

    if args.busy_cpu is None:
        return []
    try:
        sizes = parse_sizes(args.busy_cpu)
    except ValueError as e:
        raise HarnessError(f"--busy-cpu {args.busy_cpu!r}: {e}") from None
    if len(set(sizes)) < 2:
        raise HarnessError(f"--busy-cpu {args.busy_cpu!r}: needs two different message sizes or more (the fit "
                           "separates a cost a message from a cost a byte)")
    if args.busy_cpu_seconds <= 0 or args.busy_cpu_repeats < 1:
        raise HarnessError("--busy-cpu: needs --busy-cpu-seconds > 0 and --busy-cpu-repeats >= 1")
    return sizes


def host_fit(args, sizes: list[int], model_arg: str, say=print) -> str:
    """The busy-cpu fit on this host before the rounds (``host_probe.busy_cpu_sizes`` over a 2-rank link of
    ``BUSY_CPU_BANDWIDTH``, every core computing forwards of the rounds' own model), written to
    ``OUT_DIR/host/busy-cpu-fit.json`` (a folder of its own, like ``traces/``, so that a scenario's
    ``OUT_DIR/*.json`` reads only results); returns its path."""
    from reference.netcluster.host_probe import busy_cpu_sizes

    say(f"busy-cpu: the CPU a message and a byte cost this host, at {args.busy_cpu} "
        f"({args.busy_cpu_repeats} windows of {args.busy_cpu_seconds:g} s a size)")
    link = LinkSpec(bandwidth_bytes_per_s=BUSY_CPU_BANDWIDTH)
    with ShapedCluster(2, [[None, link], [link, None]]) as cluster:
        fit = busy_cpu_sizes(cluster, model_arg, sizes, window_s=args.busy_cpu_seconds, pairs=args.busy_cpu_repeats,
                             timeout_s=args.timeout, say=lambda line: say(f"  {line}"))
    path = os.path.join(args.out_dir, BUSY_CPU_FIT)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, fit)
    say(f"busy-cpu: wrote {path}; name it in the scenario's measured.host")
    return path


# How far this machine's GEMM probe may stray from the profile's before the harness warns. The speed
# adjustment held within 5% at 0.98-1.05x (2026-12-05); at 1.2x idle (1.3-2.0x during the rounds) a
# tsp/kvr-e control missed by up to 28% (2026-12-07; docs/validation.md, section 8).
SPEED_TOLERANCE = 0.10


def check_speed(jobs, say=print) -> float | None:
    """Take the GEMM speed probe now and say how it compares with the jobs' CPU profile's; warn where it
    is off by more than ``SPEED_TOLERANCE``. Returns the ratio (now / profile's), None without a
    profile probe."""
    from sim.cost.profiled import ProfileCost

    refs = {j.cost_model.profile.get("speed_probe_s") for j in jobs if isinstance(j.cost_model, ProfileCost)}
    refs.discard(None)
    if not refs:
        return None
    ref, now = statistics.median(refs), speed_probe_s()
    ratio = now / ref
    say(f"machine speed: the GEMM probe takes {now * 1e3:.2f} ms here, {ref * 1e3:.2f} ms in the profile "
        f"({ratio:.2f}x)")
    if abs(ratio - 1) > SPEED_TOLERANCE:
        say(f"warning: this machine's probe takes {ratio:.2f}x the profile's time; the comparison's speed "
            f"adjustment is validated only within {SPEED_TOLERANCE:.0%} of it. Measure a profile here first (python -m "
            "reference.measure.profile --model M --device cpu --grid cpu --out P) and point the scenario's "
            "hardware.profile at it.")
    return ratio


def shaped_links(spec, width: int, round_: int):
    """The link matrix, noise flows and nodes of ranks 0..width-1 of the simulator's cluster ``spec``
    (``netcluster.from_cluster_spec``). Latency is not shaped (this kernel has no netem): a scenario's
    latency is this machine's own. A random noise flow's seed changes with the round, so that rounds
    see different draws."""
    matrix, noise, nodes = from_cluster_spec(spec)
    bare = lambda link: LinkSpec(bandwidth_bytes_per_s=link.bandwidth_bytes_per_s)  # noqa: E731 (no latency)
    matrix = [[None if m is None else bare(m) for m in row[:width]] for row in matrix[:width]]
    noise = [n if n.seed is None else dataclasses.replace(n, seed=n.seed + 7919 * round_)
             for n in noise if n.src < width and n.dst < width]
    nodes = nodes.first(width) if nodes is not None else None
    if nodes is not None:
        nodes = dataclasses.replace(nodes, uplink=bare(nodes.uplink), downlink=bare(nodes.downlink))
    return matrix, noise, nodes


def _run_one(cluster: ShapedCluster, job, *, round_: int, model_arg: str, dtype: str, args, say) -> str:
    out = os.path.abspath(result_path(args.out_dir, job, round_))
    how = "shaped" if cluster.shaped else "loopback"
    link = f"cluster={job.cluster.name} ({how}; reference.measure.cluster {os.path.basename(args.scenario)})"
    argv = launch_argv(job, model_arg=model_arg, dtype=dtype, args=args, out=out, link=link)
    probe_before = speed_probe_s(), contended_probe_s(job.num_gpus), workload_probes_s(model_arg, dtype, job.num_gpus)
    t0 = time.monotonic()
    if job.num_gpus == 1:  # single: one plain process, no link involved
        env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "WORLD_SIZE", "RANK")}
        p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=args.timeout)
        results = [RankResult(rank=0, args=argv, returncode=p.returncode, stdout=p.stdout, stderr=p.stderr,
                              timed_out=False, wall_s=time.monotonic() - t0)]
    else:
        results = cluster.run(argv, timeout_s=args.timeout)
    bad = [r for r in results if r.returncode != 0]
    if bad:
        r = bad[0]
        raise RuntimeError(f"{job.cluster.name} {job.scheme.name} P={job.num_gpus} C={job.context} round "
                           f"{round_}: rank {r.rank} exited {r.returncode}{' (timed out)' if r.timed_out else ''}: "
                           f"{r.stderr.strip()[-800:]}")
    # The machine's speed around the run (see timing.speed_probe_s), for the simulator's comparison.
    with open(out, encoding="utf-8") as f:
        results_doc = json.load(f)
    results_doc["speed_probe_s"] = [probe_before[0], speed_probe_s()]
    results_doc["contended_probe_s"] = [probe_before[1], contended_probe_s(job.num_gpus)]
    after = workload_probes_s(model_arg, dtype, job.num_gpus)
    results_doc["workload_probe_s"] = [probe_before[2][0], after[0]]
    results_doc["contended_workload_probe_s"] = [probe_before[2][1], after[1]]
    write_atomic(out, results_doc)
    say(f"round {round_} {job.cluster.name} {job.scheme.name} P={job.num_gpus} C={job.context}: "
        f"{results[0].stdout.strip().splitlines()[-1]} ({time.monotonic() - t0:.1f} s)")
    return out


def _model_args(scenario_path: str) -> dict[str, str]:
    """Model name -> the scenario's own model string (a preset or a config path for --model)."""
    import yaml

    from sim.model import PRESETS, ModelSpec
    from sim.scenario import scenario_path as relative

    with open(scenario_path, encoding="utf-8") as f:
        models = yaml.safe_load(f)["models"]
    base_dir = os.path.dirname(scenario_path)
    args = [m if m in PRESETS else relative(m, base_dir) for m in models]
    return {ModelSpec.resolve(a).name: a for a in args}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.rounds < 1 or args.repeat < 1 or args.warmup < 0:
            raise HarnessError("need --rounds >= 1, --repeat >= 1, --warmup >= 0")
        files = run(args)
    except ValueError as e:
        print(f"reference.measure.cluster: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"reference.measure.cluster: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(files)} results files to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
