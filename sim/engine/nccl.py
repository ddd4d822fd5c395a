"""NCCL's own cost model (``communication: nccl``): pure functions, no SimPy.

For a communicator (ranks, nodes, the transport and bandwidth of its hops, the GPU generation) and a
message size, the predicted time of each (algorithm, protocol) as NCCL's tuner computes it, and the
one NCCL picks (the least time): ring and tree for all-reduce, ring for all-gather and reduce-scatter;
protocols LL, LL128 and Simple. Point-to-point sends use NCCL's p2p path: LL up to NCCL's p2p LL
threshold, Simple above it. ``NcclModel`` answers these questions for the GPUs of a cluster (the
transport of a pair: ``transport``). Every constant and the derivations: docs/cost_model.md, "NCCL's
model (communication: nccl)". Reference: NCCL 2.30.7, src/graph/tuning.cc, search.cc, topo.h,
enqueue.cc (github.com/NVIDIA/nccl).

    python -m sim.engine.nccl --gpus 8 --bandwidth-gb-per-s 300 --transport nvlink
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from ..cluster import ClusterSpec

ALGORITHMS = ("tree", "ring")
PROTOCOLS = ("LL", "LL128", "Simple")
TRANSPORTS = ("nvlink", "pci", "net")
ARCHS = ("ampere", "hopper", "blackwell")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce")
GB, US = 1e9, 1e-6  # NCCL's bandwidths are GB/s (10^9 B/s), its latencies microseconds

# tuning.cc, ncclTunerConstantsDefaults: base latency (us) of (algorithm, protocol)
BASE_LATENCY_US = {"tree": {"LL": 6.8, "LL128": 14.0, "Simple": 8.4},
                   "ring": {"LL": 6.6, "LL128": 14.0, "Simple": 8.4}}
# tuning.cc, hwLatencies: latency (us) of one hop by transport
HOP_LATENCY_US = {
    "nvlink": {"tree": {"LL": 0.6, "LL128": 1.25, "Simple": 4.0}, "ring": {"LL": 0.6, "LL128": 1.9, "Simple": 3.4}},
    "pci": {"tree": {"LL": 1.0, "LL128": 1.9, "Simple": 4.0}, "ring": {"LL": 1.0, "LL128": 2.5, "Simple": 5.7}},
    "net": {"tree": {"LL": 5.0, "LL128": 8.5, "Simple": 14.0}, "ring": {"LL": 2.7, "LL128": 4.0, "Simple": 14.0}},
}
# tuning.cc: per-architecture caps (GB/s), indexed by nodes: (1 node, 2 nodes, more)
LL_MAX_BW_ONE_NODE = {"ampere": 87.7, "hopper": 141.0, "blackwell": 282.0}  # llMaxBws[compCap][0]
LL_MAX_BW_NODES = (39.0, 20.4)  # llMaxBws[0 (Intel CPU)][1 | 2]: 2 nodes, more
PER_CHANNEL_RING_LL128_GB = {"ampere": 20.0, "hopper": 36.7, "blackwell": 40.0}
PER_CHANNEL_TREE_LL128_GB = {"ampere": (20.0, 20.0, 20.0), "hopper": (36.7, 36.7, 29.0),
                             "blackwell": (55.6, 31.67, 20.0)}
PER_CHANNEL_TREE_GB = {"ampere": (24.0, 23.6, 17.8), "hopper": (38.7, 41.4, 36.0), "blackwell": (70.0, 42.8, 24.0)}
# tuning.cc: protocol efficiencies of the bus bandwidth
LL_RING_FRACTION = 0.5  # LL: 8-byte lines carry 4 data bytes (and a 4-byte flag)
LL128_FRACTION = 0.92  # LL128: 120 data bytes a 128-byte line (NCCL rounds 0.9375 to 0.92)
TREE_FRACTION = 0.92
TREE_LL_DIVISOR = 3.8
TREE_LL128_ONE_NODE = 7.0 / 9.0
TREE_LL128_NODES = 120.0 / 128.0
# tuning.cc, treeCorrectionFactor[protocol][log2(bytes / 64)], 64 B .. 256 MiB
TREE_CORRECTION = {
    "LL": (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0, 1.0, 1.0, 1.0),
    "LL128": (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1.0, 1.0, 1.0),
    "Simple": (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9, .9),
}
NET_OVERHEAD_US = 1.0  # tuning.cc getNetOverhead, an Intel x86 host; x3 for Simple
RING_PLATEAU = 1.4  # tuning.cc ncclTopoGetAlgoTime: multi-node ring Simple all-reduce, compute capability >= 80
# topo.h: NCCL's bandwidth of one NVLink (GB/s); the link runs at 25 GB/s each way (NVLink 3 and 4), 50 (NVLink 5)
NVLINK_NCCL_GB = {"ampere": (20.0, 25.0), "hopper": (20.6, 25.0), "blackwell": (40.1, 50.0)}
# search.cc: the per-channel speeds the topology search tries, fastest first
SPEEDS_INTRA = {"ampere": (40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0),
                "hopper": (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0),
                "blackwell": (90.0, 80.0, 70.0, 60.0, 50.0, 45.0, 40.0, 30.0, 24.0, 20.0, 19.0, 18.0)}
SPEEDS_INTER = {"ampere": (48.0, 30.0, 28.0, 24.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0,
                           2.4, 1.2, 0.24, 0.12),
                "hopper": (48.0, 45.0, 42.0, 40.0, 30.0, 24.0, 22.0, 20.0, 17.5, 15.0, 12.0, 6.0, 3.0, 2.4, 1.2,
                           0.24, 0.12),
                "blackwell": (96.0, 86.0, 80.0, 48.0, 45.1, 42.0, 40.0, 30.0, 24.0, 22.0, 20.0, 17.5, 15.0, 12.0,
                              6.0, 3.0, 2.4, 1.2, 0.24, 0.12)}
MAX_RING_CHANNELS = 32  # init.cc: a ring graph's maxChannels = MAXCHANNELS / 2
P2P_LL_THRESHOLD_BYTES = 16384  # enqueue.cc NCCL_P2P_LL_THRESHOLD: LL while bytes <= channels x this (1 channel)
NVLINK_MIN_BYTES_PER_S = 40e9  # a route whose slowest link is at least this is NVLink (docs/cost_model.md)
PCI_SWITCH_PREFIXES = ("pcie", "host")  # host-staged clusters: NCCL's SHM transport, PCI latencies
NET_SWITCH_PREFIXES = ("rail", "spine")  # sim/multinode.py's fabric switches


class NcclError(ValueError):
    """An impossible communicator: no ranks, no bandwidth, an unknown transport or GPU generation."""


@dataclass(frozen=True, kw_only=True)
class Comm:
    """A communicator as NCCL's tuner sees it: ``ranks`` GPUs on ``nodes`` nodes, the transport of the
    hops inside a node (``nvlink`` or ``pci``; hops between nodes are ``net``), and the bandwidth of
    the slowest hop, bytes/s each way."""

    ranks: int
    bandwidth_bytes_per_s: float
    transport: str = "nvlink"
    nodes: int = 1
    arch: str = "hopper"

    def __post_init__(self) -> None:
        if not (isinstance(self.ranks, int) and self.ranks >= 1):
            raise NcclError(f"ranks={self.ranks!r} must be an integer >= 1")
        if not (isinstance(self.nodes, int) and 1 <= self.nodes <= self.ranks):
            raise NcclError(f"nodes={self.nodes!r} must be an integer in [1, ranks={self.ranks}]")
        if not self.bandwidth_bytes_per_s > 0:
            raise NcclError(f"bandwidth_bytes_per_s={self.bandwidth_bytes_per_s!r} must be > 0")
        if self.transport not in TRANSPORTS:
            raise NcclError(f"transport={self.transport!r} must be one of {list(TRANSPORTS)}")
        if self.arch not in ARCHS:
            raise NcclError(f"arch={self.arch!r} must be one of {list(ARCHS)}")
        if self.transport == "net" and self.nodes == 1 and self.ranks > 1:
            raise NcclError(f"transport='net' needs nodes > 1 (got nodes=1 for {self.ranks} ranks)")

    @property
    def node_index(self) -> int:
        """NCCL's index2 of its per-node-count tables: 0 (one node), 1 (two), 2 (more)."""
        return min(self.nodes, 3) - 1

    @property
    def hop_transport(self) -> str:
        """The transport whose per-hop latency a ring step pays: NET across nodes, else the intra hop's."""
        return "net" if self.nodes > 1 else self.transport


