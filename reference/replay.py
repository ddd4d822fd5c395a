"""Per-rank replays: each rank's share of a scenario's ``tsp``/``kvr`` partitions run alone on one device.

    python -m reference.replay SCENARIO.yaml --device cpu|cuda --out results/cpu/replay-NAME.json \\
        [--schemes NAME,...] [--warmup 2] [--repeat 5] [--rounds 1] [--threads 1]

For every model, GPU count, context and ``tsp``/``kvr`` scheme of the scenario, the partition is the
simulator's (``sim.partition.plan(job)``; a searched ``kvr-s`` partition may differ between clusters,
and each distinct one is replayed). Rank r's chunk of c_r tokens then runs through the runtime's own
model (a seeded random model built by ``reference.checkpoint``, fused as ``reference.launch`` fuses it):
the embedding, every decoder layer with a local ``KVCache`` pre-filled with random K and V of the
``sum(chunks[:r])`` tokens before it (kvr: the cache rank r-1 sends; tsp: the gathered keys
[0, start of its chunk)), and, on the last rank, the final norm and LM head. No communication: this is
the compute the simulator counts as the rank's busy time (``sim.replay``).

Timing as ``reference.profile``: CUDA events or ``time.perf_counter``, ``--warmup`` untimed runs, the
median of ``--repeat``; with ``--rounds N`` every rank is replayed N times, rounds after the first in a
shuffled order, and its time is the median of its rounds' medians (a stall of the host then hits one
round of a rank, not the rank); on CPUs a speed probe before every rank (``probe_s``; with rounds, the
median of the rounds' probes), so the comparison can scale the profile to the replay's speed; on GPUs
a host probe before every rank (``host_probe_s``, ``reference.profile.host_probe_s``: the host's time
per layer to issue a small forward), so it can scale the profile's host floor to the host's pace.
Compare: ``python -m sim.replay SCENARIO.yaml RESULTS.json``, or name the file under the scenario's
``measured: {replays: [...]}``. Docs: docs/validation.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
from datetime import datetime, timezone

from reference.profile import (ProfileError, _device_name, host_probe_s, make_timer, measurement_main,
                               speed_probe_s)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.replay", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", help="scenario YAML whose tsp/kvr jobs to replay")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", required=True, help="results JSON path")
    p.add_argument("--schemes", help="replay only these scheme names of the scenario (comma-separated)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1,
                   help="replay every rank this many times, later rounds in a shuffled order; a rank's time is "
                        "the median of its rounds' medians (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (default 1, as a cluster rank)")
    return p


def rank_run(model, spec, device, dtype, chunk: int, past: int, last: bool, seed: int = 0):
    """A function running one rank's compute: ``chunk`` tokens at positions [past, past + chunk) through
    every layer against a local cache holding ``past`` tokens' K and V; the LM head if ``last``.
    The model's own forward, so on CUDA small chunks run as CUDA graphs as in ``reference.launch``."""
    import torch

    from reference.kvcache import KVCache

    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (1, chunk), generator=g, device=device)
    shape = (1, spec.num_kv_heads, past, spec.head_dim)
    pasts = [(torch.randn(*shape, generator=g, device=device, dtype=dtype),
              torch.randn(*shape, generator=g, device=device, dtype=dtype)) for _ in range(spec.num_layers)]

    def run():
        cache = KVCache(spec.num_layers)
        if past:
            for i, (k, v) in enumerate(pasts):
                cache.k[i], cache.v[i] = k, v
        x = model.hidden(ids, past, cache)
        if last:
            return int(model.head(x)[0].argmax())
        return x
    return run


def replay(args: argparse.Namespace, say=print) -> dict:
    """Replay every rank of every tsp/kvr job of the scenario; the results dict."""
    import torch

    from reference.checkpoint import DTYPES, random_model
    from sim import scenario as scenario_mod
    from sim.replay import replay_jobs

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProfileError("--device cuda: no CUDA device on this machine")
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
        raise ProfileError(f"--schemes: {', '.join(unknown)} not in {args.scenario}")
    tasks = [(job, chunks, r) for job, chunks in replay_jobs(scenario)
             if only is None or job.scheme.name in only for r in range(len(chunks))]
    models, rounds = {}, [[] for _ in tasks]  # rounds[i]: (samples, probe, host probe) of task i, per round
    with torch.no_grad():
        for round_ in range(args.rounds):
            order = list(range(len(tasks)))
            if round_:  # round 1 in the scenario's order, later rounds shuffled (seeded)
                random.Random(round_).shuffle(order)
            for i in order:
                job, chunks, r = tasks[i]
                name, c, past = job.model.name, chunks[r], sum(chunks[:r])
                if name not in models:
                    models[name] = (job.model, random_model(job.model, 0, device, dtype).fuse_())
                spec, model = models[name]
                probe = speed_probe_s(5) if cpu else None
                host = None if cpu else host_probe_s(model, spec, device, dtype)
                samples = timer(rank_run(model, spec, device, dtype, c, past, r == len(chunks) - 1))
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
                        "rank": r, "chunk": chunks[r], "past": sum(chunks[:r]),
                        "samples_s": [x for samples, _, _ in done for x in samples],
                        "median_s": statistics.median(medians), "rounds_median_s": medians,
                        "probe_s": statistics.median(probes) if probes else None,
                        "host_probe_s": statistics.median(hosts) if hosts else None})
    return {
        "schema_version": 1, "scenario": args.scenario, "dtype": dtype_name, "device": _device_name(device),
        "device_type": device.type, "threads": torch.get_num_threads() if cpu else None,
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "host": platform.node(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m reference.replay " + " ".join(sys.argv[1:]),
        "warmup": args.warmup, "repeat": args.repeat, "rounds": args.rounds, "replays": entries,
    }


def _check(args: argparse.Namespace) -> None:
    if args.rounds < 1:
        raise ProfileError("need --rounds >= 1")


def main(argv: list[str] | None = None) -> int:
    return measurement_main("reference.replay", _parser(), replay, argv, check=_check)


if __name__ == "__main__":
    sys.exit(main())
