"""The ``clusters`` section of a scenario: uniform and throttled meshes, non-uniform links and nodes,
and multi-node clusters from presets (``sim/multinode.py``), each to a ``ClusterSpec``; errors name
the YAML path (docs/scenarios.md, "clusters[i]").
"""
from __future__ import annotations

from typing import Any

from . import multinode
from .cluster import BackgroundFlow, ClusterError, ClusterSpec, LinkSpec, MeshLinks, duplex, mesh
from .yaml_fields import ScenarioError, integer, listed, mapping, need, number, text

GB = 1e9  # bytes: bandwidths are given in GB/s (10^9 bytes per second)
US_PER_S = 1e6  # times are given in microseconds; value / 1e6 is exact for round values
THROTTLED_GB_PER_S = 10.0
NODES_SWITCH = "network"  # the switch that joins the nodes of a `nodes:` cluster


def _link_params(d: dict, at: str) -> tuple[float, float]:
    return (number(d["bandwidth_gb_per_s"], f"{at}.bandwidth_gb_per_s") * GB,
            number(d.get("latency_us", 0.0), f"{at}.latency_us", minimum=0) / US_PER_S)


def _multinode(d: dict, at: str) -> ClusterSpec:
    """``kind: multinode``: nodes of a node preset on a fabric preset (``sim/multinode.py``)."""
    d = mapping(d, at, required=("name", "kind", "nodes", "node", "fabric"),
                optional=("gpus", "nics", "oversubscription", "background"))
    need(d["node"] in multinode.NODES, f"{at}.node", f"must be one of {list(multinode.NODES)}", d["node"])
    need(d["fabric"] in multinode.FABRICS, f"{at}.fabric", f"must be one of {list(multinode.FABRICS)}", d["fabric"])
    nics = d.get("nics", "rail")
    need(nics in ("rail", "shared"), f"{at}.nics", "must be 'rail' (one NIC a GPU) or 'shared'", nics)
    over = number(d.get("oversubscription", 1.0), f"{at}.oversubscription")
    need(over >= 1, f"{at}.oversubscription", "must be >= 1", d.get("oversubscription"))
    n, switches, links = multinode.links(nodes=integer(d["nodes"], f"{at}.nodes"), node=d["node"],
                                         fabric=d["fabric"], nics=nics, oversubscription=over)
    if "gpus" in d:
        need(d["gpus"] == n, f"{at}.gpus", f"must be nodes x the node's GPUs = {n}, or left out", d["gpus"])
    name = text(d["name"], f"{at}.name")
    background = tuple(_background(b, f"{at}.background[{i}]", set(range(n)) | set(switches))
                       for i, b in enumerate(listed(d.get("background", []), f"{at}.background", empty=True)))
    try:
        return ClusterSpec(name=name, num_gpus=n, links=links, switches=switches, background=background,
                           gpus_per_node=int(multinode.NODES[d["node"]]["gpus_per_node"]))
    except ClusterError as e:
        raise ScenarioError(f"{at}: {e}") from None


def parse_cluster(value: Any, at: str) -> ClusterSpec:
    if isinstance(value, dict) and value.get("kind") == "multinode":
        return _multinode(value, at)
    d = mapping(value, at, required=("name", "kind", "gpus"),
                 optional=("bandwidth_gb_per_s", "latency_us", "switches", "links", "nodes", "background"))
    kind = d["kind"]
    need(kind in ("uniform", "throttled", "nonuniform"), f"{at}.kind",
          "must be 'uniform', 'throttled', 'nonuniform' or 'multinode'", kind)
    name, n = text(d["name"], f"{at}.name"), integer(d["gpus"], f"{at}.gpus")
    own = {"uniform": ("bandwidth_gb_per_s", "latency_us"), "throttled": ("bandwidth_gb_per_s", "latency_us"),
           "nonuniform": ("switches", "links", "nodes")}[kind]
    for key in d:
        need(key in own or key in ("name", "kind", "gpus", "background"), f"{at}.{key}",
              f"is not a field of a {kind} cluster", d[key])
    switches: list[str] = []
    links: tuple[LinkSpec, ...] = ()
    full_mesh = None
    if kind == "nonuniform":
        switches = [text(s, f"{at}.switches[{i}]") for i, s in enumerate(listed(d.get("switches", []), f"{at}.switches", empty=True))]
        links = _nonuniform_links(d, at, n, switches)
    else:
        if kind == "uniform":
            need("bandwidth_gb_per_s" in d, at, "a uniform cluster needs bandwidth_gb_per_s", None)
        bw, lat = _link_params({"bandwidth_gb_per_s": THROTTLED_GB_PER_S, **d}, at)
        full_mesh = MeshLinks(bandwidth_bytes_per_s=bw, latency_s=lat)
    nodes = set(range(n)) | set(switches)
    background = tuple(_background(b, f"{at}.background[{i}]", nodes)
                       for i, b in enumerate(listed(d.get("background", []), f"{at}.background", empty=True)))
    per_node = d["nodes"]["gpus_per_node"] if kind == "nonuniform" and "nodes" in d else None
    try:
        return ClusterSpec(name=name, num_gpus=n, links=links, switches=tuple(switches), background=background,
                           mesh=full_mesh, gpus_per_node=per_node)
    except ClusterError as e:
        raise ScenarioError(f"{at}: {e}") from None


