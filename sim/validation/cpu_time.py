"""Each measured configuration's compute split into CPU and wall time, from traces that carry ``cpu_s``
(``reference.launch --trace``; docs/reference.md, "Trace"): how long the ranks' compute inside their
layers took, and how much of it their computing thread had a core.

    python -m sim.validation.cpu_time RESULTS_DIR [RESULTS_DIR ...]

For every ``traces/*.trace.json`` under the folders: the median rank's compute wall time (its layer
spans less its waits), compute CPU time (the same spans' ``cpu_s``), and the median over ranks of
wall / CPU. A ratio above 1 is time the rank was runnable or blocked without computing: on a host
whose ranks share its cores, waiting for one (docs/validation.md, section 8c).
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys

from .measured import MeasuredError, read_trace
from .ranks import measured_ranks


def rank_compute(events: list[dict]) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds) of each rank's compute inside its layers (``ranks.measured_ranks``);
    ValueError if the trace has no ``cpu_s``."""
    ranks = measured_ranks(events)
    if any(r.compute_cpu_s is None for r in ranks):
        raise ValueError("no cpu_s in its spans (traced before 2026-12-06's fourth session)")
    return [(r.compute_s, r.compute_cpu_s) for r in ranks]


def table(folders: list[str]) -> str:
    rows = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise ValueError(f"{folder}: no such folder")
        paths = sorted(glob.glob(os.path.join(folder, "traces", "*.trace.json")))
        if not paths:
            raise ValueError(f"{folder}: no traces/*.trace.json")
        for path in paths:
            events = read_trace(path)  # a MeasuredError names the file
            try:
                ranks = rank_compute(events)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            walls, cpus = [w for w, _ in ranks], [c for _, c in ranks]
            ratio = statistics.median(w / c for w, c in ranks if c > 0)
            rows.append(f"{os.path.basename(path).removesuffix('.trace.json'):<34}{len(ranks):>6}"
                        f"{statistics.median(walls) * 1e3:>12.1f}{statistics.median(cpus) * 1e3:>12.1f}{ratio:>12.2f}")
    head = f"{'configuration':<34}{'ranks':>6}{'wall ms':>12}{'CPU ms':>12}{'wall/CPU':>12}"
    return "\n".join(["median rank's compute inside its layers (wall, CPU) and the median rank's wall / CPU",
                      head, *rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.validation.cpu_time",
                                 description="Measured compute split into CPU and wall time, from traces with cpu_s.")
    ap.add_argument("folders", nargs="+", help="results folders of reference.measure.cluster (with traces/)")
    args = ap.parse_args(argv)
    try:
        sys.stdout.write(table(args.folders))
    except (MeasuredError, ValueError) as e:
        print(f"python -m sim.validation.cpu_time: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
