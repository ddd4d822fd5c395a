"""The command line: ``python -m sim SCENARIO.yaml [--out DIR] [--timeline SPEC]...`` (docs/simulator.md)."""
from __future__ import annotations

import argparse
import os
import sys

from . import report
from .partition import plan
from .scenario import Scenario, ScenarioError, load
from .simulate import Job, simulate


class UsageError(ValueError):
    """A bad command-line value."""


TIMELINE_HELP = ("SCHEME,GPUS,CONTEXT[,MODEL[,CLUSTER]]: also write a Gantt PNG and a Chrome trace of this "
                 "configuration (MODEL and CLUSTER default to the scenario's first); needs --out; repeatable")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim", description="Simulate the time to first token of "
                                "single, TSP and KV-Runahead prefill on the clusters of a YAML scenario.")
    p.add_argument("scenario", help="scenario YAML file (docs/scenarios.md)")
    p.add_argument("--out", metavar="DIR", help="write report.json, ttft.csv, ranks.csv, links.csv and "
                   "ttft_MODEL_CLUSTER.png plots into DIR (created if missing)")
    p.add_argument("--timeline", metavar="SPEC", action="append", default=[], help=TIMELINE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def timeline_job(scenario: Scenario, spec: str) -> Job:
    """The job a ``--timeline`` SPEC names."""
    parts = spec.split(",")
    if not 3 <= len(parts) <= 5:
        raise UsageError(f"--timeline: must be SCHEME,GPUS,CONTEXT[,MODEL[,CLUSTER]], got {spec!r}")
    scheme_name, gpus, context, model_name, cluster_name = parts + [None] * (5 - len(parts))
    schemes = {s.name: s for s in scenario.schemes}
    models = {m.name: m for m in scenario.models}
    clusters = {c.name: c for c in scenario.clusters}
    if scheme_name not in schemes:
        raise UsageError(f"--timeline: scheme must be one of the scenario's {list(schemes)}, got {scheme_name!r}")
    if model_name is not None and model_name not in models:
        raise UsageError(f"--timeline: model must be one of {list(models)}, got {model_name!r}")
    if cluster_name is not None and cluster_name not in clusters:
        raise UsageError(f"--timeline: cluster must be one of {list(clusters)}, got {cluster_name!r}")
    model = models[model_name] if model_name else scenario.models[0]
    cluster = clusters[cluster_name] if cluster_name else scenario.clusters[0]
    scheme = schemes[scheme_name]
    if not (gpus.isdigit() and context.isdigit() and 1 <= int(gpus) <= min(cluster.num_gpus, int(context))):
        raise UsageError(f"--timeline: GPUS must be 1..{cluster.num_gpus} and CONTEXT an integer >= GPUS, "
                         f"got {gpus!r},{context!r}")
    n = 1 if scheme.kind == "single" else int(gpus)
    job = Job(model=model, gpu=scenario.gpu, dtype=scenario.dtype, cluster=cluster, scheme=scheme,
              context=int(context), num_gpus=n)
    try:
        runs = scheme.runs_at(int(context), n)
        if runs:
            plan(job)  # kvr-s searches and kvr-p looks up here (cached for the run)
    except ValueError as e:  # a fractional partition that leaves a chunk empty, a table without this P
        raise UsageError(f"--timeline: {e}, got {spec!r}") from None
    if not runs:
        raise UsageError(f"--timeline: scheme {scheme_name!r} has no partition for {n} GPUs at context "
                         f"{context}, got {spec!r}")
    return job


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        scenario = load(args.scenario)
        timelines = [timeline_job(scenario, spec) for spec in args.timeline]
        if timelines and not args.out:
            raise UsageError("--timeline: needs --out DIR, got no --out")
        if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UsageError(f"--out: must be a folder, got the file {args.out!r}")
    except (ScenarioError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = report.run(scenario, progress=not args.no_progress)
    sys.stdout.write(report.text(scenario, table))
    if scenario.measured is not None:
        try:
            compare_measured(scenario, table, args.out)
        except ValueError as e:  # a measured results file that cannot be read
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.out:
        write_outputs(scenario, table, timelines, args.out)
    return 0


def compare_measured(scenario: Scenario, table, out_dir: str | None) -> None:
    """Print simulated against measured TTFT and MAPE; plot to ``measured.plot`` (and into --out)."""
    from . import validate

    for _, cost in scenario.profiles:  # count only the measured configurations' questions below
        cost.extrapolated.clear()
    comparisons = validate.compare(table, validate.load_measured(scenario.measured.files()))
    unmatched = [row for row in table if all(c.row is not row for c in comparisons)]
    extrapolated: dict[str, int] = {}
    for _, cost in scenario.profiles:
        for k, v in cost.extrapolated.items():
            extrapolated[k] = extrapolated.get(k, 0) + v
    sys.stdout.write(validate.text(scenario, comparisons, extrapolated, unmatched))
    paths = [p for p in (scenario.measured.plot, out_dir and os.path.join(out_dir, "validation.png")) if p]
    for path in paths if comparisons else []:
        validate.plot(comparisons, scenario.name, path)
        print(f"wrote {path}", file=sys.stderr)
    if scenario.measured.replays:  # each rank's compute run alone, against its simulated busy time
        from . import replay
        rows = replay.compare(scenario, replay.load(list(scenario.measured.replays)))
        sys.stdout.write(replay.text(rows) + "\n")
        plots = [p for p in (scenario.measured.plot, out_dir and os.path.join(out_dir, "validation.png")) if p]
        for path in plots if rows else []:  # beside the TTFT plot: NAME-replays.png
            path = os.path.splitext(path)[0] + "-replays.png"
            replay.plot(rows, scenario.name, path)
            print(f"wrote {path}", file=sys.stderr)


def write_outputs(scenario: Scenario, table, timelines: list[Job], out_dir: str) -> None:
    from . import plots  # matplotlib: only when there is something to draw

    os.makedirs(out_dir, exist_ok=True)
    paths = report.write_files(scenario, table, out_dir)
    for model in scenario.models:
        for cluster in scenario.clusters:
            path = os.path.join(out_dir, f"ttft_{model.name}_{cluster.name}.png")
            plots.ttft_plot(table, model.name, cluster.name, path)
            paths.append(path)
    for job in timelines:
        stem = f"timeline_{job.scheme.name}_{job.num_gpus}gpu_{job.context}_{job.model.name}_{job.cluster.name}"
        title = (f"{job.scheme.name}: {job.model.name}, C={job.context}, {job.num_gpus} GPUs on "
                 f"{job.cluster.name}")
        result = simulate(job)
        plots.timeline_plot(result, f"{title}, TTFT {result.ttft_s * 1e3:.2f} ms", os.path.join(out_dir, stem + ".png"))
        plots.chrome_trace(result, title, os.path.join(out_dir, stem + ".trace.json"))
        paths += [os.path.join(out_dir, stem + ext) for ext in (".png", ".trace.json")]
    print(f"wrote {len(paths)} files to {out_dir}", file=sys.stderr)
