"""Host probes for ``reference.netcluster``: what the shared host adds to a gloo message. ``cpu_probe``: the
host CPU a byte moved costs; ``latency_probe``: a small message's one-way latency, idle and with processes
spinning; ``chain_probe``: a small message's delivery down a chain of ranks that compute in bursts. Each runs
its rank program (``main`` below) on every rank of a cluster; the link probe is ``reference.netcluster.probe``.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

from reference.netcluster.probe import _MARK, _gloo, _run_ranks


def host_busy_s() -> float:
    """Seconds of CPU time every core of the host has spent busy since boot (``/proc/stat``: user, nice,
    system, irq, softirq, steal; all namespaces see the same host)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def cpu_probe(cluster, size_bytes: int = 32 << 20, *, repeats: int = 4, timeout_s: float = 120.0) -> dict:
    """The host CPU time a message costs on ``cluster``'s link 0 -> 1: rank 0 sends ``size_bytes`` to rank
    1 ``repeats`` times (gloo), and the host's busy seconds over those sends, less the busy seconds of
    an equally long idle spell right after, are divided by the bytes. That CPU (both ranks' gloo
    threads, the kernel's TCP, veth, bridge and htb work) is what moving a byte takes from the ranks'
    compute on a host whose ranks share its cores (``sim.engine.cpu_cluster.NET_CPU_S_PER_BYTE``).
    Run it with nothing else on the machine."""
    argv = [sys.executable, "-m", "reference.netcluster.host_probe", "--cpu", "--sizes", str(size_bytes),
            "--repeats", str(repeats)]
    return _run_ranks(cluster, argv, "cpu probe", timeout_s)


def latency_probe(cluster, *, busy: int, repeats: int = 200, timeout_s: float = 120.0) -> dict:
    """One-way latency of a 4-byte gloo message between ranks 0 and 1 of ``cluster`` (half the round trip,
    median of ``repeats``), on an idle host and while ``busy`` other processes keep cores busy (a
    plain loop each, as ranks that compute): the time a waiting rank needs to be woken, get a core
    and answer when every core is taken (``sim.engine.cpu_cluster.BUSY_WAKE_S``). Run it with nothing
    else on the machine."""
    import subprocess

    argv = [sys.executable, "-m", "reference.netcluster.host_probe", "--latency", "--repeats", str(repeats)]
    out = {}
    for label, n in (("idle", 0), ("busy", busy)):
        spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        try:
            out[label] = _run_ranks(cluster, argv, "latency probe", timeout_s)
        finally:
            for p in spinners:
                p.kill()
                p.wait()
    return {"busy_processes": busy, **out}


def chain_probe(cluster, *, compute_ms: float = 10.0, repeats: int = 40, cores: float | None = None,
                timeout_s: float = 120.0) -> dict:
    """How much later a small message reaches its receiver while every core is taken, measured the way
    KV-Runahead ranks use the host (``sim.engine.cpu_cluster.BUSY_WAKE_S``): a chain over every rank of
    ``cluster``, each rank posting its receive, then on arrival sending 4 KB on (``isend``) and spending
    ``compute_ms`` before waiting for the send, in one run computing (a small GEMM loop, as a rank's
    next layer) and in another asleep. Competitors that compute in bursts between waits, as ranks do,
    keep a woken gloo thread from a core where processes that spin without pause do not
    (``latency_probe``). The report: every hop's delivery (arrival less the sender's ``isend``) with
    the number of other ranks computing at its arrival, and ``busy_wake_s``: the median delivery of
    the hops that arrived while at least ``cores`` ranks computed (default: this host's) less the
    median delivery asleep. Run it with nothing else on the machine."""
    cores = float(cores or os.cpu_count() or 1)
    argv = [sys.executable, "-m", "reference.netcluster.host_probe", "--chain", "--repeats", str(repeats),
            "--compute-ms", str(compute_ms)]
    out = {mode: _run_ranks(cluster, argv + ["--after", mode], "chain probe", timeout_s)["hops"]
           for mode in ("sleep", "compute")}
    asleep = statistics.median(d for d, _ in out["sleep"])
    busy = [d for d, n in out["compute"] if n >= cores]
    by_count: dict[int, list[float]] = {}
    for d, n in out["compute"]:
        by_count.setdefault(n, []).append(d)
    return {"schema": "chain-probe/1", "world_size": cluster.world_size, "compute_ms": compute_ms,
            "repeats": repeats, "cores": cores, "asleep_median_s": asleep,
            "computing_median_s": {str(n): statistics.median(ds) for n, ds in sorted(by_count.items())},
            "computing_hops": {str(n): len(ds) for n, ds in sorted(by_count.items())},
            "busy_hops": len(busy), "busy_median_s": statistics.median(busy) if busy else None,
            "busy_wake_s": max(0.0, statistics.median(busy) - asleep) if busy else None, "hops": out}


