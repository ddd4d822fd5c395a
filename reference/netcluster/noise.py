"""Competing traffic for ``reference.netcluster``: an iperf-like greedy TCP sender and a sink.

``python -m reference.netcluster.noise sink PORT DURATION_S`` reads and discards until the sender closes
or DURATION_S passes. ``... send HOST PORT DURATION_S START_S ON_S OFF_S [SEED]`` connects and writes as fast
as TCP allows while "on" (ON_S = 0 means always on; with SEED the on and off periods are random, drawn
by ``sim.cluster.onoff_periods`` as the simulator draws them), and stops by itself after DURATION_S. Both run inside
the cluster's namespaces, so the flow crosses (and competes on) the shaped link src -> dst.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from reference.netcluster.net import REPO_ROOT, kill_group, noise_ports
from sim.cluster import onoff_periods

_CHUNK = b"\0" * 65536


def start_noise(cluster, flows, *, max_duration_s: float) -> list[subprocess.Popen]:
    """Start every flow's sink (in dst's namespace) and sender (in src's); returns the processes."""
    procs = []
    py = [sys.executable, "-m", "reference.netcluster.noise"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for f, ports in zip(flows, noise_ports(flows)):
        duration = str(min(f.max_duration_s, max_duration_s))
        for port in ports:
            procs.append(cluster.popen(f.dst, [*py, "sink", str(port), duration], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            seed = [] if f.seed is None else [str(f.seed * 1000 + port)]  # each connection its own draws
            procs.append(cluster.popen(f.src, [*py, "send", cluster.addresses[f.dst], str(port), duration,
                                               str(f.start_s), str(f.on_s or 0), str(f.off_s or 0), *seed],
                                       env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def stop_noise(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            kill_group(p)


def _sink(port: int, duration_s: float) -> None:
    end = time.monotonic() + duration_s
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(duration_s)
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(max(0.1, end - time.monotonic()))
            while time.monotonic() < end and conn.recv(1 << 20):
                pass


def _send(host: str, port: int, *, duration_s: float, start_s: float, on_s: float, off_s: float,
          seed: int | None = None) -> None:
    t0 = time.monotonic()
    end = t0 + duration_s
    while True:  # the sink may not listen yet
        try:
            conn = socket.create_connection((host, port), timeout=1.0)
            break
        except OSError:
            if time.monotonic() > end:
                return
            time.sleep(0.02)
    with conn:
        # A small send buffer, so that little queued data keeps flowing into an "off" phase.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
        conn.settimeout(1.0)
        periods = onoff_periods(on_s, off_s, seed) if on_s > 0 else None
        on, switch_s, off_for = False, t0 + start_s, 0.0  # off until the start
        while (now := time.monotonic()) < end:
            while now >= switch_s:  # walk the schedule up to now
                if periods is None:
                    on, switch_s = True, end
                elif on:
                    on, switch_s = False, switch_s + off_for
                else:
                    on_for, off_for = next(periods)
                    on, switch_s = True, switch_s + on_for
            if not on:
                time.sleep(min(0.005, max(0.0, switch_s - now)))
                continue
            try:
                conn.send(_CHUNK)
            except socket.timeout:
                pass
            except OSError:
                return


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[0] == "sink":
            _sink(int(args[1]), float(args[2]))
        else:
            _send(args[1], int(args[2]), duration_s=float(args[3]), start_s=float(args[4]), on_s=float(args[5]),
                  off_s=float(args[6]), seed=int(args[7]) if len(args) > 7 else None)
    except OSError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
