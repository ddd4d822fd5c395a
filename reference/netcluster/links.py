"""Link and noise descriptions of ``reference.netcluster``: LinkSpec, NoiseFlow, units, scaling.

``scale_links`` keeps a GPU cluster's compute-to-communication ratio on a CPU cluster (docs/netcluster.md);
``from_cluster_spec`` turns the simulator's ``sim.cluster.ClusterSpec`` into a link matrix and noise.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence, Union


class NetClusterError(ValueError):
    """Bad cluster input, or a namespace/tc command that failed."""


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One directed link between two ranks. ``bandwidth_bytes_per_s = math.inf`` leaves it unshaped."""

    bandwidth_bytes_per_s: float
    latency_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidth_bytes_per_s > 0:
            raise NetClusterError(f"bandwidth_bytes_per_s={self.bandwidth_bytes_per_s!r} must be > 0")
        if not (self.latency_s >= 0 and math.isfinite(self.latency_s)):
            raise NetClusterError(f"latency_s={self.latency_s!r} must be finite and >= 0")

    @property
    def shaped(self) -> bool:
        return math.isfinite(self.bandwidth_bytes_per_s) or self.latency_s > 0


@dataclass(frozen=True, kw_only=True)
class NoiseFlow:
    """A competing greedy TCP flow on link src -> dst (same fields as ``sim.cluster.BackgroundFlow``).

    Constant when ``on_s`` is None, else on for ``on_s`` and off for ``off_s``, repeating, from
    ``start_s`` after the ranks start; with ``seed``, on and off periods are drawn at random
    (exponential, means ``on_s`` and ``off_s``) from ``random.Random(seed)``, as the simulator's
    ``BackgroundFlow(seed=...)`` draws them. It always stops by itself after ``max_duration_s`` (or the run's
    timeout, whichever is first). ``fair_share=True``: htb gives the ranks' traffic and the ``flows``
    greedy connections equal shares of the link while both send (the simulator's model);
    ``fair_share=False``: all share one FIFO and TCP decides (bursty ranks' traffic often gets far less).
    """

    src: int
    dst: int
    flows: int = 1
    start_s: float = 0.0
    on_s: float | None = None
    off_s: float | None = None
    max_duration_s: float = 600.0
    fair_share: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.src == self.dst or self.flows < 1:
            raise NetClusterError(f"noise flow {self.src}->{self.dst} x{self.flows}: need src != dst, flows >= 1")
        if (self.on_s is None) != (self.off_s is None):
            raise NetClusterError(f"noise flow {self.src}->{self.dst}: give both on_s and off_s, or neither")
        if self.seed is not None and self.on_s is None:
            raise NetClusterError(f"noise flow {self.src}->{self.dst}: a seed needs on_s and off_s (the mean periods)")
        if self.on_s is not None and not (self.on_s > 0 and self.off_s >= 0):
            raise NetClusterError(f"noise flow {self.src}->{self.dst}: need on_s > 0 and off_s >= 0, got "
                                  f"{self.on_s!r}/{self.off_s!r}")


@dataclass(frozen=True, kw_only=True)
class Nodes:
    """Ranks grouped into nodes whose traffic to other nodes crosses shared uplinks: ``groups`` lists each
    node's ranks; every node's bridge joins a spine bridge by one veth pair, shaped ``uplink`` towards
    the spine and ``downlink`` back (one rate for all of a node's flows to or from other nodes)."""

    groups: tuple[tuple[int, ...], ...]
    uplink: LinkSpec
    downlink: LinkSpec

    def node_of(self, rank: int) -> int:
        for n, group in enumerate(self.groups):
            if rank in group:
                return n
        raise NetClusterError(f"rank {rank} is in no node of {self.groups}")

    def first(self, world_size: int) -> "Nodes | None":
        """The nodes of ranks 0..world_size-1 only (None where they all sit in one node)."""
        groups = tuple(g for g in (tuple(r for r in group if r < world_size) for group in self.groups) if g)
        return None if len(groups) < 2 else Nodes(groups=groups, uplink=self.uplink, downlink=self.downlink)

    def check(self, world_size: int) -> None:
        ranks = sorted(r for g in self.groups for r in g)
        if ranks != list(range(world_size)) or len(self.groups) < 2:
            raise NetClusterError(f"nodes {self.groups}: need at least 2 nodes that hold ranks 0..{world_size - 1} "
                                  "once each")
        for link in (self.uplink, self.downlink):
            if not math.isfinite(link.bandwidth_bytes_per_s):
                raise NetClusterError("a node uplink needs a finite bandwidth")


