"""Per-rank replays: each rank's share of a scenario's partitions run alone on one device.

    python -m reference.measure.replay SCENARIO.yaml --device cpu|cuda --out results/cpu/replay-NAME.json \\
        [--schemes NAME,...] [--warmup 2] [--repeat 5] [--rounds 1] [--threads 1]

For every model, GPU count, context and scheme of the scenario the partition is the simulator's
(``sim.validation.replay.replay_jobs``). A ``tsp``/``kvr`` rank's chunk runs through the runtime's own
fused model against a local ``KVCache`` holding random K and V of the tokens before it, and, on the
last rank, the LM head. Any other scheme's rank runs the scheme's own prefill alone over a
``SoloTransport`` (``timing.scheme_rank_run``; ``tp``: rank 0 only, every rank's work being the same).
No communication: the compute the simulator counts as the rank's busy time.
Timed as ``profile`` times (``timing.make_timer``), with a speed probe (CPU) or a host probe (GPU)
before every rank. Method, rounds and the comparison (``python -m sim.validation.replay``):
docs/validation.md, "Per-rank replays".
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
from datetime import datetime, timezone

from reference.measure.timing import (MeasureError, device_name, host_probe_s, make_timer, measurement_main,
                                      rank_run, scheme_rank_run, speed_probe_s)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.measure.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", help="scenario YAML whose jobs to replay")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True, help="results JSON path")
    p.add_argument("--schemes", help="replay only these scheme names of the scenario (comma-separated)")
    p.add_argument("--models", help="replay only these model names of the scenario (comma-separated)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1,
                   help="replay every rank this many times, later rounds in a shuffled order; a rank's time is "
                        "the median of its rounds' medians (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (default 1, as a cluster rank)")
    return p


def replay(args: argparse.Namespace, say=print) -> dict:
    """Replay every rank of every job of the scenario (tp: rank 0); the results dict."""
    import torch

    from reference.checkpoint import DTYPES, random_model
    from sim import scenario as scenario_mod
    from sim.partition.plan import plan
    from sim.validation.replay import rank_past, replay_jobs

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeasureError("--device cuda: no CUDA device on this machine")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    scenario = scenario_mod.load(args.scenario)
    dtype_name = scenario.dtype
    dtype = DTYPES[dtype_name]
    timer = make_timer(device, args.warmup, args.repeat)
    cpu = device.type == "cpu"
    only = set(args.schemes.split(",")) if args.schemes else None
    unknown = sorted((only or set()) - {s.name for s in scenario.schemes})
    if unknown:
        raise MeasureError(f"--schemes: {', '.join(unknown)} not in {args.scenario}")
    models_only = set(args.models.split(",")) if args.models else None
    unknown = sorted((models_only or set()) - {m.name for m in scenario.models})
    if unknown:
        raise MeasureError(f"--models: {', '.join(unknown)} not in {args.scenario}")
    tasks = [(job, chunks, r) for job, chunks in replay_jobs(scenario)
             if (only is None or job.scheme.name in only) and (models_only is None or job.model.name in models_only)
             for r in range(1 if job.scheme.kind == "tp" else len(chunks))]
    models, rounds = {}, [[] for _ in tasks]  # rounds[i]: (samples, probe, host probe) of task i, per round
    with torch.no_grad():
        for round_ in range(args.rounds):
            order = list(range(len(tasks)))
            if round_:  # round 1 in the scenario's order, later rounds shuffled (seeded)
                random.Random(round_).shuffle(order)
            for i in order:
                job, chunks, r = tasks[i]
                name, c, past = job.model.name, chunks[r], rank_past(job.context, chunks, r)
                if name not in models:
                    models[name] = (job.model, random_model(job.model, seed=0, device=device, dtype=dtype).fuse_())
                spec, model = models[name]
                probe = speed_probe_s(5) if cpu else None
                host = None if cpu else host_probe_s(model, spec, device, dtype)
                kind = job.scheme.kind
                if kind in ("tsp", "kvr"):
                    run = rank_run(model, spec, device=device, dtype=dtype, chunk=c, past=past,
                                   last=r == len(chunks) - 1, kv_chain=job.gpu.kv_chain if kind == "kvr" else "copy")
                else:  # tp shards a model of its own in place
                    own = random_model(spec, seed=0, device=device, dtype=dtype).fuse_() if kind == "tp" else model
                    run = scheme_rank_run(own, spec, kind=kind, context=job.context, chunks=chunks, rank=r, device=device,
                                          pieces=len(plan(job).pieces))
                samples = timer(run)
                run = own = None  # a tp shard's memory goes before the next task
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rounds[i].append((samples, probe, host))
                say(f"{'' if args.rounds == 1 else f'round {round_ + 1}: '}{name} {job.scheme.name} "
                    f"P={job.num_gpus} C={job.context} rank {r} ({c} tokens, past {past}): "
                    f"{statistics.median(samples) * 1e3:.1f} ms"
                    + ("" if host is None else f" (host probe {host * 1e3:.3f} ms a layer)"))
    entries = []
    for (job, chunks, r), done in zip(tasks, rounds):
        medians = [statistics.median(samples) for samples, _, _ in done]
        probes = [p for _, p, _ in done if p is not None]
        hosts = [h for _, _, h in done if h is not None]
        entries.append({"model": job.model.name, "scheme": job.scheme.name, "kind": job.scheme.kind,
                        "num_gpus": job.num_gpus, "context": job.context, "chunks": list(chunks),
                        "rank": r, "chunk": chunks[r], "past": rank_past(job.context, chunks, r),
                        "samples_s": [x for samples, _, _ in done for x in samples],
                        "median_s": statistics.median(medians), "rounds_median_s": medians,
                        "probe_s": statistics.median(probes) if probes else None,
                        "host_probe_s": statistics.median(hosts) if hosts else None})
    return {
        "schema_version": 1, "scenario": args.scenario, "dtype": dtype_name, "device": device_name(device),
        "device_type": device.type, "threads": torch.get_num_threads() if cpu else None,
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "host": platform.node(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m reference.measure.replay " + " ".join(sys.argv[1:]),
        "warmup": args.warmup, "repeat": args.repeat, "rounds": args.rounds, "replays": entries,
    }


def _check(args: argparse.Namespace) -> None:
    if args.rounds < 1:
        raise MeasureError("need --rounds >= 1")


def main(argv: list[str] | None = None) -> int:
    return measurement_main("reference.measure.replay", _parser(), replay, argv, check=_check)


if __name__ == "__main__":
    sys.exit(main())
