"""Per rank, simulated against measured: each rank's compute and its waits inside the decoder layers,
so that a right TTFT cannot hide wrong parts.

Measured: the traced prefill of every round (``reference.launch --trace``, docs/reference.md "Trace"):
a rank's **wait** is the sum of its wait spans inside layers (receives of its predecessor's K/V, the
all-gather, ``Work.wait`` of its sends), its **compute** the rest of its layer spans. Simulated: the
round's re-simulation (``measured.resimulate``, shared cores and gloo semantics): a rank's compute is
the sum of its compute ops in layers, its wait the rest of the span from its first layer op's start to
its last one's end. The rank's value is the median over rounds, simulated and measured alike.

A rank **agrees** when the simulated wait is within ``TOLERANCE`` of the measured one or within
``FLOOR_S`` of it (a rank that hardly waits). Of the ranks that do not, the report counts those whose
simulated wait still lies within the range of waits their rounds measured (``within_rounds``): a miss
the size of the rounds' own spread, where the others miss every round. docs/validation.md, section 8.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .measured import read_trace

TOLERANCE = 0.10
FLOOR_S = 1e-3


@dataclass(frozen=True)
class RankTimes:
    compute_s: float
    wait_s: float
    compute_cpu_s: float | None = None  # measured: the compute's CPU seconds (traces with ``cpu_s``)


def measured_ranks(events: list[dict]) -> list[RankTimes]:
    """Each rank's compute and wait inside its layers, from a measured trace's events (pid = rank + 1);
    with the compute's CPU seconds where every span carries ``cpu_s`` (reference/trace.py)."""
    layer_s: dict[int, float] = {}
    wait_s: dict[int, float] = {}
    cpu_s: dict[int, float | None] = {}  # layers' CPU less waits' CPU; None once a span lacks it
    for e in events:
        if e.get("ph") != "X" or e.get("pid", 0) < 1:
            continue
        rank, cpu = e["pid"] - 1, e.get("args", {}).get("cpu_s")
        if e["cat"] == "layer":
            layer_s[rank] = layer_s.get(rank, 0.0) + e["dur"] / 1e6
        elif e["cat"] == "wait" and e.get("args", {}).get("layer") is not None:
            wait_s[rank] = wait_s.get(rank, 0.0) + e["dur"] / 1e6
            cpu = None if cpu is None else -cpu
        else:
            continue
        so_far = cpu_s.get(rank, 0.0)
        cpu_s[rank] = None if so_far is None or cpu is None else so_far + cpu
    return [RankTimes(compute_s=layer_s[r] - wait_s.get(r, 0.0), wait_s=wait_s.get(r, 0.0), compute_cpu_s=cpu_s[r])
            for r in sorted(layer_s)]


def simulated_ranks(result) -> list[RankTimes]:
    """Each rank's compute in layers, and its wait: the rest of the span of its layer ops."""
    spans: dict[int, list[float]] = {}
    busy: dict[int, float] = {}
    for seg in result.segments:
        if seg.kind != "compute" or seg.layer is None:
            continue
        lo_hi = spans.setdefault(seg.rank, [seg.start_s, seg.end_s])
        lo_hi[0], lo_hi[1] = min(lo_hi[0], seg.start_s), max(lo_hi[1], seg.end_s)
        busy[seg.rank] = busy.get(seg.rank, 0.0) + seg.end_s - seg.start_s
    return [RankTimes(compute_s=busy[r], wait_s=max(0.0, hi - lo - busy[r])) for r, (lo, hi) in sorted(spans.items())]


@dataclass(frozen=True)
class RankRow:
    comparison: object  # measured.Comparison
    rank: int
    sim: RankTimes  # medians over rounds
    meas: RankTimes
    rounds: int
    meas_waits: tuple[float, ...] = ()  # each round's measured wait

    @property
    def within_rounds(self) -> bool:
        """Whether the simulated wait lies within the range of the rounds' measured waits."""
        return bool(self.meas_waits) and min(self.meas_waits) <= self.sim.wait_s <= max(self.meas_waits)

    @property
    def wait_error(self) -> float:
        return (self.sim.wait_s - self.meas.wait_s) / self.meas.wait_s if self.meas.wait_s > 0 else float("inf")

    @property
    def agrees(self) -> bool:
        gap = abs(self.sim.wait_s - self.meas.wait_s)
        return gap <= FLOOR_S or gap <= TOLERANCE * self.meas.wait_s


