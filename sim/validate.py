"""Simulated against measured: a scenario's ``measured:`` results JSON files (written by
``reference.launch``, schema in docs/reference.md) matched to the scenario's jobs, with each
configuration's error and the mean absolute percentage error (MAPE).

A measured result matches a job when model name, scheme kind, world size, context and partition are
the job's, and its ``link`` field names the job's cluster (``cluster=NAME``, as
``reference.validate_cluster`` writes it). Several results of one configuration (repeated rounds) are
pooled: the measured TTFT is the median of the rounds' medians, and the spread of the rounds is shown.

Machine speed: where the job's cost model is a CPU profile (``sim.profile.ProfileCost``) and a round
carries the harness's ``speed_probe_s``, the round is simulated again with the profile scaled by
that round's probe over the profile's (``ProfileCost.scaled``; the partition is the one measured), and
the simulated TTFT is the median over the rounds. The unadjusted simulation is shown beside it.

Error = (simulated - measured) / measured. Docs: docs/validation.md.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import statistics
from dataclasses import dataclass

from .report import Row


class MeasuredError(ValueError):
    """A measured results file that cannot be read."""


@dataclass(frozen=True)
class MeasuredSpec:
    """The scenario's ``measured:`` section: result file patterns (globs or literal paths), with the
    YAML path of each (``measured.results[0]``) for errors."""

    patterns: tuple[str, ...]
    replays: tuple[str, ...] = ()  # per-rank replay results (reference.replay; sim/replay.py)
    labels: tuple[str, ...] = ()
    replay_labels: tuple[str, ...] = ()

    def files(self) -> list[str]:
        return sorted({p for pat in self.patterns for p in glob.glob(pat)})

    def missing(self) -> list[tuple[str, str]]:
        """(YAML path, file) of each literal path that names no file. A glob that matches nothing is
        not missing: its measurements are pending."""
        pairs = zip(self.labels or [f"measured.results[{i}]" for i in range(len(self.patterns))], self.patterns)
        pairs = [*pairs, *zip(self.replay_labels or [f"measured.replays[{i}]" for i in range(len(self.replays))],
                              self.replays)]
        return [(at, p) for at, p in pairs if not glob.has_magic(p) and not os.path.isfile(p)]


@dataclass(frozen=True)
class Measured:
    """The pooled measurement of one configuration."""

    ttft_s: float  # median of the rounds' medians
    rounds_s: tuple[float, ...]  # each round's median TTFT
    files: tuple[str, ...]
    probes_s: tuple[float | None, ...] = ()  # each round's machine-speed probe (mean of before, after)
    contention: tuple[float | None, ...] = ()  # each round's workload (else GEMM) probe in P processes over one

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


def load_measured(files: list[str]) -> dict[tuple, Measured]:
    """Results files -> pooled measurements by (model, cluster, scheme kind, P, C, partition)."""
    by_key: dict[tuple, list[tuple[float, str, float | None]]] = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                r = json.load(f)
            key = _key(r["model"]["name"], cluster_of(r.get("link")), r["scheme"], r["world_size"],
                       r["context"], r["partition"])
            probe = statistics.fmean(r["speed_probe_s"]) if r.get("speed_probe_s") else None
            busy = statistics.fmean(r["contended_probe_s"]) if r.get("contended_probe_s") else None
            contention = busy / probe if busy and probe else None
            if r.get("workload_probe_s") and r.get("contended_workload_probe_s"):
                # the ranks' own work in P processes over one (reference.validate_cluster.workload_probe_s)
                contention = statistics.fmean(r["contended_workload_probe_s"]) / statistics.fmean(r["workload_probe_s"])
            by_key.setdefault(key, []).append((float(r["ttft_median_s"]), path, probe, contention))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MeasuredError(f"measured results {path}: {e}") from None
    return {k: Measured(statistics.median(x[0] for x in v), tuple(x[0] for x in v), tuple(x[1] for x in v),
                        tuple(x[2] for x in v), tuple(x[3] for x in v))
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


def compare(table: list[Row], measured: dict[tuple, Measured]) -> list[Comparison]:
    """The rows that have a measurement, paired with it (and re-simulated at each round's speed)."""
    out = []
    for row in table:
        if row.result is None:  # does not fit: nothing simulated to compare
            continue
        m = measured.get(job_key(row.job, row.result.chunks))
        if m is not None:
            factors = _speed_factors(row.job, m)
            contention = m.contention if len(m.contention) == len(factors) else (None,) * len(factors)
            sims = [_resimulate(row, f, c) for f, c in zip(factors, contention)]
            errors = tuple((s - t) / t for s, t in zip(sims, m.rounds_s))
            out.append(Comparison(row, m, statistics.median(sims) if sims else row.result.ttft_s, factors, errors))
    return out


def _speed_factors(job, m: Measured) -> tuple[float, ...]:
    """Per round, its probe over the profile's; 1.0 where either has none; () without a profile."""
    cost = job.cost_model
    if not hasattr(cost, "scaled"):
        return ()
    ref = cost.profile.get("speed_probe_s")
    return tuple(p / ref if ref and p else 1.0 for p in m.probes_s)


def _resimulate(row: Row, factor: float, contention: float | None = None) -> float:
    """The row's job at ``factor`` times the profile's compute time, as gloo processes on one host
    (``cpu_cluster_sim``): with ``contention`` (the probe with every rank busy over the probe alone)
    its ranks share P / contention cores."""
    from .schemes import SchemeSpec
    from .simulate import simulate

    job = row.job
    scheme = job.scheme
    if scheme.kind == "kvr":  # the partition that was measured, not a new search at this speed
        scheme = SchemeSpec(name=scheme.name, kind="kvr", tokens=((job.context, tuple(row.result.chunks)),))
    job = dataclasses.replace(job, scheme=scheme, cost_model=job.cost_model.scaled(factor))
    cores = None if not contention else min(job.num_gpus, job.num_gpus / contention)
    return simulate(job, sim_class=cpu_cluster_sim(cores)).ttft_s


def cpu_cluster_sim(cores: float | None):
    """A ``Sim`` for gloo ranks that are processes on one host:

    - with ``cores``, a rank's compute runs at min(1, cores / ranks computing at that moment) of its
      speed (processor sharing, max-min fair: the network model's progressive filling on a link of
      ``cores`` core-seconds per second that every rank's compute crosses, behind a private link of 1
      for its own core);
    - a point-to-point message moves only once its receiver has posted the receive (gloo's rendezvous:
      the sender waits for the receiver's "ready to receive" notice, docs/netcluster.md); a kvr rank
      posts it when it starts waiting for the message, after its own QKV, as the runtime's
      ``ChainedKVCache.update`` does;
    - the all-gather is the runtime's gloo ring (``DistTransport.all_gather``), ``_BufferedRing``: a
      rank leaves when its own receives are done and its sends have returned (a gloo send returns
      once the kernel's socket holds the rest of it, ``SOCKET_BUFFER_BYTES``)."""
    from . import collectives
    from .cluster import ClusterSpec, LinkSpec
    from .network import Network
    from .simulate import Segment, Sim

    class CpuClusterSim(Sim):
        def __init__(self, job, num_ranks, cost=None, gpus=None):
            super().__init__(job, num_ranks, cost, gpus)
            self._posted: dict[tuple, object] = {}
            self._rank_of: dict[object, int] = {}
            self._rings: dict[int, _BufferedRing] = {}
            if cores is None:
                return
            self.sink = num_ranks  # compute "flows" from rank r through the host to this node
            links = [LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=bw, latency_s=0.0) for r in range(num_ranks)
                     for a, b, bw in ((r, "host", 1.0), ("host", r, 1.0))]
            links += [LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=cores, latency_s=0.0)
                      for a, b in (("host", self.sink), (self.sink, "host"))]
            self.cpu = Network(self.env, ClusterSpec(name="host-cpu", num_gpus=num_ranks + 1, links=tuple(links),
                                                     switches=("host",)))

        def hold_gpu(self, rank, body):
            self._rank_of[self.env.active_process] = rank  # who calls all_gather (it takes no rank)
            yield from super().hold_gpu(rank, body)

        def all_gather(self, tag, chunk_bytes):
            if tag not in self._rings:
                self._rings[tag] = _BufferedRing(self, len(self.gpus), chunk_bytes, tag)
            return self._rings[tag].join(self._rank_of[self.env.active_process])

        def posted(self, src, dst, tag):
            return self._posted.setdefault((src, dst, tag), self.env.event())

        def message(self, src, dst, tag):  # the receiver asks for it when it posts its receive
            if not self.posted(src, dst, tag).triggered:
                self.posted(src, dst, tag).succeed()
            return super().message(src, dst, tag)

        def send(self, src, dst, nbytes, tag):
            def rendezvous():
                yield self.posted(src, dst, tag)
                yield from collectives.send(self, src, dst, nbytes, tag)
            self.env.process(rendezvous())

        def compute(self, rank, layer, *ops):
            if cores is None:
                return (yield from super().compute(rank, layer, *ops))
            start_s, work_s = self.env.now, sum(seconds for _, seconds in ops)
            if work_s > 0:
                yield from self.cpu.transfer([(rank, self.sink, work_s)])
            stretch = (self.env.now - start_s) / work_s if work_s > 0 else 1.0
            for op, seconds in ops:
                self.busy_s[rank] += seconds * stretch
                self.segments.append(Segment(rank, "compute", op, start_s, start_s + seconds * stretch, layer))
                start_s += seconds * stretch

    return CpuClusterSim


