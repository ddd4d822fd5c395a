"""Reports of a sweep: the terminal table, CSV and JSON. Plots and traces are in ``plots.py``.

Every TTFT is compared with ``tsp`` at the same model, cluster, GPU count and context (speedup =
TTFT_tsp / TTFT_scheme). The detail section shows, for the largest GPU count and context of each model
and cluster, every rank's busy and idle time and traffic, and the bytes each directed link carried.
On a cluster with ``noise`` a configuration is run once per draw (``sim/noise.py``): its TTFT is the mean
over the draws, and ``Row.spread`` holds their median and 99th percentile.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from typing import Iterable

from .engine import Result
from .engine import run as run_plan
from .job import JOB_PARTITIONERS, Job
from .memory import MemoryCheck
from .noise import Spread, quiet, run_draws
from .partition import Plan, even
from .partition.plan import plan
from .schemes import memory_check

MB = 1e6
REPORT_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Row:
    job: Job
    result: Result | None  # None: the job does not fit its GPUs' memory (``memory`` says why)
    speedup_vs_tsp: float | None
    memory: MemoryCheck | None = None
    spread: Spread | None = None  # a noisy cluster's TTFT over its draws (``result.ttft_s`` is their mean)

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        j = self.job
        return (j.model.name, j.cluster.name, j.scheme.name, j.num_gpus, j.context)


def rows(runs: Iterable[tuple]) -> list[Row]:
    """Rows of ``(job, result, memory check, spread)`` tuples, with the speedups over tsp."""
    runs = list(runs)
    tsp = {(j.model.name, j.cluster.name, j.num_gpus, j.context): r.ttft_s
           for j, r, _, _ in runs if j.scheme.name == "tsp" and r is not None}
    return [Row(j, r, (tsp[k] / r.ttft_s) if r is not None and (k := (j.model.name, j.cluster.name, j.num_gpus,
                                                                      j.context)) in tsp else None, m, spread)
            for j, r, m, spread in runs]


def _blocks(table: list[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = {}
    for row in table:
        out.setdefault((row.job.model.name, row.job.cluster.name), []).append(row)
    return out


def columns(table: list[list[str]], left: int = 1, gap: int = 2, groups: list[str] | None = None,
            per_group: int = 1) -> list[str]:
    """Rows of cells as aligned lines: each column as wide as its widest cell, the first ``left``
    columns left-aligned, the rest right-aligned. With ``groups``, the columns after the first
    ``left`` come in groups of ``per_group`` (one space apart, ``gap`` + 1 between groups) under a
    line of group names."""
    ncols = max(map(len, table))
    table = [row + [""] * (ncols - len(row)) for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(ncols)]
    if groups:  # a group is at least as wide as its name
        for g, name in enumerate(groups):
            span = slice(left + g * per_group, left + (g + 1) * per_group)
            short = len(name) - (sum(widths[span]) + per_group - 1)
            if short > 0:
                widths[span.start] += short

    def sep(i: int) -> str:
        if i == 0:
            return ""
        if groups and i > left and (i - left) % per_group:
            return " "
        return " " * (gap + (1 if groups and i >= left else 0))

    def line(cells: list[str]) -> str:
        return "".join(sep(i) + (c.ljust(w) if i < left else c.rjust(w))
                       for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(row) for row in table]
    if groups:
        top = ""
        for g, name in enumerate(groups):
            first = left + g * per_group
            at = sum(len(sep(i)) + widths[i] for i in range(first)) + len(sep(first))
            top = top.ljust(at) + name
        out.insert(0, top)
    return out


def text(scenario, table: list[Row]) -> str:
    """The terminal report: TTFT per scheme, GPU count and context; then per-rank and per-link detail."""
    s = scenario
    lines = [f"scenario {s.name}: {s.gpu.name} {s.dtype}" + (f" - {s.description}" if s.description else "")]
    for (model, cluster), block in _blocks(table).items():
        lines += ["", f"== {model} on {cluster} ==", "TTFT in ms (speedup over tsp on as many GPUs)"]
        contexts = sorted({r.job.context for r in block})
        lines += _grid(s, block, contexts, _cell)
        lines += _spread_grid(s, block, contexts)
        lines += _skipped_notes(s, block[0].job.model)
        lines += _memory_notes(block)
        lines += _detail(block)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _order(scenario, scheme: str) -> int:
    return [x.name for x in scenario.schemes].index(scheme)


def _cell(row: Row | None) -> str:
    if row is None:
        return "-"
    if row.result is None:
        return "does not fit"
    ms = f"{row.result.ttft_s * 1e3:.2f}"
    return ms + (f" ({row.speedup_vs_tsp:.2f}x)" if row.speedup_vs_tsp is not None else " " * 8)


def _grid(scenario, block: list[Row], contexts: list[int], cell) -> list[str]:
    """A line per scheme and GPU count (GPU counts up, schemes in the scenario's order), a column per
    context, each cell ``cell(row or None)``."""
    by_line: dict[tuple[str, int], dict[int, Row]] = {}
    for r in block:
        by_line.setdefault((r.job.scheme.name, r.job.num_gpus), {})[r.job.context] = r
    grid = [["scheme", "GPUs", *map(str, contexts)]]
    for (scheme, n), cells in sorted(by_line.items(), key=lambda kv: (kv[0][1], _order(scenario, kv[0][0]))):
        grid.append([scheme, str(n), *(cell(cells.get(c)) for c in contexts)])
    return columns(grid)


def _spread_grid(scenario, block: list[Row], contexts: list[int]) -> list[str]:
    """A noisy cluster's median and 99th percentile TTFT beside the means above."""
    noisy = [r for r in block if r.spread is not None]
    if not noisy:
        return []
    return [f"TTFT p50 / p99 in ms over {noisy[0].spread.seeds} noise draws (the table shows the mean)",
            *_grid(scenario, noisy, contexts, lambda r: "-" if r is None else
                   f"{r.spread.p50_s * 1e3:.2f} / {r.spread.p99_s * 1e3:.2f}")]


def _skipped_notes(scenario, model) -> list[str]:
    """A line per scheme that cannot run some configurations of this model, and why."""
    by_scheme: dict[str, list] = {}
    for scheme, n, context, why in scenario.skipped(model):
        by_scheme.setdefault(scheme, []).append((n, context, why))
    out = []
    for scheme, cases in by_scheme.items():
        reasons = sorted({why for _, _, why in cases})
        out.append(f"{scheme} does not run {len(cases)} configuration{'s' * (len(cases) > 1)}: " + "; ".join(reasons))
    return out


def _memory_notes(block: list[Row]) -> list[str]:
    """A line for the configurations that do not fit, with the largest of them explained."""
    out = [r for r in block if r.result is None]
    if not out:
        return []
    worst = max(out, key=lambda r: r.memory.need_bytes / r.memory.capacity_bytes)
    return [f"does not fit the GPU's memory: {len(out)} configuration{'s' * (len(out) > 1)}; e.g. "
            f"{worst.job.scheme.name} on {worst.job.num_gpus} GPU{'s' * (worst.job.num_gpus > 1)} at "
            f"C={worst.job.context}: {worst.memory.reason()}"]


def _detail(block: list[Row]) -> list[str]:
    block = [r for r in block if r.result is not None]
    if not block:
        return []
    n = max(r.job.num_gpus for r in block)
    c = max(r.job.context for r in block if r.job.num_gpus == n)
    chosen = [r for r in block if r.job.num_gpus == n and r.job.context == c]
    ranks = max(len(r.result.ranks) for r in chosen)  # fewer than GPUs with tensor-parallel groups
    reordered = any(r.result.gpus != tuple(range(len(r.result.ranks))) for r in chosen)  # show each rank's GPU
    sub = ["gpu"] * reordered + ["tokens", "busy", "idle", "sent", "recv"]
    grid = [["", *(name for _ in chosen for name in sub)]]
    for k in range(ranks):
        cells = []
        for r in chosen:
            if k >= len(r.result.ranks):
                cells += [""] * len(sub)
                continue
            x = r.result.ranks[k]
            cells += [str(r.result.gpus[k])] * reordered + [
                str(r.result.chunks[k]), f"{x.busy_s * 1e3:.1f}", f"{x.idle_s * 1e3:.1f}",
                f"{x.bytes_sent / MB:.0f}", f"{x.bytes_received / MB:.0f}"]
        grid.append([f"rank {k}", *cells])
    out = ["", f"On {n} GPUs at C={c}, per rank: {'cluster GPU, ' * reordered}chunk tokens, busy and idle ms, "
           "sent and received MB"]
    out += columns(grid, groups=[r.job.scheme.name for r in chosen], per_group=len(sub))
    links = sorted({link for r in chosen for link in r.result.link_bytes}, key=_link_order)
    grid = [["", *(r.job.scheme.name for r in chosen)]]
    grid += [[f"{a}->{b}", *(f"{r.result.link_bytes.get((a, b), 0) / MB:.0f}" for r in chosen)] for a, b in links]
    out += [f"On {n} GPUs at C={c}, MB carried per directed link", *columns(grid)]
    return out


def _link_order(link) -> tuple:
    """GPUs in numeric order, then switches by name: 0->1, 2->10, 7->network, network->0."""
    return tuple((1, n) if isinstance(n, str) else (0, n) for n in link)


# ----- files -----------------------------------------------------------------------------------------
def _record(row: Row) -> dict:
    j, r, m = row.job, row.result, row.memory
    memory = None if m is None else {"fits": m.fits, "need_bytes": m.need_bytes, "capacity_bytes": m.capacity_bytes,
                                     "worst_rank": m.worst_rank}
    if r is None:  # does not fit: no time
        return {"model": j.model.name, "cluster": j.cluster.name, "scheme": j.scheme.name, "gpus": j.num_gpus,
                "context": j.context, "ttft_s": None, "speedup_vs_tsp": None, "fits": False, "memory": memory,
                "makespan_s": None, "chunks": [], "order": [], "ranks": [], "links": []}
    return {"model": j.model.name, "cluster": j.cluster.name, "scheme": j.scheme.name, "gpus": j.num_gpus,
            "context": j.context, "ttft_s": r.ttft_s, "speedup_vs_tsp": row.speedup_vs_tsp, "fits": True,
            "memory": memory,
            "makespan_s": r.makespan_s, "chunks": list(r.chunks), "order": list(r.gpus),
            "ranks": [{"rank": x.rank, "busy_s": x.busy_s, "idle_s": x.idle_s, "bytes_sent": x.bytes_sent,
                       "bytes_received": x.bytes_received} for x in r.ranks],
            "links": [{"src": a, "dst": b, "bytes": v}
                      for (a, b), v in sorted(r.link_bytes.items(), key=lambda kv: _link_order(kv[0]))]}


def provenance(scenario, overrides: list[str] = ()) -> dict:
    """What made a report's numbers: versions, the cost model each model's questions went to, the
    questions a profile answered beyond its grid, and the ``--set`` overrides."""
    import importlib.metadata
    import platform

    versions = {"python": platform.python_version()}
    for package in ("kvrunahead", "simpy", "networkx", "numpy", "pyyaml", "jsonschema"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    profiles = dict(scenario.profiles)
    sources, extrapolated = {}, {}
    g = scenario.gpu
    for model in scenario.models:
        cost = profiles.get(model.name)
        if cost is None:
            sources[model.name] = (f"analytic: {g.name}, {g.peak_flops_per_s / 1e12:g} TFLOP/s, "
                                   f"{g.hbm_bytes_per_s / 1e9:g} GB/s, efficiencies matmul {g.matmul_efficiency:g} "
                                   f"attention {g.attention_efficiency:g} memory {g.memory_efficiency:g}, "
                                   f"launch {g.launch_overhead_s * 1e6:g} us")
        else:
            sources[model.name] = f"profile: {cost.path} ({cost.device}, {cost.dtype})"
            for k, v in cost.extrapolated.items():
                extrapolated[f"{model.name}: {k}"] = v
    return {"versions": versions, "cost_sources": sources, "extrapolated": extrapolated,
            "overrides": list(overrides)}


def write_files(scenario, table: list[Row], stage, *, made_by: dict | None = None) -> None:
    """report.json, ttft.csv, ranks.csv, links.csv, each to ``stage.path(name)`` (``outputs.Staged``:
    renamed into the output folder together once all are written). report.json follows
    ``sim/schemas/report.schema.json`` and records its provenance (``made_by``: ``provenance()``, taken
    right after the sweep; default: now)."""
    records = [_record(row) for row in table]
    keys = ("model", "cluster", "scheme", "gpus", "context")

    def write_csv(name: str, header: list[str], lines: Iterable[list]) -> None:
        with open(stage.path(name), "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(lines)

    write_csv("ttft.csv", [*keys, "ttft_s", "speedup_vs_tsp", "chunks", "fits", "memory_need_bytes"],
              ([*(d[k] for k in keys), "" if d["ttft_s"] is None else repr(d["ttft_s"]),
                "" if d["speedup_vs_tsp"] is None else repr(d["speedup_vs_tsp"]), " ".join(map(str, d["chunks"])),
                "yes" if d["fits"] else "no", "" if d["memory"] is None else repr(d["memory"]["need_bytes"])]
               for d in records))
    write_csv("ranks.csv", [*keys, "rank", "busy_s", "idle_s", "bytes_sent", "bytes_received"],
              ([*(d[k] for k in keys), x["rank"], repr(x["busy_s"]), repr(x["idle_s"]), repr(x["bytes_sent"]),
                repr(x["bytes_received"])] for d in records for x in d["ranks"]))
    write_csv("links.csv", [*keys, "src", "dst", "bytes"],
              ([*(d[k] for k in keys), x["src"], x["dst"], repr(x["bytes"])] for d in records for x in d["links"]))
    if any(c.noise is not None for c in scenario.clusters):
        write_csv("ttft_spread.csv", [*keys, "seeds", "mean_ttft_s", "p50_ttft_s", "p99_ttft_s"],
                  ([*row.key, row.spread.seeds, repr(row.spread.mean_s), repr(row.spread.p50_s),
                    repr(row.spread.p99_s)] for row in table if row.spread is not None))
    with open(stage.path("report.json"), "w", encoding="utf-8") as f:
        json.dump({"schema_version": REPORT_SCHEMA_VERSION, "scenario": scenario.name, "gpu": scenario.gpu.name,
                   "dtype": scenario.dtype, "provenance": made_by or provenance(scenario), "results": records},
                  f, indent=1)
        f.write("\n")


def run(scenario, *, progress: bool = True, jobs: int = 1, ray: str | None = None) -> list[Row]:
    """Simulate every job of the scenario's sweep, on ``jobs`` processes, or as tasks on the Ray cluster
    at ``ray`` (``ray_sweep.run``: ``"local"`` starts one here); the results are the same either way
    (every job is deterministic and the rows keep the sweep's order). A progress bar (stderr) appears
    after a second."""
    from tqdm import tqdm

    todo = list(scenario.jobs())
    bar = dict(total=len(todo), desc=scenario.name, unit="sim", delay=1.0, disable=None if progress else True,
               leave=False)
    if ray is not None:
        from . import ray_sweep
        return rows(ray_sweep.run(todo, _run_one, ray, bar))
    if jobs <= 1 or len(todo) < 2:
        return rows(_run_one(job) for job in tqdm(todo, **bar))
    import concurrent.futures
    import multiprocessing

    # fork: the workers inherit the loaded scenario (profiles, tables) instead of reading it again.
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        chunk = max(1, len(todo) // (8 * jobs))
        return rows(tqdm(pool.map(_run_one, todo, chunksize=chunk), **bar))


def _run_one(job: Job) -> tuple[Job, Result | None, MemoryCheck | None, Spread | None]:
    """Simulate a job that fits its GPUs' memory (``_fitting_plan``). A job on a noisy cluster is
    planned on the quiet cluster and that plan run under every draw (``sim/noise.py``)."""
    planned, memory = _fitting_plan(job if job.cluster.noise is None
                                    else dataclasses.replace(job, cluster=quiet(job.cluster)))
    if planned is None:
        return job, None, memory, None
    if job.cluster.noise is None:
        return job, run_plan(job, planned), memory, None
    result, spread = run_draws(job, planned)
    return job, result, memory, spread


def _fitting_plan(job: Job) -> tuple[Plan | None, MemoryCheck | None]:
    """The plan ``job`` runs and its memory check, or None where it does not fit: checked first with
    its scheme's own plan (the even partition for a searched or predicted one, so a hopeless job
    costs no search), then with the plan it runs."""
    capacity = job.gpu.memory_bytes
    if capacity is None:
        return plan(job), None
    searched = job.scheme.partitioner in JOB_PARTITIONERS and job.scheme.pinned_gpus is None
    first = Plan(tuple(even(job.context, job.num_gpus)), tuple(range(job.num_gpus))) if searched else plan(job)
    pre = memory_check(job, first, capacity)
    if not pre.fits:
        return None, pre
    planned = plan(job)
    after = memory_check(job, planned, capacity) if searched else pre
    return (planned if after.fits else None), after
