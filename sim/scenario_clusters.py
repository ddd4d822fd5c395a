"""The ``clusters`` section of a scenario: uniform and throttled meshes, non-uniform links and nodes,
host-staged PCIe trees, and multi-node clusters from presets (``sim/multinode.py``), each to a
``ClusterSpec``, with its background flows and noise; errors name the YAML path (docs/scenarios.md,
"clusters[i]"; the host-staged defaults and their sources: docs/cost_model.md, "Host-staged links").
"""
from __future__ import annotations

from typing import Any

from . import multinode
from .cluster import BackgroundFlow, ClusterError, ClusterSpec, LinkSpec, MeshLinks, NoiseSpec, duplex, mesh
from .yaml_fields import ScenarioError, integer, listed, mapping, need, number, text

GB = 1e9  # bytes: bandwidths are given in GB/s (10^9 bytes per second)
US_PER_S = 1e6  # times are given in microseconds; value / 1e6 is exact for round values
THROTTLED_GB_PER_S = 10.0
NODES_SWITCH = "network"  # the switch that joins the nodes of a `nodes:` cluster
# kind: host-staged (P2P disabled: every transfer GPU -> PCIe switch -> host -> PCIe switch -> GPU). Sources:
# docs/cost_model.md, "Host-staged links".
HOST_STAGED_DEFAULTS = {
    "bandwidth_gb_per_s": THROTTLED_GB_PER_S,  # one staged transfer alone: KV-Runahead's 10 GB/s setting
    "gpus_per_switch": 2,  # DGX A100: 8 GPUs on 4 PCIe Gen4 switches (nvidia-smi topo: GPU pairs PXB)
    "switch_uplink_gb_per_s": 24.8,  # PCIe Gen4 x16 achieved: nvbandwidth host<->device on 8 x A100 SXM4
    "sockets": 2,  # DGX A100: 2 AMD EPYC 7742
    "socket_link_gb_per_s": 128.0,  # 4 xGMI x16 links at 16 Gb/s a lane, one way (assumed speed)
    "latency_us": 5.7,  # NCCL's tuning model: a ring step over PCI, Simple protocol (src/graph/tuning.cc)
}


def _link_params(d: dict, at: str) -> tuple[float, float]:
    return (number(d["bandwidth_gb_per_s"], f"{at}.bandwidth_gb_per_s") * GB,
            number(d.get("latency_us", 0.0), f"{at}.latency_us", minimum=0) / US_PER_S)


def _multinode(d: dict, at: str) -> ClusterSpec:
    """``kind: multinode``: nodes of a node preset on a fabric preset (``sim/multinode.py``)."""
    d = mapping(d, at, required=("name", "kind", "nodes", "node", "fabric"),
                optional=("gpus", "nics", "oversubscription", "background", "noise"))
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
    return _build(d, at, n, links=links, switches=switches,
                  gpus_per_node=int(multinode.NODES[d["node"]]["gpus_per_node"]))


def _host_staged(d: dict, at: str) -> ClusterSpec:
    """``kind: host-staged``: GPUs without peer-to-peer (NCCL_P2P_DISABLE, NCCL's SHM transport). Each
    GPU has its own PCIe link to a switch ``pcieS`` (``gpus_per_switch`` GPUs a switch), each switch an
    uplink to its CPU socket ``hostK``, the sockets a link between every pair; no GPU-to-GPU link, so
    every transfer is staged through host memory and concurrent ones share the uplinks and socket links.
    A switch is two nodes, ``pcieS`` up and ``pcieS-down``, so that two GPUs of one switch also go
    through the host. The transfer latency is split over the two GPU links."""
    d = mapping(d, at, required=("name", "kind", "gpus"),
                optional=(*HOST_STAGED_DEFAULTS, "background", "noise"))
    p = {**HOST_STAGED_DEFAULTS, **d}
    n = integer(d["gpus"], f"{at}.gpus")
    per_switch = integer(p["gpus_per_switch"], f"{at}.gpus_per_switch")
    need(n % per_switch == 0, f"{at}.gpus_per_switch", f"must divide gpus={n}", per_switch)
    switches = n // per_switch
    sockets = integer(p["sockets"], f"{at}.sockets")
    need(sockets <= switches, f"{at}.sockets", f"must be at most the {switches} PCIe switches", sockets)
    gpu_bw, half_s = _link_params({"bandwidth_gb_per_s": p["bandwidth_gb_per_s"], "latency_us": p["latency_us"]}, at)
    half_s /= 2
    uplink = number(p["switch_uplink_gb_per_s"], f"{at}.switch_uplink_gb_per_s") * GB
    socket_link = number(p["socket_link_gb_per_s"], f"{at}.socket_link_gb_per_s") * GB
    links: list[LinkSpec] = []
    for g in range(n):
        up, down = f"pcie{g // per_switch}", f"pcie{g // per_switch}-down"
        links += [LinkSpec(src=g, dst=up, bandwidth_bytes_per_s=gpu_bw, latency_s=half_s),
                  LinkSpec(src=down, dst=g, bandwidth_bytes_per_s=gpu_bw, latency_s=half_s)]
    for sw in range(switches):
        host = f"host{sw * sockets // switches}"
        links += [LinkSpec(src=f"pcie{sw}", dst=host, bandwidth_bytes_per_s=uplink, latency_s=0.0),
                  LinkSpec(src=host, dst=f"pcie{sw}-down", bandwidth_bytes_per_s=uplink, latency_s=0.0)]
    links += mesh((f"host{k}" for k in range(sockets)), socket_link, 0.0)
    names = (*(f"pcie{sw}{end}" for sw in range(switches) for end in ("", "-down")),
             *(f"host{k}" for k in range(sockets)))
    return _build(d, at, n, links=tuple(links), switches=names)


