"""Timed TTFT against the traced prefill of the same launch, and the timed prefills by position, for
shaped-link rounds.

    python -m reference.measure.trace_spans DIR [DIR ...]

Every launch of ``reference.measure.cluster`` times ``--repeat`` prefills and then traces one more
(``reference.timed_prefill``). Per rank count (launches of more than one rank), this prints the mean
of the timed prefills by their position in the launch (first, second, ...; over the launches that
have that many) and in how many launches the second took longer than the first; and, over the
launches with a trace, the timed TTFT median over the traced prefill's span (first layer event of any
rank to the last one's end): median, 10th and 90th percentile. The simulator's
per-rank tables compare with the traced prefill; its TTFT rows with the timed ones
(docs/validation.md, section 8, "Timed against traced").
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys


def span_s(trace_path: str) -> float:
    """Seconds from the first event's start to the last one's end, over every rank of a trace."""
    from sim.validation.measured import read_trace

    events = [e for e in read_trace(trace_path) if e.get("ph") == "X"]
    if not events:
        raise ValueError(f"{trace_path}: no events")
    return (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / 1e6


def ratios(folders: list[str]) -> dict[int, dict]:
    """Rank count -> {"ratios": [timed TTFT median / traced span, ...], "second_slower": n, "pairs": n,
    "positions": [[the first timed prefill of each launch, ...], [the second ...], ...]}."""
    out: dict[int, dict] = {}
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
            if not isinstance(r, dict) or "ttft_s" not in r or r.get("world_size", 1) < 2:
                continue
            row = out.setdefault(r["world_size"], {"ratios": [], "second_slower": 0, "pairs": 0, "positions": []})
            for i, t in enumerate(r["ttft_s"]):
                if i == len(row["positions"]):
                    row["positions"].append([])
                row["positions"][i].append(t)
            if len(r["ttft_s"]) >= 2:
                row["pairs"] += 1
                row["second_slower"] += r["ttft_s"][1] > r["ttft_s"][0]
            trace = os.path.join(os.path.dirname(path), r["trace"]) if r.get("trace") else None
            if trace and os.path.exists(trace):
                row["ratios"].append(r["ttft_median_s"] / span_s(trace))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.measure.trace_spans", description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="folders of results JSON (with traces/ beside them)")
    args = p.parse_args(argv)
    missing = [d for d in args.folders if not os.path.isdir(d)]
    if missing:
        print(f"reference.measure.trace_spans: error: not a folder: {missing[0]}", file=sys.stderr)
        return 2
    try:
        table = ratios(args.folders)
    except (OSError, ValueError, KeyError) as e:
        print(f"reference.measure.trace_spans: error: {e}", file=sys.stderr)
        return 2
    if not table:
        print("reference.measure.trace_spans: error: no launch of 2 ranks or more in these folders", file=sys.stderr)
        return 2
    for world, row in sorted(table.items()):
        means = ", ".join(f"{statistics.fmean(p) * 1e3:.0f}" for p in row["positions"])
        print(f"P={world}: {len(row['positions'][0])} launches; timed prefills by position, mean ms: {means}; "
              f"the second slower than the first in {row['second_slower']} of {row['pairs']}")
        v = sorted(row["ratios"])
        if v:
            print(f"P={world}: {len(v)} traced launches, timed TTFT median / traced span: median "
                  f"{statistics.median(v):.2f}, p10 {v[len(v) // 10]:.2f}, p90 {v[9 * len(v) // 10]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