LinksArg = Union[Callable[[int, int], LinkSpec], Sequence[Sequence[LinkSpec | None]], LinkSpec]


# ---------------------------------------------------------------------------------------------------
# Units, scaling


_BW_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_BIT_UNITS = {"bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def parse_bandwidth(text: str) -> float:
    """'100MB/s', '1.5GiB/s', '800mbit', 'inf' -> bytes per second."""
    t = text.strip().lower().replace(" ", "")
    if t in ("inf", "unshaped", "none"):
        return math.inf
    m = re.fullmatch(r"([0-9.eE+-]+)([a-z]*)(/s|ps)?", t)
    if m and m.group(2) in _BW_UNITS:
        return float(m.group(1)) * _BW_UNITS[m.group(2)]
    if m and m.group(2) in _BIT_UNITS:
        return float(m.group(1)) * _BIT_UNITS[m.group(2)]
    raise NetClusterError(f"bandwidth {text!r}: expected a number and B/KB/MB/GB/KiB/MiB/GiB per s, or kbit/mbit/gbit")


def parse_sizes(text: str) -> list[int]:
    """'256KB,1MB,4MB' -> message sizes in bytes (the units of ``parse_bandwidth``, per message); each
    must be a finite number of bytes above 0."""
    parts = text.split(",")
    sizes = [parse_bandwidth(s) for s in parts]
    bad = [s for s, v in zip(parts, sizes) if not math.isfinite(v) or int(v) <= 0]
    if bad:
        raise NetClusterError(f"message size {bad[0]!r}: expected a number of bytes above 0, e.g. 4MB")
    return [int(v) for v in sizes]


def parse_duration(text: str) -> float:
    """'1ms', '200us', '0.5s' -> seconds."""
    m = re.fullmatch(r"([0-9.eE+-]+)(s|ms|us|ns)?", text.strip().lower())
    if not m:
        raise NetClusterError(f"duration {text!r}: expected a number and s/ms/us/ns")
    return float(m.group(1)) * _TIME_UNITS[m.group(2) or "s"]


def scale_links(gpu_link: LinkSpec, cpu_over_gpu_slowdown: float) -> LinkSpec:
    """The CPU-cluster link that keeps a GPU link's compute-to-communication ratio.

    CPU compute is ``cpu_over_gpu_slowdown`` times slower than the GPU's, so every transfer must take
    that many times longer too: bandwidth is divided and latency multiplied by the slowdown (e.g. a
    300 GB/s NVLink at a 1000x slowdown becomes 300 MB/s; 10 GB/s becomes 10 MB/s).
    """
    if not cpu_over_gpu_slowdown > 0:
        raise NetClusterError(f"cpu_over_gpu_slowdown={cpu_over_gpu_slowdown!r} must be > 0")
    return LinkSpec(bandwidth_bytes_per_s=gpu_link.bandwidth_bytes_per_s / cpu_over_gpu_slowdown,
                    latency_s=gpu_link.latency_s * cpu_over_gpu_slowdown)


def link_matrix(world_size: int, links: LinksArg) -> list[list[LinkSpec | None]]:
    """Normalise a LinkSpec, a function (i, j) -> LinkSpec, or a P x P matrix to a matrix (diagonal None)."""
    if isinstance(links, LinkSpec):
        return [[None if i == j else links for j in range(world_size)] for i in range(world_size)]
    if callable(links):
        return [[None if i == j else links(i, j) for j in range(world_size)] for i in range(world_size)]
    rows = [list(r) for r in links]
    if len(rows) != world_size or any(len(r) != world_size for r in rows):
        raise NetClusterError(f"link matrix is {len(rows)} x {[len(r) for r in rows]}, expected {world_size} x {world_size}")
    out = []
    for i, row in enumerate(rows):
        for j, link in enumerate(row):
            if i != j and not isinstance(link, LinkSpec):
                raise NetClusterError(f"links[{i}][{j}]={link!r} is not a LinkSpec")
        out.append([None if i == j else row[j] for j in range(world_size)])
    return out


# A link of the simulator's cluster at least this fast stands for an unshaped veth (the shaped links
# here are 1-300 MB/s; a veth between namespaces moves over 1 GB/s on the project's machine).
UNSHAPED_BYTES_PER_S = 1e9


def from_cluster_spec(spec, cpu_over_gpu_slowdown: float = 1.0
                      ) -> tuple[list[list[LinkSpec | None]], list[NoiseFlow], Nodes | None]:
    """A ``sim.cluster.ClusterSpec`` as (link matrix, noise flows, nodes) for ``ShapedCluster``, scaled to
    the CPU.

    Pair (i, j) with a direct link gets it. A cluster whose other routes go through switches must have
    the shape of nodes: every GPU with a link to one switch (its node's), the GPU-to-switch links
    unshaped (>= ``UNSHAPED_BYTES_PER_S``), and the switches joined through one spine switch by one
    uplink and one downlink each, all of one bandwidth and latency: then pairs in different nodes have
    no link of their own (``None``) and their flows share the node's uplink (``Nodes``). Background
    flows must be on direct GPU-to-GPU links; their times are scaled like the latencies.
    """
    k = cpu_over_gpu_slowdown
    n = spec.num_gpus
    matrix: list[list[LinkSpec | None]] = [[None] * n for _ in range(n)]
    nodes = _nodes_of(spec, k) if spec.switches else None
    for (i, j), route in spec.routes().items():
        if nodes is not None and len(route) > 1:
            matrix[i][j] = LinkSpec(bandwidth_bytes_per_s=math.inf)  # crosses the uplinks, shaped there
            continue
        if len(route) > 1:
            raise NetClusterError(f"cluster {spec.name!r}: GPUs {i} and {j} are joined through switches, which "
                                  "the shaped cluster builds only in the shape of nodes and a spine")
        matrix[i][j] = scale_links(_as_link(spec.link(*route[0])), k)
    noise = []
    for bg in spec.background:
        if not (isinstance(bg.src, int) and isinstance(bg.dst, int)):
            raise NetClusterError(f"background flow {bg.src!r}->{bg.dst!r}: only flows on direct GPU-to-GPU "
                                  "links can run on the shaped cluster")
        noise.append(NoiseFlow(src=bg.src, dst=bg.dst, flows=bg.flows, start_s=bg.start_s * k,
                               on_s=None if bg.on_s is None else bg.on_s * k,
                               off_s=None if bg.off_s is None else bg.off_s * k, seed=bg.seed))
    return matrix, noise, nodes


def _as_link(sim_link) -> LinkSpec:
    return LinkSpec(bandwidth_bytes_per_s=sim_link.bandwidth_bytes_per_s, latency_s=sim_link.latency_s)


def _nodes_of(spec, k: float) -> Nodes:
    """The nodes-and-spine shape of a switched cluster (see ``from_cluster_spec``)."""
    bad = lambda why: NetClusterError(f"cluster {spec.name!r}: {why}; the shaped cluster builds switches only "  # noqa: E731
                                      "as nodes (GPUs on a node switch by unshaped links) joined by uplinks to "
                                      "one spine switch")
    members: dict[str, list[int]] = {}
    ups, downs = [], []
    for link in spec.all_links():
        a_gpu, b_gpu = isinstance(link.src, int), isinstance(link.dst, int)
        if a_gpu and not b_gpu:
            members.setdefault(link.dst, []).append(link.src)
        if a_gpu != b_gpu and link.bandwidth_bytes_per_s < UNSHAPED_BYTES_PER_S:
            raise bad(f"link {link.src}->{link.dst} at {link.bandwidth_bytes_per_s:.3g} B/s is shaped")
    spines = [s for s in spec.switches if s not in members]
    if len(spines) != 1:
        raise bad(f"switches {spines} have no GPU (need exactly one spine)")
    spine = spines[0]
    for link in spec.all_links():
        if link.dst == spine:
            ups.append(link)
        elif link.src == spine:
            downs.append(link)
        elif not (isinstance(link.src, int) or isinstance(link.dst, int)):
            raise bad(f"link {link.src}->{link.dst} joins two node switches")
    if sorted(l.src for l in ups) != sorted(members) or sorted(l.dst for l in downs) != sorted(members):
        raise bad("every node switch needs one uplink to the spine and one downlink from it")
    if len({(l.bandwidth_bytes_per_s, l.latency_s) for l in ups}) != 1 or \
            len({(l.bandwidth_bytes_per_s, l.latency_s) for l in downs}) != 1:
        raise bad("the uplinks (and the downlinks) differ")
    groups = tuple(tuple(sorted(members[s])) for s in sorted(members, key=lambda s: min(members[s])))
    nodes = Nodes(groups=groups, uplink=scale_links(_as_link(ups[0]), k), downlink=scale_links(_as_link(downs[0]), k))
    nodes.check(spec.num_gpus)
    return nodes
