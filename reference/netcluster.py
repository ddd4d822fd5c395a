"""A real multi-process cluster on one machine: each rank in its own network namespace, every directed
pair of ranks (i -> j) on its own shaped link, so gloo traffic between ranks really crosses the links.

Topology: one hub namespace holds a Linux bridge; rank namespace r has one veth ``eth0`` with address
10.213.0.(r+1)/24 whose peer ``r<r>`` sits on the bridge. Every veth is created inside a namespace we
created, so the root namespace never sees our interfaces and deleting the namespaces removes them all.
Shaping is applied at the sender: rank i's ``eth0`` has an ``htb`` root with one class per destination
rank j (rate = link (i, j)'s bandwidth, a ``u32`` filter on the destination address), and under it a
``netem`` delay of link (i, j)'s latency where the kernel has netem (see docs/netcluster.md for what
happens without it). Unmatched traffic (ARP, links given an infinite bandwidth) bypasses shaping.

References: tc-htb(8), tc-netem(8), ip-netns(8); torch.distributed env:// initialisation.
"""
from __future__ import annotations

import atexit
import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

SUBNET_PREFIX = "10.213.0."  # exists only inside the namespaces we create
MASTER_PORT = 29500  # ports are per namespace, so parallel clusters cannot collide
NOISE_PORT_BASE = 41000  # competing flows listen on 41000, 41001, ... in their destination's namespace
NAME_PREFIX = "ncl-"  # namespace names: ncl-<owner pid>-<seq>-hub, ncl-<owner pid>-<seq>-r<rank>
_NAME_RE = re.compile(r"^ncl-(\d+)-(\d+)-(hub|r\d+)$")
# A full 1500-byte-MTU TCP segment: 1448 payload bytes + 32 TCP (timestamps) + 20 IP + 14 Ethernet.
WIRE_OVER_PAYLOAD = 1514 / 1448
_REPO_ROOT = Path(__file__).resolve().parent.parent
_seq = itertools.count()


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
    ``start_s`` after the ranks start. It always stops by itself after ``max_duration_s`` (or the run's
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

    def __post_init__(self) -> None:
        if self.src == self.dst or self.flows < 1:
            raise NetClusterError(f"noise flow {self.src}->{self.dst} x{self.flows}: need src != dst, flows >= 1")
        if (self.on_s is None) != (self.off_s is None):
            raise NetClusterError(f"noise flow {self.src}->{self.dst}: give both on_s and off_s, or neither")


@dataclass(frozen=True)
class RankResult:
    """What one rank's process did (like ``subprocess.CompletedProcess``, plus the rank and timeout)."""

    rank: int
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float


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


def from_cluster_spec(spec, cpu_over_gpu_slowdown: float = 1.0) -> tuple[list[list[LinkSpec | None]], list[NoiseFlow]]:
    """A ``sim.cluster.ClusterSpec`` as (link matrix, noise flows) for ``ShapedCluster``, scaled to the CPU.

    Pair (i, j) gets the simulator's route from GPU i to j: the route's smallest bandwidth and the sum of
    its latencies (so links shared by several routes, e.g. through a switch, are not shared here).
    Background flows must be on direct GPU-to-GPU links; their times are scaled like the latencies.
    """
    from sim.cluster import routes  # noqa: PLC0415  (reference may import sim; sim never imports torch)

    k = cpu_over_gpu_slowdown
    matrix: list[list[LinkSpec | None]] = [[None] * spec.num_gpus for _ in range(spec.num_gpus)]
    by_pair = {(l.src, l.dst): l for l in spec.links}
    for (i, j), route in routes(spec).items():
        hops = [by_pair[h] for h in route]
        gpu_link = LinkSpec(bandwidth_bytes_per_s=min(h.bandwidth_bytes_per_s for h in hops),
                            latency_s=sum(h.latency_s for h in hops))
        matrix[i][j] = scale_links(gpu_link, k)
    noise = []
    for bg in spec.background:
        if not (isinstance(bg.src, int) and isinstance(bg.dst, int)):
            raise NetClusterError(f"background flow {bg.src!r}->{bg.dst!r}: only flows on direct GPU-to-GPU "
                                  "links can run on the shaped cluster")
        noise.append(NoiseFlow(src=bg.src, dst=bg.dst, flows=bg.flows, start_s=bg.start_s * k,
                               on_s=None if bg.on_s is None else bg.on_s * k,
                               off_s=None if bg.off_s is None else bg.off_s * k))
    return matrix, noise


# ---------------------------------------------------------------------------------------------------
# Namespaces, probing and cleanup


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _cmd(["ip", *args], check=check)


def _cmd(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise NetClusterError(f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


_available: tuple[bool, str] | None = None


def namespaces_available() -> tuple[bool, str]:
    """(True, '') where this process may create network namespaces and shape them, else (False, why).

    ``NETCLUSTER_FORCE_LOOPBACK=1`` in the environment answers False (to exercise the fallback).
    """
    global _available
    if os.environ.get("NETCLUSTER_FORCE_LOOPBACK") == "1":
        return False, "NETCLUSTER_FORCE_LOOPBACK=1"
    if _available is not None:
        return _available
    if not sys.platform.startswith("linux"):
        _available = (False, f"network namespaces need Linux, this is {sys.platform}")
    elif os.geteuid() != 0:
        _available = (False, "network namespaces need root (euid is not 0)")
    elif not (shutil.which("ip") and shutil.which("tc")):
        _available = (False, "the iproute2 tools `ip` and `tc` are not installed")
    else:
        name = f"{NAME_PREFIX}{os.getpid()}-probe"
        res = _ip("netns", "add", name, check=False)
        if res.returncode != 0:
            _available = (False, f"`ip netns add` failed: {res.stderr.strip()}")
        else:
            tc = _cmd(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"], check=False)
            _ip("netns", "del", name, check=False)
            _available = (True, "") if tc.returncode == 0 else (False, f"tc htb unavailable: {tc.stderr.strip()}")
    return _available


_netem: bool | None = None


def netem_available(ns: str) -> bool:
    """Whether the kernel has the netem qdisc (tested once, on namespace `ns`'s loopback)."""
    global _netem
    if _netem is None:
        res = _cmd(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
        _netem = res.returncode == 0
        if _netem:
            _cmd(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"], check=False)
    return _netem


def our_namespaces() -> list[str]:
    """Every namespace that this module's naming scheme created, from any process."""
    res = _ip("netns", "list", check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if _NAME_RE.match(n) or n.startswith(f"{NAME_PREFIX}") and n.endswith("-probe")]


def _delete_namespace(ns: str) -> None:
    # Processes keep a namespace alive after `ip netns del`; kill them first (only ours live there).
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", ns, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete namespaces (and so their veths, qdiscs and processes) left by runs whose owner died."""
    removed = []
    for ns in our_namespaces():
        m = re.match(r"^ncl-(\d+)-", ns)
        if m and not _pid_alive(int(m.group(1))):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


# ---------------------------------------------------------------------------------------------------
# The cluster


def _rate_bits(bandwidth_bytes_per_s: float) -> str:
    return f"{max(8, int(round(bandwidth_bytes_per_s * 8)))}bit"


def noise_ports(flows: Sequence[NoiseFlow]) -> list[list[int]]:
    """The TCP port of each connection of each flow (one connection per ``flows``), in flow order."""
    ports, next_port = [], NOISE_PORT_BASE
    for f in flows:
        ports.append(list(range(next_port, next_port + f.flows)))
        next_port += f.flows
    return ports


def shaping_commands(ns: str, rank: int, row: Sequence[LinkSpec | None], use_netem: bool,
                     noise: Sequence[tuple[NoiseFlow, list[int]]] = ()) -> list[list[str]]:
    """The tc commands that shape rank `rank`'s outgoing links (row[j] is link rank -> j).

    Per destination j: htb class 1:(10+j) at the link's rate, a netem delay under it (where available),
    and a u32 filter on j's address. A link that carries fair-share noise gets two children that share
    the link as n greedy flows would: the ranks' traffic (1:(1000+j)) is assured 1/(n+1) of the rate
    and the noise (1:(2000+j), matched by port) n/(n+1), each borrowing up to the whole link when the
    other is idle.
    """
    tc, dev = ["tc", "-n", ns], ["dev", "eth0"]
    cmds = [[*tc, "qdisc", "add", *dev, "root", "handle", "1:", "htb"],
            # Pure TCP ACKs (52-byte IP packets: 20 IP + 32 TCP with timestamps) skip the shaping (flowid
            # 1: is htb's direct queue). Otherwise the ACKs of flow i -> j wait behind the data of j -> i
            # in j's queue, and a two-way exchange (an all-gather) gets ~65% of the rate on each link.
            [*tc, "filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
             "match", "ip", "protocol", "6", "0xff", "match", "u16", "52", "0xffff", "at", "2", "flowid", "1:"]]

    def add_class(parent: str, minor: int, rate: float, ceil: float) -> str:
        # A burst of 64 KiB (one GSO segment on veth) or 1 ms of traffic keeps htb from rounding the
        # rate down at high rates while staying small next to the messages we time.
        burst = str(max(64 * 1024, int(ceil * 1e-3)))
        cmds.append([*tc, "class", "add", *dev, "parent", parent, "classid", f"1:{minor:x}", "htb",
                     "rate", _rate_bits(rate), "ceil", _rate_bits(ceil), "burst", burst, "cburst", burst,
                     "quantum", "65536"])
        return f"1:{minor:x}"

    def add_leaf(classid: str, link: LinkSpec) -> None:
        if use_netem and link.latency_s > 0:
            cmds.append([*tc, "qdisc", "add", *dev, "parent", classid, "handle", f"{classid[2:]}:",
                         "netem", "delay", f"{link.latency_s * 1e6:.0f}us", "limit", "100000"])

    def add_filter(prio: int, dst: int, classid: str, dport: int | None = None) -> None:
        port = ["match", "ip", "dport", str(dport), "0xffff"] if dport is not None else []
        cmds.append([*tc, "filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio", str(prio), "u32",
                     "match", "ip", "dst", f"{SUBNET_PREFIX}{dst + 1}/32", *port, "flowid", classid])

    for j, link in enumerate(row):
        if link is None or not link.shaped:
            continue
        # htb counts Ethernet, IP and TCP headers; scale the wire rate so the TCP payload (the tensor
        # bytes) moves at the requested bandwidth.
        rate = (link.bandwidth_bytes_per_s * WIRE_OVER_PAYLOAD if math.isfinite(link.bandwidth_bytes_per_s)
                else 100e9 / 8)
        top = add_class("1:", 0x10 + j, rate, rate)
        fair = [(f, ports) for f, ports in noise if f.dst == j and f.fair_share]
        if not fair:
            add_leaf(top, link)
            add_filter(3, j, top)
            continue
        n = sum(f.flows for f, _ in fair)
        ranks_cls = add_class(top, 0x1000 + j, rate / (n + 1), rate)
        noise_cls = add_class(top, 0x2000 + j, rate * n / (n + 1), rate)
        for cls in (ranks_cls, noise_cls):
            add_leaf(cls, link)
        for _, ports in fair:
            for port in ports:
                add_filter(2, j, noise_cls, dport=port)
        add_filter(3, j, ranks_cls)
    return cmds


class ShapedCluster:
    """P ranks, each in its own network namespace, joined by shaped directed links. A context manager.

    ``links``: one LinkSpec for every pair, a function (i, j) -> LinkSpec, or a P x P matrix of
    LinkSpec (diagonal ignored). ``noise``: competing flows started with every ``run``.
    Where namespaces are not permitted, ranks run as plain loopback processes: ``shaped`` is False and
    ``fallback_reason`` says why (``allow_fallback=False`` raises instead).
    """

    def __init__(self, world_size: int, links: LinksArg, *, noise: Sequence[NoiseFlow] = (),
                 allow_fallback: bool = True):
        if world_size < 1 or world_size > 200:
            raise NetClusterError(f"world_size={world_size} must be in 1..200")
        self.world_size = world_size
        self.links = link_matrix(world_size, links)
        self.noise = tuple(noise)
        for f in self.noise:
            if not (0 <= f.src < world_size and 0 <= f.dst < world_size):
                raise NetClusterError(f"noise flow {f.src}->{f.dst}: ranks must be in 0..{world_size - 1}")
        self.allow_fallback = allow_fallback
        self.prefix = f"{NAME_PREFIX}{os.getpid()}-{next(_seq)}-"
        self.hub = self.prefix + "hub"
        self.namespaces = [f"{self.prefix}r{r}" for r in range(world_size)]
        self.addresses = [f"{SUBNET_PREFIX}{r + 1}" for r in range(world_size)]
        self.shaped = False
        self.latency_applied = False
        self.fallback_reason = ""
        self._created: list[str] = []
        self._old_sigterm = None
        self._lock = threading.Lock()

    # -- set-up and tear-down ----------------------------------------------------------------------

    def __enter__(self) -> "ShapedCluster":
        ok, why = namespaces_available()
        if not ok:
            if not self.allow_fallback:
                raise NetClusterError(f"network namespaces unavailable: {why}")
            self.fallback_reason = why
            print(f"netcluster: namespaces unavailable ({why}); falling back to unshaped loopback ranks",
                  file=sys.stderr)
            self.addresses = ["127.0.0.1"] * self.world_size
            return self
        self._install_sigterm()
        atexit.register(self.close)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        self.shaped = True
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _install_sigterm(self) -> None:
        # SIGTERM becomes SystemExit so the with-block unwinds and __exit__ tears everything down.
        if threading.current_thread() is not threading.main_thread():
            return
        def on_term(signum, frame):
            raise SystemExit(128 + signum)
        self._old_sigterm = signal.signal(signal.SIGTERM, on_term)

    def _create(self) -> None:
        cleanup_stale()
        for ns in [self.hub, *self.namespaces]:
            _ip("netns", "add", ns)
            self._created.append(ns)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        use_netem = netem_available(self.hub)
        wants_latency = any(l is not None and l.latency_s > 0 for row in self.links for l in row)
        self.latency_applied = use_netem or not wants_latency
        if wants_latency and not use_netem:
            print("netcluster: this kernel has no netem qdisc; link latencies are NOT applied "
                  "(bandwidth is)", file=sys.stderr)
        for r, ns in enumerate(self.namespaces):
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"r{r}", "netns", self.hub)
            _ip("-n", ns, "addr", "add", f"{self.addresses[r]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", self.hub, "link", "set", f"r{r}", "master", "br0")
            _ip("-n", self.hub, "link", "set", f"r{r}", "up")
            noise = [(f, p) for f, p in zip(self.noise, noise_ports(self.noise)) if f.src == r]
            for cmd in shaping_commands(ns, r, self.links[r], use_netem, noise):
                _cmd(cmd)

    def close(self) -> None:
        """Kill every process in our namespaces and delete them (with their veths and qdiscs). Idempotent."""
        with self._lock:
            for ns in reversed(self._created):
                _delete_namespace(ns)
            self._created.clear()
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
        atexit.unregister(self.close)

    # -- running ranks -----------------------------------------------------------------------------

    def rank_env(self, rank: int, master_port: int) -> dict[str, str]:
        """torch.distributed env:// variables of `rank`, and gloo bound to the rank's shaped interface."""
        return {"RANK": str(rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": self.addresses[0], "MASTER_PORT": str(master_port),
                "GLOO_SOCKET_IFNAME": "eth0" if self.shaped else "lo", "OMP_NUM_THREADS": "1"}

    def _wrap(self, rank: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[rank], *argv] if self.shaped else list(argv)

    def popen(self, rank: int, argv: Sequence[str], env: dict[str, str], stdout, stderr) -> subprocess.Popen:
        """Start `argv` in rank `rank`'s namespace (own session, so a kill reaches its children)."""
        return subprocess.Popen(self._wrap(rank, argv), env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())

    def run(self, argv: Sequence[str] | Callable[[int], Sequence[str]], *, env: dict[str, str] | None = None,
            timeout_s: float = 300.0) -> list[RankResult]:
        """Run `argv` (or argv(rank)) once per rank, concurrently; after `timeout_s` kill every rank.

        Each rank gets the environment, `env`, the env:// variables, and the repository on PYTHONPATH.
        """
        from reference.netcluster_noise import start_noise, stop_noise  # noqa: PLC0415

        port = MASTER_PORT if self.shaped else _free_port()
        procs, files, argvs = [], [], []
        noise = []
        start = time.monotonic()
        try:
            if self.shaped and self.noise:
                noise = start_noise(self, self.noise, max_duration_s=timeout_s)
            for r in range(self.world_size):
                a = list(argv(r) if callable(argv) else argv)
                full_env = {**os.environ, **(env or {}), **self.rank_env(r, port)}
                full_env["PYTHONPATH"] = os.pathsep.join(
                    p for p in [str(_REPO_ROOT), full_env.get("PYTHONPATH", "")] if p)
                out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
                files.append((out, err))
                argvs.append(a)
                procs.append(self.popen(r, a, full_env, out, err))
            deadline = start + timeout_s
            timed_out = False
            ends = [None] * len(procs)
            while any(e is None for e in ends):
                for r, p in enumerate(procs):
                    if ends[r] is None and p.poll() is not None:
                        ends[r] = time.monotonic() - start
                if time.monotonic() > deadline and any(e is None for e in ends):
                    timed_out = True
                    break
                time.sleep(0.01)
        finally:
            # Every rank that is still running (timeout, exception, interrupt) is killed with its children.
            for p in procs:
                if p.poll() is None:
                    _kill_group(p)
            stop_noise(noise)
        results = []
        for r, p in enumerate(procs):
            out, err = files[r]
            out.seek(0)
            err.seek(0)
            results.append(RankResult(rank=r, args=argvs[r], returncode=p.returncode, stdout=out.read(),
                                      stderr=err.read(), timed_out=timed_out and ends[r] is None,
                                      wall_s=ends[r] if ends[r] is not None else time.monotonic() - start))
            out.close()
            err.close()
        return results


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """``python -m reference.netcluster``: see ``reference/netcluster_cli.py``."""
    from reference.netcluster_cli import main as cli_main  # noqa: PLC0415

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