def compare(comparisons) -> list[RankRow]:
    """Per rank of every configuration whose rounds have traces: simulated and measured compute and wait."""
    rows = []
    for c in comparisons:
        pairs = [(simulated_ranks(sim), measured_ranks(read_trace(trace)))
                 for sim, trace in zip(c.round_results, c.measured.traces) if trace]
        if not pairs:
            continue
        for r in range(len(pairs[0][0])):
            med = lambda side, field: statistics.median(getattr(p[side][r], field) for p in pairs)  # noqa: E731
            rows.append(RankRow(c, r, RankTimes(med(0, "compute_s"), med(0, "wait_s")),
                                RankTimes(med(1, "compute_s"), med(1, "wait_s")), len(pairs),
                                tuple(p[1][r].wait_s for p in pairs)))
    return rows


def text(rows: list[RankRow], *, min_ranks: int = 8) -> str:
    """Per rank compute and wait, simulated and measured, for configurations of at least ``min_ranks``
    ranks, and how many ranks agree (all configurations)."""
    if not rows:
        return ""
    lines = ["", f"== per rank: compute and waits inside the layers, simulated against measured (median of the rounds' "
             f"traced prefills; a rank agrees within {TOLERANCE:.0%} or {FLOOR_S * 1e3:.0f} ms) =="]
    shown = [r for r in rows if len(r.comparison.row.result.chunks) >= min_ranks]
    key = None
    for r in shown:
        j = r.comparison.row.job
        if (j.cluster.name, j.scheme.name, j.num_gpus) != key:
            key = (j.cluster.name, j.scheme.name, j.num_gpus)
            lines.append(f"{j.cluster.name} {j.scheme.name} P={j.num_gpus} C={j.context} ({r.rounds} rounds)")
            lines.append(f"  {'rank':>4}{'tokens':>7}{'compute ms sim':>16}{'meas':>9}{'wait ms sim':>13}{'meas':>9}"
                         f"{'rounds':>14}{'error':>9}  agrees")
        err = "-" if r.meas.wait_s <= 0 else f"{r.wait_error * 100:+.1f}%"
        spread = f"{min(r.meas_waits) * 1e3:.1f}-{max(r.meas_waits) * 1e3:.1f}" if r.meas_waits else "-"
        verdict = "yes" if r.agrees else "NO (in range)" if r.within_rounds else "NO"
        lines.append(f"  {r.rank:>4}{r.comparison.row.result.chunks[r.rank]:>7}{r.sim.compute_s * 1e3:>16.1f}"
                     f"{r.meas.compute_s * 1e3:>9.1f}{r.sim.wait_s * 1e3:>13.1f}{r.meas.wait_s * 1e3:>9.1f}"
                     f"{spread:>14}{err:>9}  {verdict}")
    by_p: dict[int, list[RankRow]] = {}
    for r in rows:
        by_p.setdefault(r.comparison.row.job.num_gpus, []).append(r)
    for p, rs in sorted(by_p.items()):
        waits = [abs(r.sim.wait_s - r.meas.wait_s) for r in rs]
        computes = [abs(r.sim.compute_s - r.meas.compute_s) / r.meas.compute_s for r in rs if r.meas.compute_s > 0]
        misses = [r for r in rs if not r.agrees]
        lines.append(f"P={p}: {sum(r.agrees for r in rs)} of {len(rs)} ranks agree on their wait "
                     f"({sum(r.within_rounds for r in misses)} of the {len(misses)} others within their rounds' "
                     f"range); median |wait gap| {statistics.median(waits) * 1e3:.1f} ms; compute error median "
                     f"{statistics.median(computes) * 100:.1f}%, worst {max(computes) * 100:.1f}%")
    return "\n".join(lines) + "\n"


def plot(rows: list[RankRow], title: str, path: str) -> None:
    """Each rank's wait, simulated against measured, one marker per scheme, one colour per cluster."""
    from .plots import scatter_plot

    points = [(r.comparison.row.job.scheme.name, r.comparison.row.job.cluster.name, r.meas.wait_s * 1e3,
               r.sim.wait_s * 1e3) for r in rows]
    agree = sum(r.agrees for r in rows)
    scatter_plot(points, f"{title}: per-rank waits, {agree} of {len(rows)} agree", "wait", path)
