"""``python -m sim.regen``: rewrite every ``scenarios/expected/NAME.txt`` from ``scenarios/NAME.yaml``.

The expected report is exactly what ``python -m sim scenarios/NAME.yaml`` prints on stdout;
``tests/sim/test_sim_golden.py`` compares the two. Run this after a deliberate change of the model.
"""
from __future__ import annotations

import glob
import os
import sys

from . import report
from .scenario import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCENARIOS = os.path.join(ROOT, "scenarios")


def expected_path(scenario_path: str) -> str:
    stem = os.path.splitext(os.path.basename(scenario_path))[0]
    return os.path.join(SCENARIOS, "expected", stem + ".txt")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m sim.regen [SCENARIO.yaml ...]  (default: every scenarios/*.yaml)")
        return 0
    paths = argv if argv else sorted(glob.glob(os.path.join(SCENARIOS, "*.yaml")))
    for path in paths:
        scenario = load(path)
        text = report.text(scenario, report.run(scenario, progress=False))
        with open(expected_path(path), "w", encoding="utf-8") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(expected_path(path))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
