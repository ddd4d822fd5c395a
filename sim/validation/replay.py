"""Per-rank replays against the simulator's per-rank compute.

A replay (``python -m reference.measure.replay``, docs/validation.md) runs each rank's share of a ``tsp`` or
``kvr`` partition alone on one device: the rank's chunk through every layer, with a local KV-cache
holding its past (the ``sum(chunks[:r])`` preceding tokens' K and V; for both schemes the rank then
attends to keys [0, end of its chunk)), no communication. This module compares each replayed rank with
the simulator's busy (compute-only) time of the same rank: ``simulate(job).ranks[r].busy_s``, with the
partition that was replayed and, where the job runs on a profile, its compute scaled to the replay's
speed probe (``ProfileCost.scaled``, docs/validation.md section 3) and, on GPUs, its host floor to the
replay's host probe (``ProfileCost.host_scaled``: the host's pace, which sets small chunks' time,
differs from process to process). Transfers and waiting are not in either number. Error = (simulated -
measured) / measured; ``unadjusted_s`` is the simulation without the host probe.
"""
from __future__ import annotations

import dataclasses
import glob
import json
from dataclasses import dataclass

from ..job import Job, SchemeSpec
from ..schemas import SchemaError, validate
from ..partition.plan import plan
from ..simulate import simulate


class ReplayError(ValueError):
    """A replay results file that cannot be read or matched."""


@dataclass(frozen=True, kw_only=True)
class ReplayRow:
    model: str
    scheme: str
    num_gpus: int
    context: int
    rank: int
    chunk: int
    past: int
    simulated_s: float
    measured_s: float
    unadjusted_s: float | None = None  # simulated without the host probe (None: no probe to adjust to)

    @property
    def error(self) -> float:
        return (self.simulated_s - self.measured_s) / self.measured_s


def replay_jobs(scenario) -> list[tuple[Job, tuple[int, ...]]]:
    """The scenario's distinct jobs but ``single`` as (job, chunks); a job per (model, scheme, P, C,
    partition): clusters change the compute of no rank, only a searched partition (``kvr-s``). Jobs
    the scheme cannot run (``supports``) are left out."""
    from ..schemes import unsupported
    seen, out = set(), []
    for job in scenario.jobs():
        if job.scheme.kind == "single" or unsupported(job.scheme.kind, job.model, job.num_gpus, job.context,
                                                        job.scheme.tp or 1):
            continue
        chunks = tuple(plan(job).chunks)
        key = (job.model.name, job.scheme.name, job.num_gpus, job.context, chunks)
        if key not in seen:
            seen.add(key)
            out.append((job, chunks))
    return out


def rank_past(context: int, chunks, r: int) -> int:
    """Tokens before rank r's chunk (the past it attends to) where the ranks split the prompt; 0 where
    every rank runs all of it (tp, pipeline: their chunks are ``[C] * P``)."""
    return sum(chunks[:r]) if sum(chunks) == context else 0


def simulated_busy_s(job: Job, chunks: tuple[int, ...], probe_s: float | None,
                     host_probe_s: float | None = None) -> list[float]:
    """Each rank's simulated compute seconds for ``job`` with ``chunks``, at the speed of ``probe_s``
    and the host pace of ``host_probe_s``."""
    scheme = job.scheme
    if scheme.kind == "kvr":  # the replayed partition, not a new search
        scheme = SchemeSpec(name=scheme.name, kind="kvr", tokens=((job.context, tuple(chunks)),))
    cost = job.cost_model
    if cost is not None and hasattr(cost, "scaled"):
        ref = cost.profile.get("speed_probe_s")
        cost = cost.scaled(probe_s / ref if ref and probe_s else 1.0).host_scaled(host_probe_s)
    result = simulate(dataclasses.replace(job, scheme=scheme, cost_model=cost))
    assert tuple(result.chunks) == tuple(chunks), (result.chunks, chunks)
    return [r.busy_s for r in result.ranks]


