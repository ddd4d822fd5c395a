"""Reports of a sweep: the terminal table, CSV and JSON. Plots and traces are in ``plots.py``.

Every TTFT is compared with ``tsp`` at the same model, cluster, GPU count and context (speedup =
TTFT_tsp / TTFT_scheme). The detail section shows, for the largest GPU count and context of each model
and cluster, every rank's busy and idle time and traffic, and the bytes each directed link carried.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Iterable

from .simulate import Job, Result

MB = 1e6


@dataclass(frozen=True)
class Row:
    job: Job
    result: Result
    speedup_vs_tsp: float | None

    @property
    def key(self) -> tuple[str, str, str, int, int]:
        j = self.job
        return (j.model.name, j.cluster.name, j.scheme.name, j.num_gpus, j.context)


def rows(pairs: Iterable[tuple[Job, Result]]) -> list[Row]:
    pairs = list(pairs)
    tsp = {(j.model.name, j.cluster.name, j.num_gpus, j.context): r.ttft_s
           for j, r in pairs if j.scheme.name == "tsp"}
    return [Row(j, r, (tsp[k] / r.ttft_s) if (k := (j.model.name, j.cluster.name, j.num_gpus, j.context)) in tsp
                else None) for j, r in pairs]


def _blocks(table: list[Row]) -> dict[tuple[str, str], list[Row]]:
    out: dict[tuple[str, str], list[Row]] = {}
    for row in table:
        out.setdefault((row.job.model.name, row.job.cluster.name), []).append(row)
    return out


def text(scenario, table: list[Row]) -> str:
    """The terminal report: TTFT per scheme, GPU count and context; then per-rank and per-link detail."""
    s = scenario
    lines = [f"scenario {s.name}: {s.gpu.name} {s.dtype}" + (f" - {s.description}" if s.description else "")]
    for (model, cluster), block in _blocks(table).items():
        lines += ["", f"== {model} on {cluster} ==", "TTFT in ms (speedup over tsp on as many GPUs)"]
        contexts = sorted({r.job.context for r in block})
        lines.append(f"{'scheme':<14}{'GPUs':>5}" + "".join(f"{c:>17}" for c in contexts))
        by_line: dict[tuple[str, int], dict[int, Row]] = {}
        for r in block:
            by_line.setdefault((r.job.scheme.name, r.job.num_gpus), {})[r.job.context] = r
        for (scheme, n), cells in sorted(by_line.items(), key=lambda kv: (kv[0][1], _order(s, kv[0][0]))):
            lines.append(f"{scheme:<14}{n:>5}" + "".join(f"{_cell(cells.get(c)):>17}" for c in contexts))
        lines += _detail(block)
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _order(scenario, scheme: str) -> int:
    return [x.name for x in scenario.schemes].index(scheme)


def _cell(row: Row | None) -> str:
    if row is None:
        return "-"
    ms = f"{row.result.ttft_s * 1e3:.2f}"
    return ms + (f" ({row.speedup_vs_tsp:.2f}x)" if row.speedup_vs_tsp is not None else "        ")


def _detail(block: list[Row]) -> list[str]:
    n = max(r.job.num_gpus for r in block)
    c = max(r.job.context for r in block if r.job.num_gpus == n)
    chosen = [r for r in block if r.job.num_gpus == n and r.job.context == c]
    head = f"{'':<12}" + "".join(f"{r.job.scheme.name:>26}" for r in chosen)
    out = ["", f"On {n} GPUs at C={c}, per rank: chunk tokens, busy/idle ms, sent/received MB", head]
    for k in range(n):
        cells = []
        for r in chosen:
            x = r.result.ranks[k]
            cells.append(f"{r.result.chunks[k]:>6} {x.busy_s * 1e3:.1f}/{x.idle_s * 1e3:.1f} "
                         f"{x.bytes_sent / MB:.0f}/{x.bytes_received / MB:.0f}")
        out.append(f"{'rank ' + str(k):<12}" + "".join(f"{cell:>26}" for cell in cells))
    if any(r.result.gpus != tuple(range(n)) for r in chosen):  # an order other than rank r on GPU r
        out.append(f"{'GPUs':<12}" + "".join(f"{' '.join(map(str, r.result.gpus)):>26}" for r in chosen))
    out += [f"On {n} GPUs at C={c}, MB carried per directed link", head]
    links = sorted({link for r in chosen for link in r.result.link_bytes}, key=str)
    for a, b in links:
        out.append(f"{f'{a}->{b}':<12}" + "".join(f"{r.result.link_bytes.get((a, b), 0) / MB:>26.0f}" for r in chosen))
    return out


# ----- files -----------------------------------------------------------------------------------------
def _record(row: Row) -> dict:
    j, r = row.job, row.result
    return {"model": j.model.name, "cluster": j.cluster.name, "scheme": j.scheme.name, "gpus": j.num_gpus,
            "context": j.context, "ttft_s": r.ttft_s, "speedup_vs_tsp": row.speedup_vs_tsp,
            "makespan_s": r.makespan_s, "chunks": list(r.chunks), "order": list(r.gpus),
            "ranks": [{"rank": x.rank, "busy_s": x.busy_s, "idle_s": x.idle_s, "bytes_sent": x.bytes_sent,
                       "bytes_received": x.bytes_received} for x in r.ranks],
            "links": [{"src": a, "dst": b, "bytes": v}
                      for (a, b), v in sorted(r.link_bytes.items(), key=str)]}


def write_files(scenario, table: list[Row], out_dir: str) -> list[str]:
    """report.json, ttft.csv, ranks.csv, links.csv into ``out_dir``; returns the paths written."""
    records = [_record(row) for row in table]
    keys = ("model", "cluster", "scheme", "gpus", "context")
    paths = []

    def write_csv(name: str, header: list[str], lines: Iterable[list]) -> None:
        path = os.path.join(out_dir, name)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(lines)
        paths.append(path)

    write_csv("ttft.csv", [*keys, "ttft_s", "speedup_vs_tsp", "chunks"],
              ([*(d[k] for k in keys), repr(d["ttft_s"]), "" if d["speedup_vs_tsp"] is None
                else repr(d["speedup_vs_tsp"]), " ".join(map(str, d["chunks"]))] for d in records))
    write_csv("ranks.csv", [*keys, "rank", "busy_s", "idle_s", "bytes_sent", "bytes_received"],
              ([*(d[k] for k in keys), x["rank"], repr(x["busy_s"]), repr(x["idle_s"]), repr(x["bytes_sent"]),
                repr(x["bytes_received"])] for d in records for x in d["ranks"]))
    write_csv("links.csv", [*keys, "src", "dst", "bytes"],
              ([*(d[k] for k in keys), x["src"], x["dst"], repr(x["bytes"])] for d in records for x in d["links"]))
    path = os.path.join(out_dir, "report.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"scenario": scenario.name, "gpu": scenario.gpu.name, "dtype": scenario.dtype,
                   "results": records}, f, indent=1)
        f.write("\n")
    paths.append(path)
    return paths


def run(scenario, progress: bool = True) -> list[Row]:
    """Simulate every job of the scenario's sweep; a progress bar (stderr) appears after a second."""
    from tqdm import tqdm

    from .simulate import simulate

    jobs = list(scenario.jobs())
    bar = tqdm(jobs, desc=scenario.name, unit="sim", delay=1.0, disable=None if progress else True, leave=False)
    return rows((job, simulate(job)) for job in bar)
