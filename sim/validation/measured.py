"""Simulated against measured: a scenario's ``measured:`` results JSON files (written by
``reference.launch``, schema in docs/reference.md) matched to the scenario's jobs, with each
configuration's error and the mean absolute percentage error (MAPE).

A measured result matches a job when model name, scheme kind, world size, context and partition are
the job's, and its ``link`` field names the job's cluster (``cluster=NAME``, as
``reference.measure.cluster`` writes it). Several results of one configuration (repeated rounds) are
pooled: the measured TTFT is the median of the rounds' medians, and the spread of the rounds is shown.

Machine speed: where the job's cost model is a CPU profile (``sim.cost.profiled.ProfileCost``) and a round
carries the harness's ``speed_probe_s``, the round is simulated again with the profile scaled by
that round's probe over the profile's (``ProfileCost.scaled``; the partition is the one measured), and
the simulated TTFT is the median over the rounds. The unadjusted simulation is shown beside it.

Error = (simulated - measured) / measured. Docs: docs/validation.md.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import statistics
from dataclasses import dataclass

from ..cost.profiled import ProfileCost
from ..engine import run
from ..engine.cpu_cluster import BUSY_WAKE_S, NET_CPU_S_PER_BYTE, NET_CPU_S_PER_MESSAGE, cpu_cluster_sim
from ..partition import Plan
from ..partition.plan import plan
from ..report import Row
from ..schemas import SchemaError, validate
from .plots import scatter_plot


class MeasuredError(ValueError):
    """A measured results file that cannot be read."""


@dataclass(frozen=True)
class Measured:
    """The pooled measurement of one configuration."""

    ttft_s: float  # median of the rounds' medians
    rounds_s: tuple[float, ...]  # each round's median TTFT
    files: tuple[str, ...]
    probes_s: tuple[float | None, ...] = ()  # each round's machine-speed probe (mean of before, after)
    contention: tuple[float | None, ...] = ()  # each round's workload (else GEMM) probe in P processes over one
    traces: tuple[str | None, ...] = ()  # each round's traced prefill (reference.launch --trace), absolute
    workloads_s: tuple[float | None, ...] = ()  # each round's workload probe alone (mean of before, after)

    @property
    def contention_range(self) -> str:
        known = [c for c in self.contention if c]
        return f"{min(known):.2f}-{max(known):.2f}" if known else "-"


def cluster_of(link: str | None) -> str | None:
    """The cluster name in a results file's ``link`` field (``cluster=NAME ...``)."""
    m = re.search(r"cluster=([^\s;,]+)", link or "")
    return m.group(1) if m else None


def _key(model: str, cluster: str | None, kind: str, world: int, context: int, chunks) -> tuple:
    return (model, cluster, kind, world, context, tuple(chunks))


@dataclass(frozen=True)
class HostTerms:
    """What a message and a byte moved cost the ranks' host (``cpu_cluster_sim``'s
    ``net_cpu_s_per_message`` and ``net_cpu_s_per_byte``), and where they come from."""
    per_byte_s: float = NET_CPU_S_PER_BYTE
    per_message_s: float = NET_CPU_S_PER_MESSAGE
    source: str = "sim.engine.cpu_cluster's NET_CPU_S_PER_MESSAGE and NET_CPU_S_PER_BYTE"


def host_terms(path: str | None) -> HostTerms:
    """The scenario's ``measured.host``: the fit of ``python -m reference.netcluster busy-cpu --sizes A,B,...``
    taken on the rounds' host (``busy-cpu-fit/1``); without one, the engine's constants."""
    if path is None:
        return HostTerms()
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise MeasuredError(f"{path}: measured.host cannot be read as JSON ({e})") from None
    ok = isinstance(doc, dict) and doc.get("schema") == "busy-cpu-fit/1" and all(
        isinstance(doc.get(k), (int, float)) and doc[k] >= 0 for k in ("per_byte_s", "per_message_s"))
    if not ok:
        raise MeasuredError(f"{path}: measured.host is not a busy-cpu fit (schema busy-cpu-fit/1 with per_byte_s "
                            "and per_message_s >= 0: python -m reference.netcluster busy-cpu --sizes 256KB,1MB,4MB)")
    return HostTerms(float(doc["per_byte_s"]), float(doc["per_message_s"]), path)