def load(patterns: list[str]) -> list[dict]:
    """Every replay entry of the files matching ``patterns``."""
    entries = []
    for path in sorted({p for pat in patterns for p in glob.glob(pat)}):
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            validate(doc, "replay", path)
            entries += [dict(e, source=path) for e in doc["replays"]]
        except SchemaError as e:
            raise ReplayError(f"replay results {e}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReplayError(f"replay results {path}: {e}") from None
    return entries


def compare(scenario, entries: list[dict]) -> list[ReplayRow]:
    """A row per replayed rank that matches a job of the scenario (model, scheme name, P, C, chunks)."""
    jobs = {(j.model.name, j.scheme.name, j.num_gpus, j.context, c): j for j, c in replay_jobs(scenario)}
    rows, plain = [], {}  # plain: a job's busy times without a host probe, the same for all its ranks
    for e in entries:
        chunks = tuple(e["chunks"])
        match = (e["model"], e["scheme"], e["num_gpus"], e["context"], chunks)
        job = jobs.get(match)
        if job is None:
            continue
        r, probe, host = e["rank"], e.get("probe_s"), e.get("host_probe_s")
        key = (*match, probe)
        if key not in plain:
            plain[key] = simulated_busy_s(job, chunks, probe)
        busy = simulated_busy_s(job, chunks, probe, host) if host else plain[key]
        rows.append(ReplayRow(model=e["model"], scheme=e["scheme"], num_gpus=e["num_gpus"], context=e["context"],
                              rank=r, chunk=chunks[r], past=rank_past(e["context"], chunks, r), simulated_s=busy[r],
                              measured_s=e["median_s"], unadjusted_s=plain[key][r] if host else None))
    return rows


def mape(rows: list[ReplayRow], *, unadjusted: bool = False) -> float:
    """Mean absolute error; ``unadjusted``: of the simulation without the host probe, where there is one."""
    sim = lambda r: r.unadjusted_s if unadjusted and r.unadjusted_s is not None else r.simulated_s  # noqa: E731
    return sum(abs(sim(r) - r.measured_s) / r.measured_s for r in rows) / len(rows)


def text(rows: list[ReplayRow]) -> str:
    """The per-rank table and the MAPE (per scheme and over all); where replays carry a host probe, also
    the simulation without it (``unadj.``)."""
    probed = any(r.unadjusted_s is not None for r in rows)
    lines = ["", "== per-rank replays: simulated compute against each rank run alone ==",
             f"{'model':<16}{'scheme':<8}{'P':>3}{'C':>7}{'rank':>6}{'chunk':>7}{'past':>7}"
             f"{'sim ms':>10}{'meas ms':>10}{'error':>9}" + (f"{'unadj. ms':>11}{'error':>9}" if probed else "")]
    if not rows:
        return "\n".join(lines + ["no replay results match this scenario's jobs"])
    for r in rows:
        unadj = ""
        if probed:
            unadj = (f"{r.unadjusted_s * 1e3:>11.1f}{(r.unadjusted_s / r.measured_s - 1) * 100:>8.1f}%"
                     if r.unadjusted_s is not None else f"{'-':>11}{'-':>9}")
        lines.append(f"{r.model:<16}{r.scheme:<8}{r.num_gpus:>3}{r.context:>7}{r.rank:>6}{r.chunk:>7}{r.past:>7}"
                     f"{r.simulated_s * 1e3:>10.1f}{r.measured_s * 1e3:>10.1f}{r.error * 100:>8.1f}%{unadj}")
    if probed:
        lines.append("unadj.: simulated without the replay's host probe (the profile's host floor as it was measured)")

    def line(label: str, sub: list[ReplayRow]) -> str:
        extra = f" (without the host probe: {mape(sub, unadjusted=True) * 100:.1f}%)" if probed else ""
        return f"MAPE {label}: {mape(sub) * 100:.1f}% over {len(sub)} ranks{extra}"
    for scheme in dict.fromkeys(r.scheme for r in rows):
        lines.append(line(scheme, [r for r in rows if r.scheme == scheme]))
    lines.append(line("per-rank replays", rows))
    return "\n".join(lines)


def plot(rows: list[ReplayRow], title: str, path: str) -> None:
    """Each replayed rank's simulated against measured compute (log axes), one marker per scheme, one
    colour per model."""
    from .plots import scatter_plot

    points = [(r.scheme, r.model, r.measured_s * 1e3, r.simulated_s * 1e3) for r in rows]
    scatter_plot(points, f"{title} per-rank replays: MAPE {mape(rows) * 100:.1f}% over {len(rows)} ranks",
                 "rank compute", path, log=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.validation.replay SCENARIO.yaml RESULTS.json...``: the per-rank table and MAPE."""
    import sys

    from ..scenario import load as load_scenario

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print("usage: python -m sim.validation.replay SCENARIO.yaml RESULTS.json...\n\n" + (main.__doc__ or ""))
        return 0
    if len(argv) < 2:
        print("usage: python -m sim.validation.replay SCENARIO.yaml RESULTS.json...", file=sys.stderr)
        return 2
    try:
        print(text(compare(load_scenario(argv[0]), load(argv[1:]))))
    except ValueError as e:
        print(f"sim.validation.replay: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