def _nonuniform_links(d: dict, at: str, n: int, switches: list[str]) -> tuple[LinkSpec, ...]:
    links: list[LinkSpec] = []
    if "nodes" in d:
        nd = mapping(d["nodes"], f"{at}.nodes", required=("gpus_per_node", "intra", "inter"))
        k = integer(nd["gpus_per_node"], f"{at}.nodes.gpus_per_node")
        need(n % k == 0, f"{at}.nodes.gpus_per_node", f"must divide gpus={n}", k)
        need(NODES_SWITCH not in switches, f"{at}.switches", f"must not name {NODES_SWITCH!r} "
              "(the switch that `nodes` adds)", switches)
        intra = _link_params(mapping(nd["intra"], f"{at}.nodes.intra", required=("bandwidth_gb_per_s",),
                                      optional=("latency_us",)), f"{at}.nodes.intra")
        inter = _link_params(mapping(nd["inter"], f"{at}.nodes.inter", required=("bandwidth_gb_per_s",),
                                      optional=("latency_us",)), f"{at}.nodes.inter")
        for first in range(0, n, k):
            links += mesh(range(first, first + k), *intra)
        for g in range(n):
            links += duplex(g, NODES_SWITCH, *inter)
        switches.append(NODES_SWITCH)
    endpoints = set(range(n)) | set(switches)
    for i, value in enumerate(listed(d.get("links", []), f"{at}.links", empty=True)):
        li = f"{at}.links[{i}]"
        ld = mapping(value, li, required=("bandwidth_gb_per_s",), optional=("ends", "mesh", "directed", "latency_us"))
        need(("ends" in ld) != ("mesh" in ld), li, "needs exactly one of `ends: [a, b]` and `mesh: [...]`",
              sorted(ld))
        params = _link_params(ld, li)
        key = "ends" if "ends" in ld else "mesh"
        ends = [_endpoint(e, f"{li}.{key}[{j}]", endpoints) for j, e in enumerate(listed(ld[key], f"{li}.{key}"))]
        if key == "ends":
            need(len(ends) == 2, f"{li}.ends", "must name two endpoints", ld["ends"])
            directed = ld.get("directed", False)
            need(isinstance(directed, bool), f"{li}.directed", "must be true or false", directed)
            links += ((LinkSpec(src=ends[0], dst=ends[1], bandwidth_bytes_per_s=params[0], latency_s=params[1]),)
                      if directed else duplex(ends[0], ends[1], *params))
        else:
            need("directed" not in ld, f"{li}.directed", "applies to `ends` only", ld.get("directed"))
            links += mesh(ends, *params)
    need(bool(links), at, "a nonuniform cluster needs `links` or `nodes`", None)
    # A later entry for the same directed link replaces an earlier one: "a mesh, then a few slow links".
    return tuple({(link.src, link.dst): link for link in links}.values())


def _endpoint(value: Any, at: str, endpoints: set) -> int | str:
    need(not isinstance(value, bool) and value in endpoints, at,
          f"must be a GPU index 0..{max(e for e in endpoints if isinstance(e, int))} or a listed switch", value)
    return value


def _background(value: Any, at: str, endpoints: set) -> BackgroundFlow:
    d = mapping(value, at, required=("link",), optional=("flows", "start_us", "on_us", "off_us", "random_seed"))
    link = listed(d["link"], f"{at}.link")
    need(len(link) == 2, f"{at}.link", "must be [from, to]", d["link"])
    src, dst = (_endpoint(e, f"{at}.link[{j}]", endpoints) for j, e in enumerate(link))
    need(("on_us" in d) == ("off_us" in d), at, "on_us and off_us go together", sorted(d))
    on_s = number(d["on_us"], f"{at}.on_us") / US_PER_S if "on_us" in d else None
    off_s = number(d["off_us"], f"{at}.off_us") / US_PER_S if "off_us" in d else None
    need("random_seed" not in d or "on_us" in d, f"{at}.random_seed", "needs on_us and off_us (the mean periods)",
         d.get("random_seed"))
    need(on_s is None or (on_s > 0 and off_s >= 0), f"{at}.on_us", "must be > 0 (and off_us >= 0)", d.get("on_us"))
    seed = integer(d["random_seed"], f"{at}.random_seed", minimum=0) if "random_seed" in d else None
    return BackgroundFlow(src=src, dst=dst, flows=integer(d.get("flows", 1), f"{at}.flows"),
                          start_s=number(d.get("start_us", 0), f"{at}.start_us", minimum=0) / US_PER_S,
                          on_s=on_s, off_s=off_s, seed=seed)
