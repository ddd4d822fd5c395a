"""A cluster: GPUs (and optional switches) joined by directed links, as a networkx graph; routing.

Nodes are GPU indices (int, 0..n-1) and switch names (str). Every edge carries
``bandwidth_bytes_per_s`` and ``latency_s``. A transfer from GPU a to GPU b follows one route: the path
of least total latency, ties broken by fewer hops, then by networkx's (deterministic) search order.
The SimPy side (links shared by concurrent transfers) is in ``network.py``.
"""
from __future__ import annotations

import random

from dataclasses import dataclass, fields
from typing import Union

import networkx as nx

Node = Union[int, str]
Link = tuple[Node, Node]

_HOP_TIEBREAK_S = 1e-12  # added per hop so equal-latency routes prefer fewer hops


class ClusterError(ValueError):
    """A cluster that cannot carry traffic: a bad link, unreachable GPUs."""


@dataclass(frozen=True, kw_only=True)
class LinkSpec:
    """One directed link."""

    src: Node
    dst: Node
    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True, kw_only=True)
class BackgroundFlow:
    """Competing traffic on one directed link: ``flows`` greedy flows that take their fair share of the
    link while on. Constant when ``on_s`` is None, else on for ``on_s``, off for ``off_s``, repeating,
    from ``start_s``; with ``seed``, each on and off period is drawn at random (exponential, means
    ``on_s`` and ``off_s``) by ``periods()``."""

    src: Node
    dst: Node
    flows: int = 1
    start_s: float = 0.0
    on_s: float | None = None
    off_s: float | None = None
    seed: int | None = None
    rate_jitter: float = 0.0  # 0..1: each on-period, each flow is capped at a random fraction of the link

    def __repr__(self) -> str:
        # rate_jitter shows only when set: a cluster's repr fingerprints the KVR-P tables searched for it
        shown = (f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name != "rate_jitter" or self.rate_jitter)
        return f"BackgroundFlow({', '.join(shown)})"

    def periods(self):
        """(on seconds, off seconds) for ever: fixed, or drawn from ``random.Random(seed)`` (the shaped
        CPU cluster's noise senders draw theirs with this same generator)."""
        return onoff_periods(self.on_s, self.off_s, self.seed)

    def rates(self):
        """For each on-period, for ever: the fraction of the link each flow may take. 1 (greedy, no cap)
        without ``rate_jitter``; else ``1 - rate_jitter * u``, u uniform in [0, 1) from a generator of its
        own (``random.Random(f"rate:{seed}")``), so the on/off periods are the same with or without it."""
        if not self.rate_jitter:
            while True:
                yield 1.0
        rng = random.Random(f"rate:{self.seed}")
        while True:
            yield 1.0 - self.rate_jitter * rng.random()


def onoff_periods(on_s: float, off_s: float, seed: int | None):
    """(on, off) seconds for ever: ``(on_s, off_s)`` each time, or with ``seed`` exponential draws of those
    means from ``random.Random(seed)`` (a Poisson-like on/off source)."""
    if seed is None:
        while True:
            yield on_s, off_s
    rng = random.Random(seed)
    while True:
        yield rng.expovariate(1 / on_s), (rng.expovariate(1 / off_s) if off_s > 0 else 0.0)


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    """Noise as a random process (docs/scenarios.md, ``noise``): each configuration is simulated under
    ``seeds`` draws; draw i puts ``flows`` competing flows on each of ``links`` (None: every link on the
    routes between the GPUs a job uses), on and off for exponential periods of means ``on_s`` and
    ``off_s`` (constant when None), each on-period capped at a random fraction of the link
    (``rate_jitter``), and adds to every transfer's latency an exponential extra of mean
    ``latency_jitter_s``. ``sim/noise.py`` turns draw i into a cluster with those flows."""

    seeds: int
    links: tuple[Link, ...] | None = None
    flows: int = 1
    on_s: float | None = None
    off_s: float | None = None
    rate_jitter: float = 0.0
    latency_jitter_s: float = 0.0

    def __post_init__(self) -> None:
        assert self.seeds >= 1 and self.flows >= 0 and 0 <= self.rate_jitter <= 1 and self.latency_jitter_s >= 0
        assert (self.on_s is None) == (self.off_s is None)


