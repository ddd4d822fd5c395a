"""Host probes for ``reference.netcluster``: what the shared host adds to a gloo message. ``cpu_probe``: the
host CPU a byte moved costs; ``latency_probe``: a small message's one-way latency, idle and with processes
spinning; ``chain_probe``: a small message's delivery down a chain of ranks that compute in bursts;
``busy_cpu_probe``: the compute a byte moved takes from processes that keep every core busy. Each runs its
rank program (``main`` below) on every rank of a cluster; the link probe is ``reference.netcluster.probe``.
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


def busy_cpu_probe(cluster, model: str, dtype: str = "fp32", *, processes: int | None = None,
                   window_s: float = 15.0, pairs: int = 2, size_bytes: int = 4 << 20, warm_s: float = 10.0,
                   timeout_s: float = 300.0) -> dict:
    """The compute a byte moved takes from ranks that keep every core busy: ``processes`` processes (default:
    one a core) run forwards of ``model`` (the cluster's own, ``reference.measure.timing.workload_probe_s``)
    without pause, while windows of ``window_s`` seconds alternate between no traffic and rank 0 streaming
    ``size_bytes`` messages to rank 1 of ``cluster`` (gloo): ``pairs`` traffic windows, each between two
    quiet ones. A window's compute rate is the forwards done in it (a forward cut by the window's edge
    counted by its share inside). With every core computing, the fraction of the rate a traffic window
    lost against the mean of the quiet windows either side of it (so a drift of the machine's speed
    cancels), times the cores, is the core-seconds a second the traffic took; over the bytes a second it
    moved, the CPU a byte costs a busy host. ``cpu_s_per_byte`` is the median over the traffic windows,
    ``cpu_s_per_byte_windows`` each one's. Unlike ``cpu_probe`` (the host's CPU while it moves bytes and
    nothing else runs), this includes what the traffic does to the compute beside it: softirq work
    charged to whichever thread it interrupts, wake-ups that preempt a computing rank, caches it evicts.
    Run it with nothing else on the machine."""
    import multiprocessing as mp

    cores = os.cpu_count() or 1
    processes = processes or cores
    ctx = mp.get_context("spawn")
    stop, queue = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_busy_worker, args=(model, dtype, stop, queue), daemon=True)
               for _ in range(processes)]
    argv = [sys.executable, "-m", "reference.netcluster.host_probe", "--stream", "--sizes", str(size_bytes),
            "--seconds", str(window_s), "--repeats", str(pairs)]
    for w in workers:
        w.start()
    try:
        time.sleep(warm_s)  # the model loaded and its first, slow forwards done
        windows = _run_ranks(cluster, argv, "busy cpu probe", max(timeout_s, (2 * pairs + 1) * window_s + 120))["windows"]
        stop.set()
        spans = [s for _ in workers for s in queue.get(timeout=60)]
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
    rates = [(label, _done_in(spans, a, b) / (b - a), n / (b - a)) for label, a, b, n in windows]  # time.time()
    busy_cores = min(processes, cores)
    per_window = [max(0.0, busy_cores * (1 - rates[i][1] * 2 / (rates[i - 1][1] + rates[i + 1][1]))) / rates[i][2]
                  for i in range(1, len(rates), 2)]  # the traffic windows, between quiet ones
    idle = statistics.mean(r for label, r, _ in rates if label == "idle")
    busy = statistics.mean(r for label, r, _ in rates if label == "traffic")
    moved = statistics.mean(bps for label, _, bps in rates if label == "traffic")
    return {"schema": "busy-cpu-probe/1", "model": model, "dtype": dtype, "processes": processes, "cores": cores,
            "window_s": window_s, "size_bytes": size_bytes,
            "windows": [{"traffic": label == "traffic", "forwards_per_s": r, "bytes_per_s": bps}
                        for label, r, bps in rates],
            "idle_forwards_per_s": idle, "traffic_forwards_per_s": busy, "bytes_per_s": moved,
            "cpu_s_per_byte_windows": per_window, "cpu_s_per_byte": statistics.median(per_window)}


# gloo messages a streamed block takes in ``_stream_main``: a 4-byte "go" and the block itself. Until
# 2026-12-07 (twelfth session) the fit counted the block alone, so its ``per_message_s`` was the cost of
# both: twice a message's (docs/validation.md, section 8, "Two messages a block").
STREAM_MESSAGES_PER_BLOCK = 2


def busy_cpu_fit(reports: list[dict]) -> dict:
    """The CPU a message and a byte cost a busy host, from ``busy_cpu_probe`` reports at several message
    sizes: every streaming window's cores taken (its CPU a byte times its bytes a second) fitted by least
    squares, through the origin, as ``per_message_s`` x gloo messages a second (``STREAM_MESSAGES_PER_BLOCK``
    a streamed block) + ``per_byte_s`` x bytes a second (``sim.engine.cpu_cluster``'s
    ``NET_CPU_S_PER_MESSAGE`` and ``NET_CPU_S_PER_BYTE``)."""
    rows = []  # (messages a second, bytes a second, cores taken)
    for report in reports:
        streaming = [w for w in report["windows"] if w["traffic"]]
        for w, per_byte in zip(streaming, report["cpu_s_per_byte_windows"]):
            blocks = w["bytes_per_s"] / report["size_bytes"]
            rows.append((STREAM_MESSAGES_PER_BLOCK * blocks, w["bytes_per_s"], per_byte * w["bytes_per_s"]))
    if len({round(m / b * 1e9) for m, b, _ in rows}) < 2:
        raise ValueError("busy_cpu_fit needs reports at two message sizes or more")
    smm = sum(m * m for m, _, _ in rows)
    smb = sum(m * b for m, b, _ in rows)
    sbb = sum(b * b for _, b, _ in rows)
    smc = sum(m * c for m, _, c in rows)
    sbc = sum(b * c for _, b, c in rows)
    det = smm * sbb - smb * smb
    return {"schema": "busy-cpu-fit/1", "sizes_bytes": [r["size_bytes"] for r in reports], "windows": len(rows),
            "messages_per_block": STREAM_MESSAGES_PER_BLOCK,
            "per_message_s": (smc * sbb - sbc * smb) / det, "per_byte_s": (sbc * smm - smc * smb) / det,
            "reports": reports}


def busy_cpu_sizes(cluster, model: str, sizes: list[int], *, processes: int | None = None, window_s: float,
                   pairs: int, timeout_s: float, say=print) -> dict:
    """``busy_cpu_probe`` on ``cluster`` at each of ``sizes`` (bytes a message), each said as it is measured;
    returns their fit (``busy_cpu_fit``) where there are two sizes or more, else the one report."""
    reports = []
    for size in sizes:
        report = busy_cpu_probe(cluster, model, processes=processes, window_s=window_s, pairs=pairs,
                                size_bytes=size, timeout_s=timeout_s)
        reports.append(report)
        say(f"{size / 1e6:g} MB messages, {report['processes']} processes on {report['cores']} cores: "
            f"{report['idle_forwards_per_s']:.2f} -> {report['traffic_forwards_per_s']:.2f} forwards/s "
            f"at {report['bytes_per_s'] / 1e6:.1f} MB/s; each traffic window against the quiet ones "
            "either side: " + ", ".join(f"{v * 1e9:.2f}" for v in report["cpu_s_per_byte_windows"])
            + f" ns of CPU a byte, median {report['cpu_s_per_byte'] * 1e9:.2f}")
    if len(reports) == 1:
        return reports[0]
    fit = busy_cpu_fit(reports)
    say(f"fit over {fit['windows']} windows: {fit['per_message_s'] * 1e3:.3f} ms of CPU a gloo message "
        f"({STREAM_MESSAGES_PER_BLOCK} a streamed block) "
        f"+ {fit['per_byte_s'] * 1e9:.2f} ns a byte")
    return fit


def _done_in(spans: list[tuple[float, float]], a: float, b: float) -> float:
    """Forwards done in [a, b]: each span (start, end) counted by the share of it inside."""
    return sum(max(0.0, min(e, b) - max(s, a)) / (e - s) for s, e in spans if e > s)


def _busy_worker(model: str, dtype: str, stop, queue) -> None:
    """A computing process of ``busy_cpu_probe``: forwards without pause until ``stop``; its spans."""
    from reference.measure.timing import workload_probe_s

    spans = []
    while not stop.is_set():
        t0 = time.time()
        workload_probe_s(model, dtype, repeat=1)
        spans.append((t0, time.time()))
    queue.put(spans)


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


def _stream_main(size: int, seconds: float, pairs: int) -> None:
    """Rank side of ``busy_cpu_probe``: ``2 pairs + 1`` windows of ``seconds``, quiet and streaming by turns
    (starting quiet): in a streaming one rank 0 sends ``size`` bytes to rank 1 again and again; in a quiet
    one both wait, asleep. Rank 0 reports the windows as (label, start, end, bytes), ``time.time()``."""
    import torch

    dist, rank = _gloo()
    x, go = torch.zeros(max(1, size // 4)), torch.zeros(1)
    for _ in range(2):  # warm the connection up
        (dist.send if rank == 0 else dist.recv)(x, 1 - rank)
    dist.barrier()
    if rank == 1:
        while True:  # asleep in the receive through the quiet windows
            dist.recv(go, 0)
            if not go[0]:
                break
            dist.recv(x, 0)
    else:
        windows = []
        for i in range(2 * pairs + 1):
            start, sent = time.time(), 0
            if i % 2 == 0:
                time.sleep(seconds)
            while i % 2 and time.time() - start < seconds:
                go[0] = 1.0
                dist.send(go, 1)
                dist.send(x, 1)
                sent += x.numel() * 4
            windows.append(("traffic" if i % 2 else "idle", start, time.time(), sent))
        go[0] = 0.0
        dist.send(go, 1)
        print(_MARK + json.dumps({"windows": windows}), flush=True)
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
    mode.add_argument("--stream", action="store_true", help="rank 0 streams to rank 1 (busy_cpu_probe)")
    ap.add_argument("--sizes", default=str(32 << 20))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compute-ms", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--after", default="compute", choices=["compute", "sleep"])
    a = ap.parse_args(argv)
    if a.cpu:
        _cpu_main(int(a.sizes.split(",")[0]), a.repeats)
    elif a.latency:
        _latency_main(a.repeats)
    elif a.stream:
        _stream_main(int(a.sizes.split(",")[0]), a.seconds, a.repeats)
    else:
        _chain_main(a.repeats, a.compute_ms, a.after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
