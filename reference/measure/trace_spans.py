"""Timed TTFT against the traced prefill of the same launch, for shaped-link rounds.

    python -m reference.measure.trace_spans DIR [DIR ...]

Every launch of ``reference.measure.cluster`` times ``--repeat`` prefills and then traces one more
(``reference.timed_prefill``). For each results file in the folders that has a trace and more than
one rank, this takes the traced prefill's span (first layer event of any rank to the last one's end)
and prints, per rank count, the timed TTFT median over that span (median, 10th and 90th percentile)
and in how many launches the second timed prefill took longer than the first. The simulator's
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
    with open(trace_path, encoding="utf-8") as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    if not events:
        raise ValueError(f"{trace_path}: no events")
    return (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) / 1e6


def ratios(folders: list[str]) -> dict[int, dict]:
    """Rank count -> {"ratios": [timed TTFT median / traced span, ...], "second_slower": n, "pairs": n}."""
    out: dict[int, dict] = {}
    for folder in folders:
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
            if not isinstance(r, dict) or not r.get("trace") or r.get("world_size", 1) < 2:
                continue
            trace = os.path.join(os.path.dirname(path), r["trace"])
            if not os.path.exists(trace):
                continue
            row = out.setdefault(r["world_size"], {"ratios": [], "second_slower": 0, "pairs": 0})
            row["ratios"].append(r["ttft_median_s"] / span_s(trace))
            if len(r["ttft_s"]) >= 2:
                row["pairs"] += 1
                row["second_slower"] += r["ttft_s"][1] > r["ttft_s"][0]
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
        print("reference.measure.trace_spans: error: no traced launch of 2 ranks or more in these folders",
              file=sys.stderr)
        return 2
    for world, row in sorted(table.items()):
        v = sorted(row["ratios"])
        print(f"P={world}: {len(v)} launches, timed TTFT median / traced span: median {statistics.median(v):.2f}, "
              f"p10 {v[len(v) // 10]:.2f}, p90 {v[9 * len(v) // 10]:.2f}; the second timed prefill slower than "
              f"the first in {row['second_slower']} of {row['pairs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
