"""A cluster: GPUs (and optional switches) joined by directed links, as a networkx graph; routing.

Nodes are GPU indices (int, 0..n-1) and switch names (str). Every edge carries
``bandwidth_bytes_per_s`` and ``latency_s``. A transfer from GPU a to GPU b follows one route: the path
of least total latency, ties broken by fewer hops, then by networkx's (deterministic) search order.
The SimPy side (links shared by concurrent transfers) is in ``network.py``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
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
    from ``start_s``."""

    src: Node
    dst: Node
    flows: int = 1
    start_s: float = 0.0
    on_s: float | None = None
    off_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    name: str
    num_gpus: int
    links: tuple[LinkSpec, ...]
    switches: tuple[str, ...] = ()
    background: tuple[BackgroundFlow, ...] = ()

    def __post_init__(self) -> None:
        nodes = set(range(self.num_gpus)) | set(self.switches)
        seen = set()
        for link in self.links:
            for end in (link.src, link.dst):
                if end not in nodes:
                    raise ClusterError(f"cluster {self.name!r}: link end {end!r} is not a GPU or switch")
            if link.src == link.dst:
                raise ClusterError(f"cluster {self.name!r}: link {link.src!r}->{link.dst!r} is a loop")
            if (link.src, link.dst) in seen:
                raise ClusterError(f"cluster {self.name!r}: link {link.src!r}->{link.dst!r} given twice")
            seen.add((link.src, link.dst))
            if not link.bandwidth_bytes_per_s > 0:
                raise ClusterError(f"cluster {self.name!r}: link {link.src!r}->{link.dst!r} "
                                   f"bandwidth_bytes_per_s={link.bandwidth_bytes_per_s!r} must be > 0")
            if not link.latency_s >= 0:
                raise ClusterError(f"cluster {self.name!r}: link {link.src!r}->{link.dst!r} "
                                   f"latency_s={link.latency_s!r} must be >= 0")
        for bg in self.background:
            if (bg.src, bg.dst) not in seen:
                raise ClusterError(f"cluster {self.name!r}: background flow on {bg.src!r}->{bg.dst!r}, "
                                   "which is not a link")
        graph = self.graph()
        for a in range(self.num_gpus):
            reach = nx.descendants(graph, a)
            for b in range(self.num_gpus):
                if a != b and b not in reach:
                    raise ClusterError(f"cluster {self.name!r}: GPU {b} cannot be reached from GPU {a}")

    def graph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(range(self.num_gpus), kind="gpu")
        g.add_nodes_from(self.switches, kind="switch")
        for link in self.links:
            g.add_edge(link.src, link.dst, bandwidth_bytes_per_s=link.bandwidth_bytes_per_s,
                       latency_s=link.latency_s)
        return g

    # ----- named constructors --------------------------------------------------------------------
    @classmethod
    def uniform(cls, name: str, num_gpus: int, bandwidth_bytes_per_s: float, latency_s: float,
                **kw: object) -> "ClusterSpec":
        """Every ordered pair of GPUs joined by a direct link."""
        return cls(name=name, num_gpus=num_gpus,
                   links=mesh(range(num_gpus), bandwidth_bytes_per_s, latency_s), **kw)


def mesh(nodes, bandwidth_bytes_per_s: float, latency_s: float) -> tuple[LinkSpec, ...]:
    """Direct links both ways between every pair of ``nodes``."""
    nodes = list(nodes)
    return tuple(LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=latency_s)
                 for a in nodes for b in nodes if a != b)


def duplex(a: Node, b: Node, bandwidth_bytes_per_s: float, latency_s: float) -> tuple[LinkSpec, ...]:
    return tuple(LinkSpec(src=s, dst=d, bandwidth_bytes_per_s=bandwidth_bytes_per_s, latency_s=latency_s)
                 for s, d in ((a, b), (b, a)))


@functools.lru_cache(maxsize=64)
def routes(cluster: ClusterSpec) -> dict[tuple[int, int], tuple[Link, ...]]:
    """The route (as its links) between every ordered pair of GPUs."""
    g = cluster.graph()
    out: dict[tuple[int, int], tuple[Link, ...]] = {}
    for a in range(cluster.num_gpus):
        paths = nx.single_source_dijkstra_path(g, a, weight=lambda u, v, e: e["latency_s"] + _HOP_TIEBREAK_S)
        for b in range(cluster.num_gpus):
            if a != b:
                p = paths[b]
                out[a, b] = tuple(zip(p, p[1:]))
    return out
