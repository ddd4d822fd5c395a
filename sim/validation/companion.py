"""A front-door scenario's measured counterpart: its ``validated_on`` section names a scenario of real
shaped-link CPU clusters of the same shapes (``scenarios/validate-cluster.yaml``) and which of its
clusters stand for this scenario's. ``python -m sim FRONT.yaml`` prints, after its GPU prediction,
that scenario's simulated-against-measured comparison for those clusters, each configuration's
compute-to-communication ratio beside the GPU one it stands for, the per-rank waits, and how much the
measured competing traffic slowed each scheme (a cluster ``X`` against ``X-quiet``, its links
without the flows). docs/validation.md, section 8.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from .. import report
from ..engine import run as run_plan
from ..partition import Plan
from . import measured as validate
from . import ranks as rank_check

QUIET = "-quiet"


def comm_ratio(result) -> float:
    """Compute over communication: every rank's compute seconds over every rank's seconds receiving
    (the summed durations of the transfers it is the destination of); inf without transfers."""
    received: dict[int, float] = {}
    for seg in result.segments:
        if seg.kind == "transfer":
            received[seg.peer] = received.get(seg.peer, 0.0) + seg.end_s - seg.start_s
    wire = sum(received.values())
    return sum(r.busy_s for r in result.ranks) / wire if wire > 0 else float("inf")


def load(front, path: str):
    """(companion scenario restricted to its named clusters, its measured results, its host's costs), read
    before any simulation so that bad input fails at once."""
    from ..scenario import ScenarioError, load as load_scenario

    spec = front.validated_on
    try:
        comp = load_scenario(spec.scenario)
    except ScenarioError as e:
        raise ScenarioError(f"{path}: validated_on.scenario: {e}") from None
    have = [c.name for c in comp.clusters]
    for i, name in enumerate(spec.clusters):
        if name not in have:
            raise ScenarioError(f"{path}: validated_on.clusters[{i}]: {spec.scenario} has no cluster {name!r} "
                                f"(it has {have})")
    comp = dataclasses.replace(comp, clusters=tuple(c for c in comp.clusters if c.name in spec.clusters))
    if comp.measured is None:
        raise ScenarioError(f"{path}: validated_on.scenario: {spec.scenario} has no `measured` section")
    missing = comp.measured.missing()
    if missing:
        raise ScenarioError(f"{spec.scenario}: {missing[0][0]}: no such file {missing[0][1]}")
    return comp, validate.load_measured(comp.measured.files()), validate.host_terms(comp.measured.host)


def run(front, front_table, comp, results, host, *, jobs: int = 1, progress: bool = False
        ) -> tuple[list[tuple[str, Callable[[str], None]]], str]:
    """The companion's sweep, compared with its measurements: (plots as (file name, draw(path)), text)."""
    import os

    table = report.run(comp, progress=progress, jobs=jobs)
    comparisons = validate.compare(table, results, host)
    head = (f"\n== measured: the same shapes on a real cluster of CPU processes ({os.path.basename(front.validated_on.scenario)}"
            f", clusters {', '.join(front.validated_on.clusters)}) ==")
    out = head + validate.text(comp, comparisons, host=host).removeprefix("\n== simulated against measured ==")
    if not comparisons:
        return [], out
    fronts = _Front(front_table)
    out += ratios_text(front, fronts, comparisons)
    out += noise_text(fronts, comparisons)
    rows = rank_check.compare(comparisons)
    out += rank_check.text(rows)
    stem = f"validation-{comp.name}"
    plots = [(f"{stem}.png", lambda p: validate.plot(comparisons, f"{comp.name} ({front.name}'s shapes)", p, band=0.05))]
    if rows:
        plots.append((f"{stem}-waits.png", lambda p: rank_check.plot(rows, comp.name, p)))
    return plots, out


class _Front:
    """The front door's rows a measured configuration stands for: same cluster name (``X-quiet``: ``X``
    without its flows), scheme, GPU count and the first model; each quiet run simulated once."""

    def __init__(self, front_table):
        self.table = front_table
        self.model = front_table[0].job.model.name
        self._quiet: dict[int, object] = {}

    def rows(self, cluster: str, scheme: str, gpus: int) -> list:
        base = cluster.removesuffix(QUIET)
        return [r for r in self.table if r.result is not None and r.job.cluster.name == base
                and r.job.scheme.name == scheme and r.job.num_gpus == gpus and r.job.model.name == self.model]

    def quiet(self, row):
        """The row's job on its cluster without the competing flows, simulated with the row's own plan
        (a KVR-S or KVR-P partition is the noisy cluster's)."""
        if id(row) not in self._quiet:
            job = dataclasses.replace(row.job, cluster=dataclasses.replace(row.job.cluster, background=()))
            self._quiet[id(row)] = run_plan(job, Plan(tuple(row.result.chunks), tuple(row.result.gpus)))
        return self._quiet[id(row)]

    def result(self, row, cluster: str):
        """The row's result as the cluster ``cluster`` stands for it (quiet for an ``X-quiet``)."""
        return self.quiet(row) if cluster.endswith(QUIET) else row.result


def ratios_text(front, fronts: _Front, comparisons) -> str:
    lines = ["", "compute-to-communication ratio: all ranks' compute seconds over their seconds receiving;",
             "CPU: the measured configuration as simulated (shared cores, median round); GPU: the "
             f"{front.name} configuration it stands for",
             f"({fronts.model}, same cluster, scheme and GPUs, at the nearest context GPU C, "
             "and the range over its contexts)"]
    grid = [["cluster", "scheme", "P", "C", "CPU", "GPU", "GPU C", "GPU range"]]
    for c in comparisons:
        j = c.row.job
        cpu = comm_ratio(c.round_results[len(c.round_results) // 2]) if c.round_results else comm_ratio(c.row.result)
        cells = [j.cluster.name, j.scheme.name, str(j.num_gpus), str(j.context), f"{cpu:.2f}"]
        same = fronts.rows(j.cluster.name, j.scheme.name, j.num_gpus)
        if not same:
            grid.append(cells + ["-", "-", "-"])
            continue
        gpu = min(same, key=lambda r: abs(r.job.context - j.context))
        values = [comm_ratio(fronts.result(r, j.cluster.name)) for r in same]
        grid.append(cells + [f"{comm_ratio(fronts.result(gpu, j.cluster.name)):.2f}", str(gpu.job.context),
                             f"{min(values):.2f}-{max(values):.2f}"])
    return "\n".join(lines + report.columns(grid, left=2)) + "\n"


def noise_text(fronts: _Front, comparisons) -> str:
    """How much competing traffic slows each scheme: TTFT on ``X`` over TTFT on ``X-quiet``, measured,
    simulated, and on the GPU cluster ``X`` of the front door (its flows removed for the quiet run)."""
    by = {(c.row.job.cluster.name, c.row.job.scheme.name, c.row.job.num_gpus): c for c in comparisons}
    grid = [["cluster", "scheme", "P", "measured", "rounds", "simulated", "GPU sim."]]
    for (cluster, scheme, p), quiet in by.items():
        if not cluster.endswith(QUIET) or (noisy := by.get((cluster.removesuffix(QUIET), scheme, p))) is None:
            continue
        per_round = [n / quiet.measured.ttft_s for n in noisy.measured.rounds_s]
        gpu_text = "/".join(f"{r.result.ttft_s / fronts.quiet(r).ttft_s:.2f}" for r in fronts.rows(cluster, scheme, p)) or "-"
        grid.append([cluster.removesuffix(QUIET), scheme, str(p), f"{noisy.measured.ttft_s / quiet.measured.ttft_s:.2f}x",
                     f"{min(per_round):.2f}-{max(per_round):.2f}", f"{noisy.simulated_s / quiet.simulated_s:.2f}x",
                     gpu_text])
    if len(grid) == 1:
        return ""
    head = ["", "competing traffic: TTFT with the flows over TTFT without them; measured: the medians, and each "
            "round over the quiet median;",
            "simulated: the measured rounds re-simulated; GPU sim.: the front door's cluster with and without its "
            "flows, at each of its contexts (first model)"]
    return "\n".join(head + report.columns(grid, left=2)) + "\n"