def load_measured(files: list[str]) -> dict[tuple, Measured]:
    """Results files -> pooled measurements by (model, cluster, scheme kind, P, C, partition)."""
    by_key: dict[tuple, list[tuple[float, str, float | None]]] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
            validate(r, "results", path)
            key = _key(r["model"]["name"], cluster_of(r.get("link")), r["scheme"], r["world_size"],
                       r["context"], r["partition"])
            probe = statistics.fmean(r["speed_probe_s"]) if r.get("speed_probe_s") else None
            busy = statistics.fmean(r["contended_probe_s"]) if r.get("contended_probe_s") else None
            contention = busy / probe if busy and probe else None
            if r.get("workload_probe_s") and r.get("contended_workload_probe_s"):
                # the ranks' own work in P processes over one (reference.measure.timing.workload_probe_s)
                contention = statistics.fmean(r["contended_workload_probe_s"]) / statistics.fmean(r["workload_probe_s"])
            trace = os.path.join(os.path.dirname(os.path.abspath(path)), r["trace"]) if r.get("trace") else None
            workload = statistics.fmean(r["workload_probe_s"]) if r.get("workload_probe_s") else None
            by_key.setdefault(key, []).append((float(r["ttft_median_s"]), path, probe, contention, trace, workload))
        except SchemaError as e:
            raise MeasuredError(f"measured results {e}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MeasuredError(f"measured results {path}: {e}") from None
    return {k: Measured(statistics.median(x[0] for x in v), tuple(x[0] for x in v), tuple(x[1] for x in v),
                        tuple(x[2] for x in v), tuple(x[3] for x in v), tuple(x[4] for x in v),
                        tuple(x[5] for x in v))
            for k, v in by_key.items()}


def job_key(job, chunks) -> tuple:
    return _key(job.model.name, job.cluster.name, job.scheme.kind, job.num_gpus, job.context, chunks)


@dataclass(frozen=True)
class Comparison:
    row: Row
    measured: Measured
    simulated_s: float  # median over the rounds of each round's simulation; else the row's TTFT
    speed_factors: tuple[float, ...] = ()  # per round: its probe / the profile's
    round_errors: tuple[float, ...] = ()  # per round: (its simulation - its measurement) / its measurement
    round_results: tuple = ()  # per round: its simulation (``engine.Result``, the first noise phase)

    @property
    def error(self) -> float:
        """The median of the rounds' errors, each round simulated under its own conditions; without
        per-round simulations, (simulated - measured) / measured."""
        if self.round_errors:
            return statistics.median(self.round_errors)
        return (self.simulated_s - self.measured.ttft_s) / self.measured.ttft_s

    @property
    def raw_error(self) -> float:
        return (self.row.result.ttft_s - self.measured.ttft_s) / self.measured.ttft_s


def compare(table: list[Row], measured: dict[tuple, Measured], host: HostTerms = HostTerms()) -> list[Comparison]:
    """The rows that have a measurement, paired with it (and re-simulated at each round's speed, on a
    host whose messages cost ``host``)."""
    out = []
    for row in table:
        if row.result is None:  # does not fit: nothing simulated to compare
            continue
        m = measured.get(job_key(row.job, row.result.chunks))
        if m is not None:
            factors = _speed_factors(row.job, m)
            contention = m.contention if len(m.contention) == len(factors) else (None,) * len(factors)
            runs = [resimulate(row, f, c, host) for f, c in zip(factors, contention)]
            sims = [ttft for ttft, _ in runs]
            errors = tuple((s - t) / t for s, t in zip(sims, m.rounds_s))
            out.append(Comparison(row, m, statistics.median(sims) if sims else row.result.ttft_s, factors, errors,
                                  tuple(result for _, result in runs)))
    return out


def _speed_factors(job, m: Measured) -> tuple[float, ...]:
    """Per round, how much slower than the profile's its machine ran: its workload probe over the
    profile's (``workload_probe_s``, reference/measure/workload_bridge.py) where both have one, else its
    GEMM probe over the profile's; 1.0 where neither pair exists; () without a profile. The workload
    probe is the ranks' own work; the GEMM probe's relation to it changes from day to day
    (docs/validation.md, section 3)."""
    cost = job.cost_model
    if not isinstance(cost, ProfileCost):
        return ()
    ref, ref_workload = cost.profile.get("speed_probe_s"), cost.profile.get("workload_probe_s")
    workloads = m.workloads_s if len(m.workloads_s) == len(m.probes_s) else (None,) * len(m.probes_s)
    return tuple(w / ref_workload if ref_workload and w else p / ref if ref and p else 1.0
                 for p, w in zip(m.probes_s, workloads))


# On and off competing flows start with the measured run's processes, seconds before the timed prefills,
# so a prefill meets them at an unknown phase: the simulation is the mean over this many phases (a
# periodic flow's start shifted by k/PHASES of its period; a random flow's seed advanced by k).
NOISE_PHASES = 4


def noise_phases(cluster) -> list:
    """The cluster as a prefill may meet its on/off competing flows: ``NOISE_PHASES`` variants, or the
    cluster alone when its flows are constant."""
    if not any(bg.on_s is not None for bg in cluster.background):
        return [cluster]
    def shifted(bg, k):
        if bg.on_s is None:
            return bg
        if bg.seed is not None:
            return dataclasses.replace(bg, seed=bg.seed + k)
        return dataclasses.replace(bg, start_s=bg.start_s + (bg.on_s + bg.off_s) * k / NOISE_PHASES)
    return [dataclasses.replace(cluster, background=tuple(shifted(bg, k) for bg in cluster.background))
            for k in range(NOISE_PHASES)]


def resimulate(row: Row, factor: float, contention: float | None = None, host: HostTerms = HostTerms()):
    """(TTFT, the first phase's ``Result``) of the row's job at ``factor`` times the profile's compute
    time, as gloo processes on one host (``cpu_cluster_sim``): with ``contention`` (the probe with every
    rank busy over the probe alone) its ranks share P / contention cores, every byte moved costs
    them ``host.per_byte_s`` of it (and every message ``host.per_message_s``), and a message that
    arrives while they are all taken reaches its rank ``BUSY_WAKE_S`` later; with on/off competing
    flows, the mean TTFT over ``noise_phases``."""
    job = row.job
    # kvr: the partition that was measured (not a new search at this speed), ranks on GPUs 0..P-1 as
    # the shaped cluster runs them; tsp: its plan.
    planned = Plan(tuple(row.result.chunks), tuple(range(job.num_gpus))) if job.scheme.kind == "kvr" else plan(job)
    job = dataclasses.replace(job, cost_model=job.cost_model.scaled(factor))
    cores = None if not contention else min(job.num_gpus, job.num_gpus / contention)
    sim_class = cpu_cluster_sim(cores, host.per_byte_s, BUSY_WAKE_S, net_cpu_s_per_message=host.per_message_s)
    results = [run(dataclasses.replace(job, cluster=c), planned, sim_class=sim_class) for c in noise_phases(job.cluster)]
    return statistics.fmean(r.ttft_s for r in results), results[0]


def mape(comparisons: list[Comparison]) -> float:
    return 100 * statistics.fmean(abs(c.error) for c in comparisons) if comparisons else math.nan


def text(scenario, comparisons: list[Comparison], extrapolated: dict[str, int] | None = None,
         unmatched: list[Row] = (), host: HostTerms = HostTerms()) -> str:
    """Simulated and measured TTFT per configuration, each error, MAPE per scheme and cluster and in all;
    then the configurations of the sweep that have no measurement (e.g. a searched partition that
    changed since the measurement)."""
    spec = scenario.measured
    lines = ["", "== simulated against measured =="]
    if comparisons and unmatched:
        lines.append(f"{len(unmatched)} configurations have no measurement (by model, cluster, scheme, P, C, "
                     "partition): " + ", ".join(f"{r.job.cluster.name}/{r.job.scheme.name}/P{r.job.num_gpus}/"
                                                f"C{r.job.context}/{'-'.join(map(str, r.result.chunks))}"
                                                for r in unmatched[:8]) + (" ..." if len(unmatched) > 8 else ""))
    if not comparisons:
        lines.append(f"no measured results match ({len(spec.files())} files under {', '.join(spec.patterns)}):"
                     " measurements pending")
        return "\n".join(lines) + "\n"
    lines.append("sim ms: each round simulated under its speed and contention, median; meas ms: median of "
                 "the rounds; error: median of the rounds' errors; unadj.: one core per rank at the profile's "
                 "speed, NCCL semantics; speed: the round's workload probe / the profile's (else the GEMM probe's); busy: a rank's work with every rank busy / alone (the workload probe, else the GEMM probe)")
    lines.append(f"host: a message costs the ranks {host.per_message_s * 1e3:.3f} ms of CPU and a byte "
                 f"{host.per_byte_s * 1e9:.2f} ns ({host.source})")
    w = max(7, *(len(c.row.job.scheme.name) + 1 for c in comparisons))  # the scheme column
    lines.append(f"{'model':<16}{'cluster':<12}{'scheme':<{w}}{'P':>2}{'C':>6} {'chunks':<10}"
                 f"{'sim ms':>9}{'meas ms':>9}{'rounds ms':>17}{'speed':>11}{'busy':>11}{'error':>8}"
                 f"{'unadj. ms':>10}{'error':>8}  rounds' errors %")
    for c in comparisons:
        j, r = c.row.job, c.row.result
        rounds = f"{min(c.measured.rounds_s) * 1e3:.0f}-{max(c.measured.rounds_s) * 1e3:.0f} x{len(c.measured.rounds_s)}"
        speed = f"{min(c.speed_factors):.2f}-{max(c.speed_factors):.2f}" if c.speed_factors else "-"
        lines.append(f"{j.model.name:<16}{j.cluster.name:<12}{j.scheme.name:<{w}}{j.num_gpus:>2}{j.context:>6} "
                     f"{'/'.join(map(str, r.chunks)):<10}{c.simulated_s * 1e3:>9.1f}{c.measured.ttft_s * 1e3:>9.1f}"
                     f"{rounds:>17}{speed:>11}{c.measured.contention_range:>11}{c.error * 100:>7.1f}%{r.ttft_s * 1e3:>10.1f}{c.raw_error * 100:>7.1f}%  "
                     + "/".join(f"{e * 100:+.0f}" for e in c.round_errors))
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        groups.setdefault((c.row.job.scheme.name, c.row.job.cluster.name), []).append(c)
    lines.append("MAPE by scheme and cluster:")
    for (scheme, cluster), cs in groups.items():
        worst = max(cs, key=lambda c: abs(c.error))
        lines.append(f"  {scheme:<{w + 1}}{cluster:<14}{mape(cs):6.1f}%  (worst {worst.error * 100:+.1f}% at "
                     f"C={worst.row.job.context})")
    lines.append(f"MAPE {mape(comparisons):.1f}% over {len(comparisons)} configurations "
                 f"(unadjusted for machine speed: {100 * statistics.fmean(abs(c.raw_error) for c in comparisons):.1f}%)")
    if extrapolated:
        lines.append("profile extrapolated beyond its grid: " +
                     ", ".join(f"{k} x{v}" for k, v in sorted(extrapolated.items())))
    return "\n".join(lines) + "\n"


def plot(comparisons: list[Comparison], title: str, path: str, band: float = 0.05) -> None:
    """Simulated against measured TTFT, one marker per scheme, one colour per cluster, the ideal line
    and a +-``band`` band."""
    points = [(c.row.job.scheme.name, c.row.job.cluster.name, c.measured.ttft_s * 1e3, c.simulated_s * 1e3)
              for c in comparisons]
    scatter_plot(points, f"{title}: MAPE {mape(comparisons):.1f}% over {len(comparisons)}", "TTFT", path, band=band)


def read_trace(path: str) -> list[dict]:
    """The Trace Event Format events of a measured trace (``reference.launch --trace``), schema-checked."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        validate(doc, "trace", path)
        return doc["traceEvents"]
    except SchemaError as e:
        raise MeasuredError(f"measured trace {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MeasuredError(f"measured trace {path}: {e}") from None


def measured_trace(job, chunks, files: list[str]) -> list[dict] | None:
    """The Trace Event Format events of the first results file among `files` that measured this job
    (model, cluster, scheme kind, P, C, partition) and has a ``trace`` (a path relative to the
    results file's folder unless absolute); None if there is none."""
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
            if not r.get("trace") or job_key(job, chunks) != _key(
                    r["model"]["name"], cluster_of(r.get("link")), r["scheme"], r["world_size"], r["context"],
                    r["partition"]):
                continue
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MeasuredError(f"measured trace of {path}: {e}") from None
        return read_trace(os.path.join(os.path.dirname(os.path.abspath(path)), r["trace"]))
    return None