def _chain_main(repeats: int, compute_ms: float, after: str) -> None:
    import torch

    dist, rank = _gloo()
    world = dist.get_world_size()
    w, a = torch.randn(512, 1376), torch.randn(8, 512)
    buf = torch.zeros(1024)  # 4 KB, a nearly empty rank's K and V of a layer
    records = []  # (arrival, isend, end of the work after it), time.time() (one host clock)
    for i in range(repeats + 5):
        dist.barrier()
        arrival = send = end = None
        if rank == 0:
            time.sleep(0.003)  # every receiver has posted its receive
        else:
            dist.recv(buf, rank - 1)
            arrival = time.time()
        if rank < world - 1:
            send = time.time()
            buf[0] = send
            work = dist.isend(buf, rank + 1)
            until = send + compute_ms / 1e3
            if after == "compute":
                while time.time() < until:
                    a @ w
            else:
                time.sleep(compute_ms / 1e3)
            end = time.time()
            work.wait()
        if i >= 5:
            records.append((arrival, send, end))
    everyone = [None] * world
    dist.all_gather_object(everyone, records)
    if rank == 0:
        hops = []
        for i in range(repeats):
            for k in range(1, world):
                arrival = everyone[k][i][0]
                computing = sum(1 for j in range(world - 1) if j != k and after == "compute"
                                and everyone[j][i][1] <= arrival < everyone[j][i][2])
                hops.append((arrival - everyone[k - 1][i][1], computing))
        print(_MARK + json.dumps({"hops": hops}), flush=True)
    dist.destroy_process_group()


def _latency_main(repeats: int) -> None:
    import torch

    dist, rank = _gloo()
    x = torch.zeros(1)
    rtts = []
    for i in range(repeats + 10):
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(x, 1)
            dist.recv(x, 1)
        elif rank == 1:
            dist.recv(x, 0)
            dist.send(x, 0)
        if i >= 10:
            rtts.append(time.perf_counter() - t0)
        time.sleep(0.002)  # as a rank: the message finds its receiver asleep, not spinning
    if rank == 0:
        one_way = sorted(r / 2 for r in rtts)
        print(_MARK + json.dumps({"one_way_median_s": statistics.median(one_way),
                                  "one_way_p90_s": one_way[int(0.9 * len(one_way))]}), flush=True)
    dist.destroy_process_group()


def _cpu_main(size: int, repeats: int) -> None:
    import torch

    dist, rank = _gloo()
    x = torch.zeros(max(1, size // 4))
    for _ in range(2):  # warm the connection up
        (dist.send if rank == 0 else dist.recv)(x, 1 - rank)
    dist.barrier()
    busy0, t0 = host_busy_s(), time.perf_counter()
    for _ in range(repeats):
        (dist.send if rank == 0 else dist.recv)(x, 1 - rank)
    dist.barrier()
    busy1, t1 = host_busy_s(), time.perf_counter()
    time.sleep(t1 - t0)  # the same spell, idle: what the rest of the host burns meanwhile
    busy2 = host_busy_s()
    if rank == 0:
        moved = repeats * x.numel() * 4
        busy, idle = busy1 - busy0, busy2 - busy1
        print(_MARK + json.dumps({"bytes": moved, "seconds": t1 - t0, "busy_s": busy, "idle_busy_s": idle,
                                  "cpu_s_per_byte": max(0.0, busy - idle) / moved}), flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="rank side of the netcluster host probes")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cpu", action="store_true", help="the host CPU a byte costs (cpu_probe)")
    mode.add_argument("--latency", action="store_true", help="a small message's one-way latency (latency_probe)")
    mode.add_argument("--chain", action="store_true", help="a message's delivery down a chain (chain_probe)")
    ap.add_argument("--sizes", default=str(32 << 20))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compute-ms", type=float, default=10.0)
    ap.add_argument("--after", default="compute", choices=["compute", "sleep"])
    a = ap.parse_args(argv)
    if a.cpu:
        _cpu_main(int(a.sizes.split(",")[0]), a.repeats)
    elif a.latency:
        _latency_main(a.repeats)
    else:
        _chain_main(a.repeats, a.compute_ms, a.after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