def mape(comparisons: list[Comparison]) -> float:
    return 100 * statistics.fmean(abs(c.error) for c in comparisons) if comparisons else math.nan


def text(scenario, comparisons: list[Comparison], extrapolated: dict[str, int] | None = None,
         unmatched: list[Row] = ()) -> str:
    """Simulated and measured TTFT per configuration, each error, MAPE per scheme and cluster and in all;
    then the configurations of the sweep that have no measurement (e.g. a searched partition that
    changed since the measurement)."""
    spec: MeasuredSpec = scenario.measured
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
                 "speed, NCCL semantics; speed: probe / profile's; busy: a rank's work with every rank busy / alone (the workload probe, else the GEMM probe)")
    lines.append(f"{'model':<16}{'cluster':<12}{'scheme':<7}{'P':>2}{'C':>6} {'chunks':<10}"
                 f"{'sim ms':>9}{'meas ms':>9}{'rounds ms':>17}{'speed':>11}{'busy':>11}{'error':>8}"
                 f"{'unadj. ms':>10}{'error':>8}  rounds' errors %")
    for c in comparisons:
        j, r = c.row.job, c.row.result
        rounds = f"{min(c.measured.rounds_s) * 1e3:.0f}-{max(c.measured.rounds_s) * 1e3:.0f} x{len(c.measured.rounds_s)}"
        speed = f"{min(c.speed_factors):.2f}-{max(c.speed_factors):.2f}" if c.speed_factors else "-"
        lines.append(f"{j.model.name:<16}{j.cluster.name:<12}{j.scheme.name:<7}{j.num_gpus:>2}{j.context:>6} "
                     f"{'/'.join(map(str, r.chunks)):<10}{c.simulated_s * 1e3:>9.1f}{c.measured.ttft_s * 1e3:>9.1f}"
                     f"{rounds:>17}{speed:>11}{c.measured.contention_range:>11}{c.error * 100:>7.1f}%{r.ttft_s * 1e3:>10.1f}{c.raw_error * 100:>7.1f}%  "
                     + "/".join(f"{e * 100:+.0f}" for e in c.round_errors))
    groups: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        groups.setdefault((c.row.job.scheme.name, c.row.job.cluster.name), []).append(c)
    lines.append("MAPE by scheme and cluster:")
    for (scheme, cluster), cs in groups.items():
        worst = max(cs, key=lambda c: abs(c.error))
        lines.append(f"  {scheme:<8}{cluster:<14}{mape(cs):6.1f}%  (worst {worst.error * 100:+.1f}% at "
                     f"C={worst.row.job.context})")
    lines.append(f"MAPE {mape(comparisons):.1f}% over {len(comparisons)} configurations "
                 f"(unadjusted for machine speed: {100 * statistics.fmean(abs(c.raw_error) for c in comparisons):.1f}%)")
    if extrapolated:
        lines.append("profile extrapolated beyond its grid: " +
                     ", ".join(f"{k} x{v}" for k, v in sorted(extrapolated.items())))
    return "\n".join(lines) + "\n"


