"""``ShapedCluster``: P ranks, each in its own network namespace, joined by shaped directed links.

Set-up and tear-down of the namespaces, the bridge and every rank's qdiscs (the commands are
``net.shaping_commands``), and ``run``: a command once per rank, concurrently, with the env://
variables of torch.distributed and a timeout. Design: docs/netcluster.md.
"""
from __future__ import annotations

import atexit
import itertools
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from reference.netcluster.links import LinksArg, NetClusterError, Nodes, NoiseFlow, link_matrix
from reference.netcluster.net import (NAME_PREFIX, REPO_ROOT, SUBNET_PREFIX, cleanup_stale, cmd, delete_namespace,
                                      ip, kill_group, namespaces_available, netem_available, noise_ports,
                                      shaping_commands, uplink_commands)

MASTER_PORT = 29500  # ports are per namespace, so parallel clusters cannot collide
TCP_LIMIT_OUTPUT_BYTES = 65536  # per rank namespace; see _create
_seq = itertools.count()


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


class ShapedCluster:
    """P ranks, each in its own network namespace, joined by shaped directed links. A context manager.

    ``links``: one LinkSpec for every pair, a function (i, j) -> LinkSpec, or a P x P matrix of
    LinkSpec (diagonal ignored). ``noise``: competing flows started with every ``run``. ``nodes``: ranks
    grouped into nodes, each node's bridge joined to a spine bridge by a shaped uplink and downlink
    (give the pairs in different nodes unshaped links, ``math.inf``, so the uplinks set their rate).
    Where namespaces are not permitted, ranks run as plain loopback processes: ``shaped`` is False and
    ``fallback_reason`` says why (``allow_fallback=False`` raises instead).
    """

    def __init__(self, world_size: int, links: LinksArg, *, noise: Sequence[NoiseFlow] = (),
                 nodes: Nodes | None = None, allow_fallback: bool = True):
        if world_size < 1 or world_size > 200:
            raise NetClusterError(f"world_size={world_size} must be in 1..200")
        self.world_size = world_size
        self.links = link_matrix(world_size, links)
        self.noise = tuple(noise)
        for f in self.noise:
            if not (0 <= f.src < world_size and 0 <= f.dst < world_size):
                raise NetClusterError(f"noise flow {f.src}->{f.dst}: ranks must be in 0..{world_size - 1}")
        if nodes is not None:
            nodes.check(world_size)
        self.nodes = nodes
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
            ip("netns", "add", ns)
            self._created.append(ns)
        use_netem = netem_available(self.hub)
        bridge_of = self._bridges(use_netem)
        wants_latency = any(l is not None and l.latency_s > 0 for row in self.links for l in row)
        self.latency_applied = use_netem or not wants_latency
        if wants_latency and not use_netem:
            print("netcluster: this kernel has no netem qdisc; link latencies are NOT applied "
                  "(bandwidth is)", file=sys.stderr)
        for r, ns in enumerate(self.namespaces):
            ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"r{r}", "netns", self.hub)
            ip("-n", ns, "addr", "add", f"{self.addresses[r]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "lo", "up")
            # TCP small queues: at most this many bytes of one socket wait in the qdisc. The kernel's
            # 4 MiB default is 200 ms of a 20 MB/s link; gloo runs both directions of a pair on one TCP
            # connection, so its control messages and ACKs would wait that long behind queued data.
            cmd(["ip", "netns", "exec", ns, "sh", "-c",
                 f"echo {TCP_LIMIT_OUTPUT_BYTES} > /proc/sys/net/ipv4/tcp_limit_output_bytes"])
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", self.hub, "link", "set", f"r{r}", "master", bridge_of[r])
            ip("-n", self.hub, "link", "set", f"r{r}", "up")
            noise = [(f, p) for f, p in zip(self.noise, noise_ports(self.noise)) if f.src == r]
            for argv in shaping_commands(ns, r, self.links[r], use_netem=use_netem, noise=noise):
                cmd(argv)

    def _bridges(self, use_netem: bool) -> list[str]:
        """The hub's bridges: one for all ranks, or one per node plus a spine joined to each node's by a
        veth pair (``u<n>`` on the node's bridge, ``s<n>`` on the spine) shaped at both ends; returns
        the bridge of each rank."""
        def bridge(name: str) -> None:
            ip("-n", self.hub, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            ip("-n", self.hub, "link", "set", name, "up")
        if self.nodes is None:
            bridge("br0")
            return ["br0"] * self.world_size
        bridge("spine")
        for n in range(len(self.nodes.groups)):
            bridge(f"br{n}")
            ip("-n", self.hub, "link", "add", f"u{n}", "type", "veth", "peer", "name", f"s{n}")
            ip("-n", self.hub, "link", "set", f"u{n}", "master", f"br{n}")
            ip("-n", self.hub, "link", "set", f"s{n}", "master", "spine")
            group = self.nodes.groups[n]
            for dev, link, match in ((f"u{n}", self.nodes.uplink, "src"), (f"s{n}", self.nodes.downlink, "dst")):
                ip("-n", self.hub, "link", "set", dev, "up")
                for argv in uplink_commands(self.hub, dev, link, group, match, use_netem=use_netem):
                    cmd(argv)
        return [f"br{self.nodes.node_of(r)}" for r in range(self.world_size)]

    def close(self) -> None:
        """Kill every process in our namespaces and delete them (with their veths and qdiscs). Idempotent."""
        with self._lock:
            for ns in reversed(self._created):
                delete_namespace(ns)
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

    def popen(self, rank: int, argv: Sequence[str], *, env: dict[str, str], stdout, stderr) -> subprocess.Popen:
        """Start `argv` in rank `rank`'s namespace (own session, so a kill reaches its children)."""
        return subprocess.Popen(self._wrap(rank, argv), env=env, stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=os.getcwd())

    def run(self, argv: Sequence[str] | Callable[[int], Sequence[str]], *, env: dict[str, str] | None = None,
            timeout_s: float = 300.0) -> list[RankResult]:
        """Run `argv` (or argv(rank)) once per rank, concurrently; after `timeout_s` kill every rank.

        Each rank gets the environment, `env`, the env:// variables, and the repository on PYTHONPATH.
        """
        # Here, not at the top: ``python -m reference.netcluster.noise`` (the flows' own processes)
        # imports this package first, which must not have imported the module it is about to run.
        from reference.netcluster.noise import start_noise, stop_noise

        if not (self._created or self.fallback_reason):
            raise NetClusterError("ShapedCluster.run outside its with-block: enter the cluster first")
        if self.noise and not self.shaped:
            print("netcluster: loopback fallback; the noise flows are not started", file=sys.stderr)
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
                    p for p in [str(REPO_ROOT), full_env.get("PYTHONPATH", "")] if p)
                out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
                files.append((out, err))
                argvs.append(a)
                procs.append(self.popen(r, a, env=full_env, stdout=out, stderr=err))
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
                    kill_group(p)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