@dataclass(frozen=True)
class Choice:
    """One (algorithm, protocol) for a message: NCCL's latency and bandwidths and the predicted time.
    ``bus_bytes_per_s`` is the rate one ring step (or tree hop, or p2p send) moves bytes at."""

    algorithm: str  # ring | tree | p2p
    protocol: str
    latency_s: float
    bus_bytes_per_s: float
    algorithm_bytes_per_s: float  # nbytes / algorithm_bytes_per_s is the transfer part of the time
    time_s: float

    def efficiency(self, link_bytes_per_s: float) -> float:
        """The fraction of the slowest hop's bandwidth a flow of this choice moves at."""
        return self.bus_bytes_per_s / link_bytes_per_s


def channels(comm: Comm) -> tuple[int, float]:
    """(channels, GB/s a channel) of the ring NCCL's topology search finds: the fastest speed of its
    table that one channel can carry, as many channels as the hop's bandwidth (in NCCL's units) holds,
    then search.cc's doubling of fast channels (ncclTopoDupChannels)."""
    total_gb = comm.bandwidth_bytes_per_s / GB
    if comm.transport == "nvlink" and comm.nodes == 1:
        nccl_gb, line_gb = NVLINK_NCCL_GB[comm.arch]
        total_gb *= nccl_gb / line_gb
    speeds = SPEEDS_INTRA[comm.arch] if comm.nodes == 1 else SPEEDS_INTER[comm.arch]
    speed = next((s for s in speeds if s <= total_gb), None)
    if speed is None:  # slower than every speed of the table: one channel at the link's rate
        return 1, total_gb
    n = min(MAX_RING_CHANNELS, int(total_gb // speed))
    if speed >= 25.0 and not (comm.arch != "ampere" and speed < 50.0 and n > 4):
        doubled = min(2 * n, MAX_RING_CHANNELS)
        speed /= math.ceil(doubled / n)
        n = doubled
    return n, speed


def _ll_max_gb(comm: Comm) -> float:
    return LL_MAX_BW_ONE_NODE[comm.arch] if comm.nodes == 1 else LL_MAX_BW_NODES[comm.node_index - 1]


def _ll128_enabled(comm: Comm) -> bool:
    """tuning.cc enables LL128 only where the intra-node path is NVLink (typeIntra <= PATH_NVB)."""
    return comm.transport == "nvlink"


def bus_bandwidth_gb(comm: Comm, collective: str, algorithm: str, protocol: str) -> float:
    """NCCL's bus bandwidth (GB/s) of (algorithm, protocol), 0 where NCCL does not use it."""
    if algorithm == "tree" and collective != "all-reduce":
        return 0.0
    if protocol == "LL128" and not _ll128_enabled(comm):
        return 0.0
    n, per_channel_gb = channels(comm)
    bus = n * per_channel_gb
    ll_max = _ll_max_gb(comm)
    if algorithm == "ring":
        if protocol == "LL":
            bus = min(ll_max, bus * LL_RING_FRACTION)
        elif protocol == "LL128":
            bus = min(bus * LL128_FRACTION, n * PER_CHANNEL_RING_LL128_GB[comm.arch])
        return bus
    bus = min(bus * TREE_FRACTION, n * PER_CHANNEL_TREE_GB[comm.arch][comm.node_index])
    if protocol == "LL":
        bus = min(bus / TREE_LL_DIVISOR, ll_max)
    elif protocol == "LL128":
        fraction = TREE_LL128_ONE_NODE if comm.nodes == 1 else TREE_LL128_NODES
        bus = min(bus * fraction, n * PER_CHANNEL_TREE_LL128_GB[comm.arch][comm.node_index])
    return bus


def steps(comm: Comm, collective: str) -> int:
    return 2 * (comm.ranks - 1) if collective == "all-reduce" else comm.ranks - 1


def latency_us(comm: Comm, collective: str, algorithm: str, protocol: str) -> float:
    """NCCL's latency (us): base + steps x per-hop latency (ring), or the tree's depth."""
    intra = HOP_LATENCY_US["pci" if comm.transport == "net" else comm.transport][algorithm][protocol]
    ppn_one = comm.ranks == comm.nodes  # one GPU a node: NCCL uses the tree's network latency
    inter = HOP_LATENCY_US["net"]["tree" if ppn_one else algorithm][protocol]
    base = BASE_LATENCY_US[algorithm][protocol]
    if algorithm == "tree":
        return base + 2 * ((comm.ranks // comm.nodes - 1) * intra + int(math.log2(comm.nodes)) * inter)
    if comm.nodes > 1:
        intra = max(intra, NET_OVERHEAD_US * (3 if protocol == "Simple" else 1))
    n_steps = steps(comm, collective)
    inter_steps = 0 if comm.nodes == 1 else (2 if collective == "all-reduce" else 1) * (comm.nodes - 1)
    return base + (n_steps - inter_steps) * intra + inter_steps * inter


def predict(comm: Comm, collective: str, algorithm: str, protocol: str, nbytes: float) -> Choice | None:
    """NCCL's time for ``nbytes`` (all-gather: the gathered buffer, P chunks; all-reduce: the buffer)
    by (algorithm, protocol), as ncclTopoGetAlgoTime computes it; None where NCCL does not use it."""
    if collective not in COLLECTIVES:
        raise NcclError(f"collective={collective!r} must be one of {list(COLLECTIVES)}")
    bus_gb = bus_bandwidth_gb(comm, collective, algorithm, protocol)
    if bus_gb <= 0 or comm.ranks == 1:
        return None
    lat_us = latency_us(comm, collective, algorithm, protocol)
    if algorithm == "ring":
        alg_gb = bus_gb * comm.ranks / steps(comm, collective)
        if protocol == "Simple" and comm.nodes > 1 and collective == "all-reduce" and \
                nbytes / (2 * channels(comm)[0] * comm.ranks) >= 64:
            lat_us *= RING_PLATEAU
    else:
        log_size = int(math.log2(nbytes // 64)) if nbytes >= 64 else -1
        if 0 <= log_size < 23:
            bus_gb *= TREE_CORRECTION[protocol][log_size]
        alg_gb = bus_gb * 0.5
        bus_gb = alg_gb  # a tree hop moves the whole buffer at the algorithm bandwidth (see the docs)
    return Choice(algorithm, protocol, lat_us * US, bus_gb * GB, alg_gb * GB, lat_us * US + nbytes / (alg_gb * GB))


def choose(comm: Comm, collective: str, nbytes: float) -> Choice:
    """The (algorithm, protocol) NCCL's tuner picks for ``nbytes``: the least predicted time."""
    options = [c for a in ALGORITHMS for p in PROTOCOLS
               if (c := predict(comm, collective, a, p, nbytes)) is not None]
    if not options:
        raise NcclError(f"no algorithm for {collective} on {comm.ranks} rank(s)")
    return min(options, key=lambda c: c.time_s)


def p2p(comm: Comm, nbytes: float) -> Choice:
    """NCCL's send/receive of ``nbytes``: LL up to the p2p LL threshold (the bytes of one channel at
    these sizes), else Simple; latency one ring hop (base + per-hop), bandwidth the ring's."""
    protocol = "LL" if nbytes <= P2P_LL_THRESHOLD_BYTES else "Simple"
    n, per_channel_gb = channels(comm)
    bus_gb = n * per_channel_gb
    if protocol == "LL":
        bus_gb = min(_ll_max_gb(comm), bus_gb * LL_RING_FRACTION)
    lat_us = BASE_LATENCY_US["ring"][protocol] + HOP_LATENCY_US[comm.hop_transport]["ring"][protocol]
    return Choice("p2p", protocol, lat_us * US, bus_gb * GB, bus_gb * GB, lat_us * US + nbytes / (bus_gb * GB))


# ----- the transport of a pair of GPUs in a cluster ----------------------------------------------------
def transport(cluster: ClusterSpec, src: int, dst: int) -> str:
    """NCCL's transport between two GPUs: ``net`` across nodes (``gpus_per_node``) or through a
    multinode fabric's switches; ``pci`` through a host-staged cluster's host or PCIe switches (NCCL's
    SHM transport) or where the route's slowest link is below 40 GB/s; else ``nvlink``."""
    if cluster.gpus_per_node is not None and src // cluster.gpus_per_node != dst // cluster.gpus_per_node:
        return "net"
    route = cluster.route(src, dst)
    through = {node for link in route for node in link if isinstance(node, str)}
    if any(s.startswith(NET_SWITCH_PREFIXES) for s in through):
        return "net"
    if any(s.startswith(PCI_SWITCH_PREFIXES) for s in through):
        return "pci"
    slowest = min(cluster.link(*link).bandwidth_bytes_per_s for link in route)
    return "nvlink" if slowest >= NVLINK_MIN_BYTES_PER_S else "pci"


def arch_of(gpu_name: str) -> str:
    """The GPU generation of a preset name (a100 -> ampere, b200 -> blackwell); hopper otherwise."""
    name = gpu_name.lower()
    if "a100" in name or "a800" in name:
        return "ampere"
    if "b200" in name or "b100" in name or "gb200" in name:
        return "blackwell"
    return "hopper"


class NcclModel:
    """NCCL's model for the GPUs of one cluster: communicators are built from the GPUs they join."""

    def __init__(self, cluster: ClusterSpec, arch: str):
        self.cluster, self.arch = cluster, arch
        self._comms: dict[tuple[int, ...], Comm] = {}

    def comm(self, gpus: tuple[int, ...], *, ring: bool = True) -> Comm:
        """The ring over ``gpus`` in order (each to the next, the last to the first); with ``ring`` false
        the path one way only (a send: its reverse direction carries nothing)."""
        comm = self._comms.get((gpus, ring))
        if comm is None:
            hops = list(zip(gpus, gpus[1:] + (gpus[:1] if ring else ()))) if len(gpus) > 1 else []
            kinds = [transport(self.cluster, a, b) for a, b in hops]
            slowest = min((self._slowest(a, b) for a, b in hops), default=1.0)
            per_node = self.cluster.gpus_per_node
            if per_node is not None:
                nodes = len({g // per_node for g in gpus})
            else:
                nodes = len(gpus) if "net" in kinds else 1
            intra = "pci" if "pci" in kinds else "nvlink"
            comm = self._comms[gpus, ring] = Comm(ranks=len(gpus), bandwidth_bytes_per_s=slowest, transport=intra,
                                            nodes=nodes, arch=self.arch)
        return comm

    def _slowest(self, a: int, b: int) -> float:
        return min(self.cluster.link(*link).bandwidth_bytes_per_s for link in self.cluster.route(a, b))

    def collective(self, collective: str, gpus: tuple[int, ...], nbytes: float) -> tuple[Choice, Comm]:
        comm = self.comm(gpus)
        return choose(comm, collective, nbytes), comm

    def send_ctas(self, src: int, dst: int) -> int:
        return p2p_ctas(self.comm((src, dst), ring=False))

    def collective_ctas(self, gpus: tuple[int, ...]) -> int:
        return collective_ctas(self.comm(gpus))

    def send(self, src: int, dst: int, nbytes: float) -> tuple[Choice, float]:
        """The p2p choice for a send and the bandwidth of its route's slowest link."""
        comm = self.comm((src, dst), ring=False)
        return p2p(comm, nbytes), comm.bandwidth_bytes_per_s


# ----- the thread blocks of NCCL's kernels (what they hold of the SMs: sim/engine/comm_cost.py) -------
P2P_PCI_CTAS = 2  # NCCL src/graph/paths.cc ncclTopoGetNchannels: 2 channels a PCIe (and SHM) peer


def p2p_ctas(comm: Comm) -> int:
    """Thread blocks of NCCL's send (or receive) kernel to one peer: 2 over PCIe/SHM and the network;
    over NVLink 2 a link of the path (paths.cc: 2 x path bandwidth / one NVLink's), rounded up to a power
    of two and at most the ring's channels (``channels``), as ncclTopoComputeP2pChannels does."""
    if comm.transport != "nvlink" or comm.nodes > 1:
        return P2P_PCI_CTAS
    links = max(1, int(comm.bandwidth_bytes_per_s / GB / NVLINK_NCCL_GB[comm.arch][1]))  # line rate a link
    per_peer = 1 << (2 * links - 1).bit_length()
    return max(1, min(per_peer, MAX_RING_CHANNELS))


def collective_ctas(comm: Comm) -> int:
    """Thread blocks of a ring collective's kernel: one a channel."""
    return channels(comm)[0]


# ----- python -m sim.engine.nccl ----------------------------------------------------------------------
SIZES = tuple(2**k for k in range(10, 31, 2))  # 1 KiB .. 1 GiB


def table(comm: Comm) -> list[str]:
    """Per message size: NCCL's choice, time and bus bandwidth for all-gather, all-reduce and send."""
    lines = [f"{comm.ranks} GPUs, {comm.nodes} node(s), {comm.transport}, "
             f"{comm.bandwidth_bytes_per_s / GB:g} GB/s, {comm.arch}; channels x GB/s: "
             "%d x %g" % channels(comm),
             f"{'bytes':>10}  {'all-gather':<32}  {'all-reduce':<32}  {'send':<32}"]
    for nbytes in SIZES:
        cells = []
        for kind in ("all-gather", "all-reduce"):
            c = choose(comm, kind, nbytes)
            factor = steps(comm, kind) / comm.ranks  # nccl-tests' busbw = algbw x steps / P
            cells.append(_cell(c, nbytes / c.time_s * factor))
        c = p2p(comm, nbytes)
        cells.append(_cell(c, nbytes / c.time_s))
        lines.append(f"{nbytes:>10}  " + "  ".join(cells))
    return lines


def _cell(c: Choice, busbw_bytes_per_s: float) -> str:
    return f"{c.algorithm + '/' + c.protocol:<11} {c.time_s / US:8.1f} us {busbw_bytes_per_s / GB:6.1f} GB/s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sim.engine.nccl",
                                 description="What NCCL's tuning model chooses, per message size.")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--nodes", type=int, default=None, help="default 1, or --gpus with --transport net")
    ap.add_argument("--bandwidth-gb-per-s", type=float, default=300.0, help="the slowest hop, each way")
    ap.add_argument("--transport", default="nvlink", help=f"{', '.join(TRANSPORTS)} (net: one GPU a node)")
    ap.add_argument("--arch", default="hopper", help=", ".join(ARCHS))
    args = ap.parse_args(argv)
    try:
        nodes = args.nodes if args.nodes is not None else (args.gpus if args.transport == "net" else 1)
        comm = Comm(ranks=args.gpus, nodes=nodes, bandwidth_bytes_per_s=args.bandwidth_gb_per_s * GB,
                    transport=args.transport, arch=args.arch)
        if comm.ranks < 2:
            raise NcclError(f"--gpus={comm.ranks} must be >= 2")
        print("\n".join(line.rstrip() for line in table(comm)))
    except NcclError as e:
        print(f"python -m sim.engine.nccl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