@dataclass(frozen=True, kw_only=True)
class MeshLinks:
    """Every ordered pair of a cluster's GPUs joined by a direct link with these parameters, held as
    one record rather than n(n-1) ``LinkSpec``s (a 10,000-GPU mesh has 10^8 links)."""

    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """GPUs 0..num_gpus-1 and switches, joined by the explicit directed ``links`` or, for a full mesh,
    by ``mesh`` (then ``links`` and ``switches`` are empty). Ask for links and routes through
    ``link``, ``route`` and ``routes``: they work for both forms, and routes are found once per
    cluster and source GPU, only for the GPUs asked about. ``noise`` is a random process the reports
    simulate draw by draw (``sim/noise.py``); a drawn cluster carries its flows in ``background`` and its
    ``latency_jitter_s``."""

    name: str
    num_gpus: int
    links: tuple[LinkSpec, ...] = ()
    switches: tuple[str, ...] = ()
    background: tuple[BackgroundFlow, ...] = ()
    mesh: MeshLinks | None = None
    gpus_per_node: int | None = None  # GPUs numbered node by node; None: no node structure
    noise: NoiseSpec | None = None  # simulated once per seed (sim/noise.py); the planner ignores it
    latency_jitter_s: float = 0.0  # mean of the exponential extra latency of every transfer
    latency_seed: int = 0  # seeds the generator of those extras

    def __post_init__(self) -> None:
        if not (isinstance(self.num_gpus, int) and self.num_gpus >= 1):
            raise ClusterError(f"cluster {self.name!r}: num_gpus={self.num_gpus!r} must be an integer >= 1")
        if self.gpus_per_node is not None and (self.gpus_per_node < 1 or self.num_gpus % self.gpus_per_node):
            raise ClusterError(f"cluster {self.name!r}: gpus_per_node={self.gpus_per_node} must divide "
                               f"num_gpus={self.num_gpus}")
        nodes = set(range(self.num_gpus)) | set(self.switches)
        by_pair: dict[Link, LinkSpec] = {}
        if self.mesh is not None:
            if self.links or self.switches:
                raise ClusterError(f"cluster {self.name!r}: a mesh cluster has no explicit links or switches")
            self._check_params("every", "pair", self.mesh.bandwidth_bytes_per_s, self.mesh.latency_s)
        for link in self.links:
            for end in (link.src, link.dst):
                if end not in nodes:
                    raise ClusterError(f"cluster {self.name!r}: link end {end!r} is not a GPU or switch")
            if link.src == link.dst:
                raise ClusterError(f"cluster {self.name!r}: link {link.src!r}->{link.dst!r} is a loop")
            if (link.src, link.dst) in by_pair:
                raise ClusterError(f"cluster {self.name!r}: link {link.src!r}->{link.dst!r} given twice")
            by_pair[link.src, link.dst] = link
            self._check_params(link.src, link.dst, link.bandwidth_bytes_per_s, link.latency_s)
        # Lookups and route caches: not fields (equality and the hash are the fields'); the hash is
        # computed once, since a 10,000-GPU cluster's links are slow to hash on every cache lookup.
        object.__setattr__(self, "_by_pair", by_pair)
        object.__setattr__(self, "_paths", {})
        object.__setattr__(self, "_lanes", {})  # (GPUs of the ranks, tp) -> engine/lanes.py's answer
        object.__setattr__(self, "_graph", None)
        object.__setattr__(self, "_hash", hash((self.name, self.num_gpus, self.links, self.switches,
                                                self.background, self.mesh, self.gpus_per_node, self.noise,
                                                self.latency_jitter_s, self.latency_seed)))
        for bg in self.background:
            if not self.has_link(bg.src, bg.dst):
                raise ClusterError(f"cluster {self.name!r}: background flow on {bg.src!r}->{bg.dst!r}, "
                                   "which is not a link")
        for src, dst in (self.noise.links or ()) if self.noise is not None else ():
            if not self.has_link(src, dst):
                raise ClusterError(f"cluster {self.name!r}: noise on {src!r}->{dst!r}, which is not a link")
        if self.mesh is None:
            self._check_reachable()

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        # The repr fingerprints the cluster a KVR-P table was searched for (sim/partition/table.py):
        # the fields that are set, so an explicit cluster reads as it did before meshes existed.
        form = f"mesh={self.mesh!r}" if self.mesh is not None else f"links={self.links!r}, switches={self.switches!r}"
        # ``noise`` is left out: the planner plans on the quiet cluster (sim/noise.py), so a table fits both.
        nodes = f", gpus_per_node={self.gpus_per_node!r}" if self.gpus_per_node is not None else ""
        jitter = (f", latency_jitter_s={self.latency_jitter_s!r}, latency_seed={self.latency_seed!r}"
                  if self.latency_jitter_s else "")
        return (f"ClusterSpec(name={self.name!r}, num_gpus={self.num_gpus!r}, {form}, "
                f"background={self.background!r}{nodes}{jitter})")

    def _check_params(self, src: Node, dst: Node, bandwidth_bytes_per_s: float, latency_s: float) -> None:
        if not bandwidth_bytes_per_s > 0:
            raise ClusterError(f"cluster {self.name!r}: link {src!r}->{dst!r} "
                               f"bandwidth_bytes_per_s={bandwidth_bytes_per_s!r} must be > 0")
        if not latency_s >= 0:
            raise ClusterError(f"cluster {self.name!r}: link {src!r}->{dst!r} latency_s={latency_s!r} must be >= 0")

    def _check_reachable(self) -> None:
        """Every GPU reaches every other: all reach GPU 0 and GPU 0 reaches all (two searches, O(V+E))."""
        g = self.graph()
        reach = nx.descendants(g, 0)
        for b in range(1, self.num_gpus):
            if b not in reach:
                raise ClusterError(f"cluster {self.name!r}: GPU {b} cannot be reached from GPU 0")
        back = nx.ancestors(g, 0)
        for a in range(1, self.num_gpus):
            if a not in back:
                raise ClusterError(f"cluster {self.name!r}: GPU 0 cannot be reached from GPU {a}")

    # ----- links and routes ----------------------------------------------------------------------
    def has_link(self, src: Node, dst: Node) -> bool:
        if self.mesh is not None:
            return _is_gpu(src, self.num_gpus) and _is_gpu(dst, self.num_gpus) and src != dst
        return (src, dst) in self._by_pair

    def link(self, src: Node, dst: Node) -> LinkSpec:
        """The directed link src -> dst (``KeyError`` if there is none)."""
        if self.mesh is not None:
            if not self.has_link(src, dst):
                raise KeyError((src, dst))
            return LinkSpec(src=src, dst=dst, bandwidth_bytes_per_s=self.mesh.bandwidth_bytes_per_s,
                            latency_s=self.mesh.latency_s)
        return self._by_pair[src, dst]

    def all_links(self) -> tuple[LinkSpec, ...]:
        """Every directed link, a mesh's spelled out (for small clusters: n(n-1) of them)."""
        if self.mesh is None:
            return self.links
        return mesh(range(self.num_gpus), self.mesh.bandwidth_bytes_per_s, self.mesh.latency_s)

    def route(self, a: int, b: int) -> tuple[Link, ...]:
        """The links from GPU a to GPU b: the least total latency, ties to fewer hops, then networkx's
        deterministic order; a mesh's route is its direct link. Found once per source GPU."""
        if self.mesh is not None:
            if not (self.has_link(a, b)):
                raise KeyError((a, b))
            return ((a, b),)
        paths = self._paths.get(a)
        if paths is None:
            paths = nx.single_source_dijkstra_path(self.graph(), a, weight="route_weight")
            self._paths[a] = paths
        p = paths[b]
        return tuple(zip(p, p[1:]))

    def routes(self, gpus=None) -> dict[tuple[int, int], tuple[Link, ...]]:
        """The route between every ordered pair of ``gpus`` (default: all the cluster's)."""
        gpus = range(self.num_gpus) if gpus is None else list(gpus)
        return {(a, b): self.route(a, b) for a in gpus for b in gpus if a != b}

    def graph(self) -> nx.DiGraph:
        """The cluster as a networkx graph (a mesh's links spelled out: small clusters only)."""
        if self._graph is None:
            g = nx.DiGraph()
            g.add_nodes_from(range(self.num_gpus), kind="gpu")
            g.add_nodes_from(self.switches, kind="switch")
            for link in self.all_links():
                g.add_edge(link.src, link.dst, bandwidth_bytes_per_s=link.bandwidth_bytes_per_s,
                           latency_s=link.latency_s, route_weight=link.latency_s + _HOP_TIEBREAK_S)
            object.__setattr__(self, "_graph", g)
        return self._graph

    # ----- named constructors --------------------------------------------------------------------
    @classmethod
    def uniform(cls, name: str, num_gpus: int, bandwidth_bytes_per_s: float, latency_s: float,
                **kw: object) -> "ClusterSpec":
        """Every ordered pair of GPUs joined by a direct link (a ``MeshLinks``)."""
        return cls(name=name, num_gpus=num_gpus,
                   mesh=MeshLinks(bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=latency_s), **kw)


def _is_gpu(node: Node, num_gpus: int) -> bool:
    return isinstance(node, int) and not isinstance(node, bool) and 0 <= node < num_gpus


def mesh(nodes, bandwidth_bytes_per_s: float, latency_s: float) -> tuple[LinkSpec, ...]:
    """Direct links both ways between every pair of ``nodes``."""
    nodes = list(nodes)
    return tuple(LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=latency_s)
                 for a in nodes for b in nodes if a != b)


def duplex(a: Node, b: Node, bandwidth_bytes_per_s: float, latency_s: float) -> tuple[LinkSpec, ...]:
    return tuple(LinkSpec(src=s, dst=d, bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=latency_s)
                 for s, d in ((a, b), (b, a)))
