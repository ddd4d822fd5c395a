"""Namespaces, tc and processes for ``reference.netcluster``: availability, the shaping commands,
killing what runs in the namespaces, cleanup.

Names: ``ncl-<owner pid>-<seq>-hub`` and ``ncl-<owner pid>-<seq>-r<rank>``, so that leftovers of a run
whose owner died can be found and deleted (``cleanup_stale``). References: tc-htb(8), tc-u32(8),
tc-netem(8), ip-netns(8).
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from reference.netcluster.links import LinkSpec, NetClusterError, NoiseFlow
from sim.engine.cpu_cluster import WIRE_OVER_PAYLOAD, htb_burst_bytes

SUBNET_PREFIX = "10.213.0."  # exists only inside the namespaces we create
NOISE_PORT_BASE = 41000  # competing flows listen on 41000, 41001, ... in their destination's namespace
NAME_PREFIX = "ncl-"
_NAME_RE = re.compile(r"^ncl-(\d+)-(\d+)-(hub|r\d+)$")
REPO_ROOT = Path(__file__).resolve().parents[2]  # on the PYTHONPATH of every process run in a namespace


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return cmd(["ip", *args], check=check)


def cmd(argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
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
        res = ip("netns", "add", name, check=False)
        if res.returncode != 0:
            _available = (False, f"`ip netns add` failed: {res.stderr.strip()}")
        else:
            tc = cmd(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb"], check=False)
            ip("netns", "del", name, check=False)
            _available = (True, "") if tc.returncode == 0 else (False, f"tc htb unavailable: {tc.stderr.strip()}")
    return _available


_netem: bool | None = None


def netem_available(ns: str) -> bool:
    """Whether the kernel has the netem qdisc (tested once, on namespace `ns`'s loopback)."""
    global _netem
    if _netem is None:
        res = cmd(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
        _netem = res.returncode == 0
        if _netem:
            cmd(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"], check=False)
    return _netem


def our_namespaces() -> list[str]:
    """Every namespace that this module's naming scheme created, from any process."""
    res = ip("netns", "list", check=False)
    names = [line.split()[0] for line in res.stdout.splitlines() if line.strip()]
    return [n for n in names if _NAME_RE.match(n) or n.startswith(f"{NAME_PREFIX}") and n.endswith("-probe")]


def delete_namespace(ns: str) -> None:
    # Processes keep a namespace alive after `ip netns del`; kill them first (only ours live there).
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    ip("netns", "del", ns, check=False)


def kill_group(p: subprocess.Popen) -> None:
    """Kill `p` and its children (it was started in a session of its own) and reap it."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


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
            delete_namespace(ns)
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


def shaping_commands(ns: str, rank: int, row: Sequence[LinkSpec | None], *, use_netem: bool,
                     noise: Sequence[tuple[NoiseFlow, list[int]]] = ()) -> list[list[str]]:
    """The tc commands that shape rank `rank`'s outgoing links (row[j] is link rank -> j).

    Per destination j: htb class 1:(10+j) at the link's rate, a netem delay under it (where available),
    and a u32 filter on j's address. A link that carries fair-share noise gets two children that share
    the link as n greedy flows would: the ranks' traffic (1:(1000+j)) is assured 1/(n+1) of the rate
    and the noise (1:(2000+j), matched by port) n/(n+1), each borrowing up to the whole link when the
    other is idle.
    """
    tc, dev = ["tc", "-n", ns], ["dev", "eth0"]
    cmds = _htb_root(tc, dev)

    def add_class(parent: str, minor: int, rate: float, ceil: float) -> str:
        cmds.append(_htb_class(tc, dev, parent, minor, rate, ceil))
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


def _htb_root(tc: list[str], dev: list[str], default: int | None = None) -> list[list[str]]:
    """An htb root on ``dev`` (unclassified traffic to class 1:``default``, or unshaped without one), and
    the filter that lets pure TCP ACKs skip the shaping."""
    return [[*tc, "qdisc", "add", *dev, "root", "handle", "1:", "htb",
             *(["default", f"{default:x}"] if default is not None else [])],
            # Pure TCP ACKs (52-byte IP packets: 20 IP + 32 TCP with timestamps) skip the shaping (flowid
            # 1: is htb's direct queue). Otherwise the ACKs of flow i -> j wait behind the data of j -> i
            # in j's queue, and a two-way exchange (an all-gather) gets ~65% of the rate on each link.
            [*tc, "filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
             "match", "ip", "protocol", "6", "0xff", "match", "u16", "52", "0xffff", "at", "2", "flowid", "1:"]]


def _htb_class(tc: list[str], dev: list[str], parent: str, minor: int, rate: float, ceil: float) -> list[str]:
    # A burst of 64 KiB (one GSO segment on veth) or 1 ms of traffic keeps htb from rounding the
    # rate down at high rates while staying small next to the messages we time; the CPU-cluster
    # simulation models the same bucket (``sim.engine.cpu_cluster.HtbBuckets``).
    burst = str(htb_burst_bytes(ceil))
    return [*tc, "class", "add", *dev, "parent", parent, "classid", f"1:{minor:x}", "htb",
            "rate", _rate_bits(rate), "ceil", _rate_bits(ceil), "burst", burst, "cburst", burst, "quantum", "65536"]


def uplink_commands(ns: str, dev: str, link: LinkSpec, ranks: Sequence[int], match: str, *,
                    use_netem: bool) -> list[list[str]]:
    """The tc commands that shape one node uplink (or downlink), interface ``dev`` of the hub namespace: all
    its packets together at the link's rate (TCP payload bytes, as for the ranks' links), shared fairly
    between ``ranks`` (matched by their ``src`` or ``dst`` address): each has a class assured an equal
    share that borrows up to the whole link when the others are idle (this kernel has neither sfq nor
    fq_codel), the simulator's max-min fair share for one flow a rank. Latency by netem where present."""
    tc, where = ["tc", "-n", ns], ["dev", dev]
    cmds = _htb_root(tc, where)
    rate = link.bandwidth_bytes_per_s * WIRE_OVER_PAYLOAD
    cmds.append(_htb_class(tc, where, "1:", 0x10, rate, rate))
    for r in ranks:
        minor = 0x100 + r
        cmds.append(_htb_class(tc, where, "1:10", minor, rate / len(ranks), rate))
        if use_netem and link.latency_s > 0:
            cmds.append([*tc, "qdisc", "add", *where, "parent", f"1:{minor:x}", "handle", f"{minor:x}:", "netem",
                         "delay", f"{link.latency_s * 1e6:.0f}us", "limit", "100000"])
        cmds.append([*tc, "filter", "add", *where, "parent", "1:", "protocol", "ip", "prio", "3", "u32",
                     "match", "ip", match, f"{SUBNET_PREFIX}{r + 1}/32", "flowid", f"1:{minor:x}"])
    return cmds