def scatter_plot(points: list[tuple[str, str, float, float]], title: str, what: str, path: str,
                 log: bool = False) -> None:
    """Simulated against measured milliseconds, the ideal line and a +-10% band. ``points`` are
    (marker label, colour label, measured ms, simulated ms): one marker per marker label (a scheme),
    one colour per colour label (a cluster, a model), each in sorted order."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    markers = "osD^v<>P*X"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ci, colour in enumerate(sorted({p[1] for p in points})):
        for mi, marker in enumerate(sorted({p[0] for p in points})):
            pts = [p for p in points if p[:2] == (marker, colour)]
            if pts:
                ax.scatter([p[2] for p in pts], [p[3] for p in pts], marker=markers[mi % len(markers)],
                           color=colours[ci % len(colours)], label=f"{marker}, {colour}",
                           s=36 if not log else 14, alpha=1.0 if not log else 0.7)
    values = [v for p in points for v in p[2:]]
    lo, hi = min(values) * 0.85, max(values) * 1.15
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="ideal (simulated = measured)")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey", alpha=0.15, label="±10%")
    if log:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"measured {what} (ms)")
    ax.set_ylabel(f"simulated {what} (ms)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(comparisons: list[Comparison], title: str, path: str) -> None:
    """Simulated against measured TTFT, one marker per scheme, one colour per cluster, the ideal line."""
    points = [(c.row.job.scheme.name, c.row.job.cluster.name, c.measured.ttft_s * 1e3, c.simulated_s * 1e3)
              for c in comparisons]
    scatter_plot(points, f"{title}: MAPE {mape(comparisons):.1f}% over {len(comparisons)}", "TTFT", path)


# A gloo send returns once the kernel's socket buffer holds the rest of the message: measured on this
# project's VM as 1.3-1.7 MB still undelivered when a 2-8 MB send returned over a 10 MB/s link
# (``python -m reference.netcluster probe --world-size 2 --bandwidth "x,100MB/s;10MB/s,x" --sizes
# 1MB,2MB,4MB,8MB``, docs/netcluster.md, "When a gloo send returns").
SOCKET_BUFFER_BYTES = 1.5e6


class _BufferedRing:
    """The runtime's gloo all-gather among ranks 0..P-1 (a ring, receives posted before sends): in step
    s rank r receives one chunk from rank r-1. That transfer starts when both have begun step s (rank
    r-1 holds the chunk: it entered, or received it in step s-1; rank r has posted its receive: it
    entered, or finished its step s-1 receive). Rank r leaves after its P-1 receives and once each of
    its sends has returned: when all but ``SOCKET_BUFFER_BYTES`` of it are delivered (the rest waits
    in the socket). On a slow outgoing link that holds a rank whose own receives came fast (tsp's last
    rank on the ``nonuniform`` cluster)."""

    def __init__(self, sim, num_ranks: int, chunk_bytes: float, tag: int):
        env = sim.env
        self.sim, self.p, self.chunk_bytes, self.tag = sim, num_ranks, chunk_bytes, tag
        # ready[r][s]: rank r has begun step s; ready[r][p - 1]: its receives are done.
        self.ready = [[env.event() for _ in range(num_ranks)] for _ in range(num_ranks)]
        self.sent = [[env.event() for _ in range(num_ranks - 1)] for _ in range(num_ranks)]  # sent[r][s]
        for r in range(num_ranks):
            for step in range(num_ranks - 1):
                env.process(self._receive(r, step))

    def join(self, rank: int):
        self.ready[rank][0].succeed()
        return self.sim.env.all_of([self.ready[rank][self.p - 1], *self.sent[rank]])

    def _receive(self, r: int, step: int):
        sim, src = self.sim, (r - 1) % self.p
        yield sim.env.all_of([self.ready[src][step], self.ready[r][step]])
        start_s = sim.env.now
        route = (sim.gpu_of[src], sim.gpu_of[r])
        held = min(self.chunk_bytes, SOCKET_BUFFER_BYTES)
        if self.chunk_bytes > held:  # the sender's send returns when only `held` bytes are left
            yield from sim.network.transfer([(*route, self.chunk_bytes - held)])
        self.sent[src][step].succeed()
        yield from sim.network.transfer([(*route, held)], latency=self.chunk_bytes <= held)
        sim.record_transfer("all-gather", src, r, self.chunk_bytes, start_s, sim.env.now, self.tag)
        self.ready[r][step + 1].succeed()
