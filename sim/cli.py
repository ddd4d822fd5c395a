"""The command line: ``python -m sim SCENARIO.yaml [--out DIR] [--timeline SPEC]...`` (docs/simulator.md)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Callable

from . import report
from .outputs import OutputError, Staged, check_writable
from .job import Job
from .partition.plan import plan
from .scenario import Scenario, ScenarioError, load
from .simulate import simulate
from .validation.measured import MeasuredError, measured_trace


class UsageError(ValueError):
    """A bad command-line value."""


TIMELINE_HELP = ("SCHEME,GPUS,CONTEXT[,MODEL[,CLUSTER]]: also write a Gantt PNG and a Chrome trace of this "
                 "configuration (MODEL and CLUSTER default to the scenario's first); needs --out; repeatable")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sim", description="Simulate the time to first token of "
                                "single, TSP and KV-Runahead prefill on the clusters of a YAML scenario.")
    p.add_argument("scenario", help="scenario YAML file (docs/scenarios.md)")
    p.add_argument("--out", metavar="DIR", help="write report.json, ttft.csv, ranks.csv, links.csv (and "
                   "ttft_spread.csv with noise) and ttft_MODEL_CLUSTER.png plots into DIR (created if missing)")
    p.add_argument("--timeline", metavar="SPEC", action="append", default=[], help=TIMELINE_HELP)
    p.add_argument("--set", metavar="KEY.PATH=VALUE", action="append", default=[], dest="overrides",
                   help="override a scenario field, e.g. workload.contexts=[4096] or clusters[0].gpus=4 (the "
                   "value is YAML; validated like the file); repeatable")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="simulate on N processes (default: the machine's cores); the results are the same")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="simulate as tasks on a Ray cluster instead (the [ray] extra): ADDRESS as ray.init takes "
                   "it (auto, ray://HOST:10001); none: a Ray instance started on this machine; the results "
                   "are the same")
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
        scenario = load(args.scenario, args.overrides)
        timelines = [timeline_job(scenario, spec) for spec in args.timeline]
        if timelines and not args.out:
            raise UsageError("--timeline: needs --out DIR, got no --out")
        if args.jobs < 1:
            raise UsageError(f"--jobs: must be >= 1, got {args.jobs}")
        if args.ray is not None:
            from . import ray_sweep
            ray_sweep.check()
        if args.out:
            check_writable(args.out)  # before the sweep: a bad folder must not cost the run
        measured = load_measured(scenario, args.scenario)  # an unreadable results file, before the sweep too
        companion = None
        if scenario.validated_on is not None:
            from .validation import companion as companion_check
            companion = companion_check.load(scenario, args.scenario)
    except (ScenarioError, UsageError, OutputError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        table = report.run(scenario, progress=not args.no_progress, jobs=args.jobs, ray=args.ray)
    except ValueError as e:  # ray_sweep.RayError: its cluster cannot be joined
        print(f"error: {e}", file=sys.stderr)
        return 2
    made_by = report.provenance(scenario, args.overrides)  # before the comparison asks the profiles more
    text = report.text(scenario, table)
    sys.stdout.write(text)
    try:
        plots, validation_text = compare_measured(scenario, table, measured) if measured is not None else ([], "")
        if companion is not None:  # the same shapes, measured on a cluster of CPU processes
            more_plots, more_text = companion_check.run(scenario, table, *companion, jobs=args.jobs)
            plots, validation_text = plots + more_plots, validation_text + more_text
        sys.stdout.write(validation_text)
        out_dir = args.out
        if plots and out_dir is None:  # validation plots never go into the repository: a folder of their own
            out_dir = tempfile.mkdtemp(prefix=f"kvr-sim-{scenario.name}-")
        if out_dir:
            write_outputs(scenario, table, timelines, plots, out_dir, everything=args.out is not None,
                          text_report=text, validation_text=validation_text, made_by=made_by)
    except (OutputError, MeasuredError) as e:  # a disk that filled, a measured trace that cannot be read
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def load_measured(scenario: Scenario, path: str):
    """The scenario's measured results and replays, read before anything is simulated (None: no
    ``measured`` section)."""
    if scenario.measured is None:
        return None
    from .validation import measured as validate
    from .validation import replay

    spec = scenario.measured
    missing = spec.missing()
    if missing:
        at, file = missing[0]
        raise UsageError(f"{path}: {at}: no such file {file} (only a glob that matches nothing means "
                         "measurements pending)")
    return (validate.load_measured(spec.files()), replay.load(list(spec.replays)) if spec.replays else [],
            validate.host_terms(spec.host))


def compare_measured(scenario: Scenario, table, measured) -> tuple[list[tuple[str, Callable[[str], None]]], str]:
    """Simulated against measured TTFT and MAPE (and the replays'): the plots to draw as (file name,
    draw(path)), and the text."""
    from .validation import measured as validate
    from .validation import ranks, replay

    results, replays, host = measured
    for _, cost in scenario.profiles:  # count only the measured configurations' questions below
        cost.extrapolated.clear()
    comparisons = validate.compare(table, results, host)
    unmatched = [row for row in table if row.result is not None and all(c.row is not row for c in comparisons)]
    extrapolated: dict[str, int] = {}
    for _, cost in scenario.profiles:
        for k, v in cost.extrapolated.items():
            extrapolated[k] = extrapolated.get(k, 0) + v
    out = validate.text(scenario, comparisons, extrapolated, unmatched, host)
    plots = []
    if comparisons:
        plots.append(("validation.png", lambda path: validate.plot(comparisons, scenario.name, path)))
        rank_rows = ranks.compare(comparisons)  # each rank's compute and waits, where the rounds were traced
        out += ranks.text(rank_rows)
        if rank_rows:
            plots.append(("validation-waits.png", lambda path: ranks.plot(rank_rows, scenario.name, path)))
    if replays:  # each rank's compute run alone, against its simulated busy time
        rows = replay.compare(scenario, replays)
        out += replay.text(rows) + "\n"
        if rows:
            plots.append(("validation-replays.png", lambda path: replay.plot(rows, scenario.name, path)))
    return plots, out


def write_outputs(scenario: Scenario, table, timelines: list[Job], plots, out_dir: str, *,
                  everything: bool, text_report: str = "", validation_text: str = "",
                  made_by: dict | None = None) -> None:
    """Every output file into ``out_dir``, all or nothing (``outputs.Staged``): the report files, TTFT
    plots, winner maps, timelines and ``report.html`` when ``everything`` (an ``--out`` was given),
    and the validation plots."""
    from . import html_report
    from . import plots as drawing  # matplotlib: only when there is something to draw

    images: list[tuple[str, str, str]] = []  # (title, file name, staged path) for report.html
    traces: list[str] = []

    def png(title: str, name: str) -> str:
        path = stage.path(name)
        images.append((title, name, path))
        return path

    with Staged(out_dir, "--out") as stage:
        if everything:
            report.write_files(scenario, table, stage, made_by=made_by)
            contenders = len({s.name for s in scenario.schemes if s.kind != "single"}) > 1
            for model in scenario.models:
                for cluster in scenario.clusters:
                    drawing.ttft_plot(table, model.name, cluster.name,
                                      png("TTFT", f"ttft_{model.name}_{cluster.name}.png"))
                    if contenders:  # which scheme wins where
                        drawing.winner_map(table, model.name, cluster.name,
                                           png("winner map", f"winners_{model.name}_{cluster.name}.png"))
            for job in timelines:
                stem = (f"timeline_{job.scheme.name}_{job.num_gpus}gpu_{job.context}_{job.model.name}_"
                        f"{job.cluster.name}")
                title = (f"{job.scheme.name}: {job.model.name}, C={job.context}, {job.num_gpus} GPUs on "
                         f"{job.cluster.name}")
                result = simulate(job)
                measured = measured_trace(job, result.chunks, scenario.measured.files()) if scenario.measured else None
                drawing.timeline_plot(result, f"{title}, TTFT {result.ttft_s * 1e3:.2f} ms", png(title, stem + ".png"),
                                      measured=measured)
                drawing.chrome_trace(result, title, stage.path(stem + ".trace.json"), measured=measured)
                traces.append(stem + ".trace.json")
        for name, draw in plots:
            draw(png(name.removesuffix(".png"), name))
        if everything:
            html_report.write(stage.path("report.html"), scenario, table, text_report=text_report, images=images,
                              traces=traces, validation_text=validation_text)
    print(f"wrote {len(stage.finals)} files to {out_dir}", file=sys.stderr)
