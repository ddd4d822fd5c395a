"""A noisy cluster's configurations, simulated once per random draw (docs/simulator.md, "Noise").

A cluster's ``noise`` (``NoiseSpec``) is a random process, not a schedule: draw i of a job is the quiet
cluster plus competing flows whose seeds derive from i and the link (``flow_seed``), and a latency
jitter seeded from i, so draw i is the same in every run and on every process. The planner plans on
the quiet cluster (it cannot know the draws); the one plan is then run under every draw and the TTFTs
summarised (``Spread``). Reference: Bertsekas and Gallager, Data Networks (on/off sources).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from .cluster import BackgroundFlow, ClusterSpec, Link
from .engine import Result
from .engine import run as run_plan
from .partition import Plan


@dataclasses.dataclass(frozen=True, kw_only=True)
class Spread:
    """TTFT over a configuration's draws, seconds: mean, median, 99th percentile (numpy's linear
    interpolation between draws), and every draw's, in seed order."""

    mean_s: float
    p50_s: float
    p99_s: float
    ttfts_s: tuple[float, ...]

    @property
    def seeds(self) -> int:
        return len(self.ttfts_s)

    @classmethod
    def of(cls, ttfts_s) -> "Spread":
        ttfts_s = tuple(ttfts_s)
        p50, p99 = np.percentile(ttfts_s, [50, 99])
        return cls(mean_s=sum(ttfts_s) / len(ttfts_s), p50_s=float(p50), p99_s=float(p99), ttfts_s=ttfts_s)


def flow_seed(seed_index: int, what: object) -> int:
    """A 63-bit seed for draw ``seed_index`` of ``what`` (a link, or ``"latency"``): a hash of both, the
    same on every run and every process (Python's own ``hash`` of a string is not)."""
    digest = hashlib.sha256(f"{seed_index}:{what!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def quiet(cluster: ClusterSpec) -> ClusterSpec:
    """The cluster without its noise (its own listed background flows stay)."""
    return cluster if cluster.noise is None else dataclasses.replace(cluster, noise=None)


def used_links(quiet_result: Result) -> tuple[Link, ...]:
    """The directed links that carry the job's own traffic in its run on the quiet cluster, in the order
    they were first used: the links the scheme uses (a TSP ring's, a KV-Runahead chain's)."""
    return tuple(link for link, nbytes in quiet_result.link_bytes.items() if nbytes > 0)


def draw(cluster: ClusterSpec, seed_index: int, used: tuple[Link, ...]) -> ClusterSpec:
    """Draw ``seed_index`` of a noisy cluster: the quiet cluster, plus the noise's flows on each of its
    links (``links: used``: the ``used`` links, ``used_links``) and its latency jitter."""
    noise = cluster.noise
    assert noise is not None, f"cluster {cluster.name!r} has no noise"
    links = noise.links if noise.links is not None else used
    flows = tuple(BackgroundFlow(src=a, dst=b, flows=noise.flows, on_s=noise.on_s, off_s=noise.off_s,
                                 seed=flow_seed(seed_index, (a, b)), rate_jitter=noise.rate_jitter)
                  for a, b in links) if noise.flows else ()
    return dataclasses.replace(cluster, noise=None, background=cluster.background + flows,
                               latency_jitter_s=noise.latency_jitter_s,
                               latency_seed=flow_seed(seed_index, "latency"))


def links_for(job, planned: Plan, **run_kw) -> tuple[Link, ...]:
    """The links a noisy cluster's ``links: used`` means for ``job`` under ``planned`` (a quiet run),
    or none needed (the noise lists its links)."""
    if job.cluster.noise.links is not None:
        return ()
    return used_links(run_plan(dataclasses.replace(job, cluster=quiet(job.cluster)), planned, **run_kw))


def run_draws(job, planned: Plan, **run_kw) -> tuple[Result, Spread]:
    """Run ``planned`` under every draw of ``job``'s noisy cluster: seed 0's result with its TTFT and
    makespan replaced by the means over the draws (its ranks, links and timeline stay seed 0's), and
    the spread of the TTFTs."""
    cluster, used = job.cluster, links_for(job, planned, **run_kw)
    results = [run_plan(dataclasses.replace(job, cluster=draw(cluster, i, used)), planned, **run_kw)
               for i in range(cluster.noise.seeds)]
    spread = Spread.of(r.ttft_s for r in results)
    makespan_s = sum(r.makespan_s for r in results) / len(results)
    return dataclasses.replace(results[0], ttft_s=spread.mean_s, makespan_s=makespan_s), spread