def _build(d: dict, at: str, n: int, **spec) -> ClusterSpec:
    """The ``ClusterSpec`` of ``d`` with its ``background`` and ``noise``; a ``ClusterError`` as one line."""
    endpoints = set(range(n)) | set(spec.get("switches", ()))
    background = tuple(_background(b, f"{at}.background[{i}]", endpoints)
                       for i, b in enumerate(listed(d.get("background", []), f"{at}.background", empty=True)))
    noise = _noise(d["noise"], f"{at}.noise", endpoints) if "noise" in d else None
    try:
        return ClusterSpec(name=text(d["name"], f"{at}.name"), num_gpus=n, background=background, noise=noise,
                           **spec)
    except ClusterError as e:
        raise ScenarioError(f"{at}: {e}") from None


def parse_cluster(value: Any, at: str) -> ClusterSpec:
    if isinstance(value, dict) and value.get("kind") == "multinode":
        return _multinode(value, at)
    if isinstance(value, dict) and value.get("kind") == "host-staged":
        return _host_staged(value, at)
    d = mapping(value, at, required=("name", "kind", "gpus"),
                 optional=("bandwidth_gb_per_s", "latency_us", "switches", "links", "nodes", "background", "noise"))
    kind = d["kind"]
    need(kind in ("uniform", "throttled", "nonuniform"), f"{at}.kind",
          "must be 'uniform', 'throttled', 'nonuniform', 'host-staged' or 'multinode'", kind)
    text(d["name"], f"{at}.name")
    n = integer(d["gpus"], f"{at}.gpus")
    own = {"uniform": ("bandwidth_gb_per_s", "latency_us"), "throttled": ("bandwidth_gb_per_s", "latency_us"),
           "nonuniform": ("switches", "links", "nodes")}[kind]
    for key in d:
        need(key in own or key in ("name", "kind", "gpus", "background", "noise"), f"{at}.{key}",
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
    per_node = d["nodes"]["gpus_per_node"] if kind == "nonuniform" and "nodes" in d else None
    return _build(d, at, n, links=links, switches=tuple(switches), mesh=full_mesh, gpus_per_node=per_node)


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


def _link_pair(value: Any, at: str, endpoints: set) -> tuple:
    link = listed(value, at)
    need(len(link) == 2, at, "must be [from, to]", value)
    return tuple(_endpoint(e, f"{at}[{j}]", endpoints) for j, e in enumerate(link))


def _on_off(d: dict, at: str) -> tuple[float | None, float | None]:
    """``on_us`` and ``off_us`` (both or neither) in seconds."""
    need(("on_us" in d) == ("off_us" in d), at, "on_us and off_us go together", sorted(d))
    on_s = number(d["on_us"], f"{at}.on_us") / US_PER_S if "on_us" in d else None
    off_s = number(d["off_us"], f"{at}.off_us") / US_PER_S if "off_us" in d else None
    need(on_s is None or (on_s > 0 and off_s >= 0), f"{at}.on_us", "must be > 0 (and off_us >= 0)", d.get("on_us"))
    return on_s, off_s


def _fraction(d: dict, key: str, at: str) -> float:
    value = number(d.get(key, 0.0), f"{at}.{key}", minimum=0)
    need(value <= 1, f"{at}.{key}", "must be in [0, 1]", d.get(key))
    return value


def _background(value: Any, at: str, endpoints: set) -> BackgroundFlow:
    d = mapping(value, at, required=("link",),
                optional=("flows", "start_us", "on_us", "off_us", "random_seed", "rate_jitter"))
    src, dst = _link_pair(d["link"], f"{at}.link", endpoints)
    on_s, off_s = _on_off(d, at)
    need("random_seed" not in d or "on_us" in d, f"{at}.random_seed", "needs on_us and off_us (the mean periods)",
         d.get("random_seed"))
    seed = integer(d["random_seed"], f"{at}.random_seed", minimum=0) if "random_seed" in d else None
    return BackgroundFlow(src=src, dst=dst, flows=integer(d.get("flows", 1), f"{at}.flows"),
                          start_s=number(d.get("start_us", 0), f"{at}.start_us", minimum=0) / US_PER_S,
                          on_s=on_s, off_s=off_s, seed=seed, rate_jitter=_fraction(d, "rate_jitter", at))


def _noise(value: Any, at: str, endpoints: set) -> NoiseSpec:
    """A cluster's ``noise``: ``seeds`` draws of competing flows on ``links`` (``used`` or [from, to]
    pairs) with random on/off periods, rate and latency jitter (docs/scenarios.md)."""
    d = mapping(value, at, required=("seeds",),
                optional=("links", "flows", "on_us", "off_us", "rate_jitter", "latency_jitter_us"))
    links = d.get("links", "used")
    if links != "used":
        pairs = listed(links, f"{at}.links") if not isinstance(links, str) else None
        need(pairs is not None, f"{at}.links", "must be 'used' or a list of [from, to] pairs", links)
        links = tuple(_link_pair(pair, f"{at}.links[{i}]", endpoints) for i, pair in enumerate(pairs))
        need(len(set(links)) == len(links), f"{at}.links", "must not repeat a link", d["links"])
    on_s, off_s = _on_off(d, at)
    return NoiseSpec(seeds=integer(d["seeds"], f"{at}.seeds"), links=None if links == "used" else links,
                     flows=integer(d.get("flows", 1), f"{at}.flows", minimum=0), on_s=on_s, off_s=off_s,
                     rate_jitter=_fraction(d, "rate_jitter", at),
                     latency_jitter_s=number(d.get("latency_jitter_us", 0), f"{at}.latency_jitter_us",
                                             minimum=0) / US_PER_S)
