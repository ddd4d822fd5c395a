"""Link probe for ``reference.netcluster``: what the shaped links really deliver to gloo.

Run inside a cluster (one process per rank, env:// variables set), the rank program times, for every
ordered pair (src, dst) in turn, a small ping-pong (4 bytes there and back: the round trip) and a
``size``-byte ``torch.distributed.send`` answered by a 4-byte ack, then an ``all_gather`` of each size
among all ranks. The achieved bandwidth of src -> dst is ``size / (t_send_and_ack - t_round_trip)``:
both latencies cancel, leaving the serialisation time on the link. Send times are medians over the
repeats; the round trip is the fastest one (the latency floor; slower ones met a busy CPU).

``probe(cluster)`` runs it and returns the report; ``format_probe(report)`` renders a table. What
the host adds to messages (CPU a byte, wake-up latency, a chain's delivery) is probed by
``reference.netcluster.host_probe``.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

_MARK = "NETCLUSTER_PROBE_JSON "
_SMALL_BYTES = 4


def _run_ranks(cluster, argv: list[str], what: str, timeout_s: float) -> dict:
    """Run the rank program ``argv`` on every rank of ``cluster``; rank 0's report (the line after
    ``_MARK``). A failed rank raises ``RuntimeError`` with its stderr."""
    results = cluster.run(argv, timeout_s=timeout_s)
    bad = [r for r in results if r.returncode != 0]
    if bad:
        r = bad[0]
        raise RuntimeError(f"{what} rank {r.rank} failed (returncode {r.returncode}, timed out {r.timed_out}):\n"
                           f"{r.stderr[-2000:]}")
    line = next(l for l in results[0].stdout.splitlines() if l.startswith(_MARK))
    return json.loads(line[len(_MARK):])


def _gloo():
    """Rank side: one torch thread, the gloo process group from the env:// variables; (dist, rank)."""
    import torch
    import torch.distributed as dist
    from datetime import timedelta

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    return dist, dist.get_rank()


def probe(cluster, sizes_bytes=(1 << 20, 4 << 20), *, repeats: int = 3,
          pairs: list[tuple[int, int]] | None = None, all_gather: bool = True,
          timeout_s: float = 120.0) -> dict:
    """Measure every ordered pair (or `pairs`) of `cluster` with gloo; returns the report dict.

    Report: ``{"schema": "link-probe/1", "world_size", "shaped", "latency_applied", "pairs": [{src, dst,
    size_bytes, requested_*, round_trip_s, send_s, achieved_bytes_per_s, ratio}], "all_gather": [{size_bytes, time_s}],
    "exchange": [{size_bytes, time_s}], "all_to_all": [{size_bytes, time_s}]}`` (times in seconds, the
    slowest rank's median; ``all_to_all`` with 3 ranks or more, ``size_bytes`` from every rank to every other).
    """
    argv = [sys.executable, "-m", "reference.netcluster.probe", "--sizes", ",".join(map(str, sizes_bytes)),
            "--repeats", str(repeats)]
    if pairs is not None:
        argv += ["--pairs", ",".join(f"{s}-{d}" for s, d in pairs)]
    if not all_gather:
        argv += ["--no-all-gather"]
    report = _run_ranks(cluster, argv, "probe", timeout_s)
    report["schema"] = "link-probe/1"
    report["shaped"] = cluster.shaped
    report["latency_applied"] = cluster.latency_applied
    for p in report["pairs"]:
        link = cluster.links[p["src"]][p["dst"]]
        p["requested_bandwidth_bytes_per_s"] = link.bandwidth_bytes_per_s
        p["requested_latency_s"] = link.latency_s
        p["ratio"] = p["achieved_bytes_per_s"] / link.bandwidth_bytes_per_s
    return report


def format_probe(report: dict) -> str:
    """A plain-text table of a probe report (MB = 1e6 bytes)."""
    rows = [f"shaped={report['shaped']} latency_applied={report['latency_applied']} "
            f"world_size={report['world_size']}",
            f"{'pair':>7} {'size':>9} {'asked MB/s':>10} {'got MB/s':>9} {'ratio':>6} {'asked lat':>9} "
            f"{'rtt/2':>9}"]
    for p in report["pairs"]:
        asked = p["requested_bandwidth_bytes_per_s"] / 1e6
        rows.append(f"{p['src']:>3}->{p['dst']:<3} {p['size_bytes']:>9} {asked:>10.1f} "
                    f"{p['achieved_bytes_per_s'] / 1e6:>9.2f} {p['ratio']:>6.3f} "
                    f"{p['requested_latency_s'] * 1e3:>7.2f}ms {p['round_trip_s'] / 2 * 1e3:>7.3f}ms")
    for g in report.get("all_gather", []):
        rows.append(f"all_gather {g['size_bytes']:>9} bytes/rank: {g['time_s'] * 1e3:.2f} ms "
                    f"({g['size_bytes'] * (report['world_size'] - 1) / g['time_s'] / 1e6:.2f} MB/s received per rank)")
    for g in report.get("exchange", []):
        rows.append(f"exchange 0<->1 {g['size_bytes']:>9} bytes each way: {g['time_s'] * 1e3:.2f} ms "
                    f"({g['size_bytes'] / g['time_s'] / 1e6:.2f} MB/s each way)")
        for r in g.get("ranks", []):
            held = socket_held_bytes(report, g["size_bytes"], r)
            rows.append(f"  rank {r['rank']}: received at {r['recv_s'] * 1e3:.2f} ms, its send returned at "
                        f"{r['send_s'] * 1e3:.2f} ms" + ("" if held is None else
                                                         f", {held / 1e6:.2f} MB still in its socket then"))
    for g in report.get("all_to_all", []):
        rows.append(f"all_to_all {g['size_bytes']:>9} bytes a pair: {g['time_s'] * 1e3:.2f} ms "
                    f"({g['size_bytes'] / g['time_s'] / 1e6:.2f} MB/s a pair, every pair at once)")
    return "\n".join(rows)


def socket_held_bytes(report: dict, size_bytes: int, rank_entry: dict) -> float | None:
    """Bytes of a ``size_bytes`` exchange message not yet delivered when its send returned: the message
    less what the link (its requested rate, shaped) moved by then; None where the link is not shaped.
    A gloo send returns once the kernel's socket buffer holds the rest, so this is about that buffer
    (docs/netcluster.md, "When a gloo send returns")."""
    r = rank_entry["rank"]
    rate = next((p["requested_bandwidth_bytes_per_s"] for p in report.get("pairs", [])
                 if p["src"] == r and p["dst"] == 1 - r), None)
    if not report.get("shaped") or not rate or rate == float("inf"):
        return None
    return max(0.0, size_bytes - rate * rank_entry["send_s"])


def _rank_main(sizes: list[int], *, repeats: int, pairs: list[tuple[int, int]] | None, do_all_gather: bool) -> None:
    import torch

    dist, rank = _gloo()
    world = dist.get_world_size()
    if pairs is None:
        pairs = [(s, d) for s in range(world) for d in range(world) if s != d]
    small = torch.zeros(_SMALL_BYTES // 4)
    mine = []
    for s, d in pairs:
        for size in sizes:
            x = torch.zeros(max(1, size // 4))
            rtts, sends = [], []
            for rep in range(repeats + 1):  # the first repeat warms the connection up
                dist.barrier()
                if rank == s:
                    t0 = time.perf_counter()
                    dist.send(small, d)
                    dist.recv(small, d)
                    t1 = time.perf_counter()
                    dist.send(x, d)
                    dist.recv(small, d)
                    t2 = time.perf_counter()
                    if rep:
                        rtts.append(t1 - t0)
                        sends.append(t2 - t1)
                elif rank == d:
                    dist.recv(small, s)
                    dist.send(small, s)
                    dist.recv(x, s)
                    dist.send(small, s)
            if rank == s:
                # The fastest round trip is the latency floor; slower ones met a busy CPU (2 cores).
                rtt, send = min(rtts), statistics.median(sends)
                mine.append({"src": s, "dst": d, "size_bytes": x.numel() * 4, "round_trip_s": rtt,
                             "send_s": send, "achieved_bytes_per_s": x.numel() * 4 / max(send - rtt, 1e-9)})

    def timed(call) -> float:
        """Median seconds of `call()` started together on every rank, after one untimed call."""
        times = []
        for rep in range(repeats + 1):
            dist.barrier()
            t0 = time.perf_counter()
            call()
            if rep:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    gathers = []
    if do_all_gather and world > 1:
        for size in sizes:
            x = torch.zeros(max(1, size // 4))
            out = [torch.empty_like(x) for _ in range(world)]
            gathers.append({"size_bytes": x.numel() * 4, "time_s": timed(lambda: dist.all_gather(out, x))})
    exchanges = []
    if do_all_gather and world > 1:
        # Ranks 0 and 1 send to each other at once, receives posted first (docs/netcluster.md says why).
        for size in sizes:
            x = torch.zeros(max(1, size // 4))
            y = torch.empty_like(x)
            times, recvs, sends = [], [], []
            for rep in range(repeats + 1):
                dist.barrier()
                t0 = time.perf_counter()
                if rank < 2:
                    got = dist.irecv(y, 1 - rank)
                    sent = dist.isend(x, 1 - rank)
                    got.wait()
                    t1 = time.perf_counter()
                    sent.wait()  # returns once the kernel's socket holds the rest (docs/netcluster.md)
                    t2 = time.perf_counter()
                    if rep:
                        recvs.append(t1 - t0)
                        sends.append(t2 - t0)
                if rep:
                    times.append(time.perf_counter() - t0)
            exchanges.append({"size_bytes": x.numel() * 4, "time_s": statistics.median(times),
                              "recv_s": statistics.median(recvs) if recvs else None,
                              "send_s": statistics.median(sends) if sends else None})
    scatters = []
    if do_all_gather and world > 2:
        # Every rank sends `size` bytes to every other rank at once, as Ulysses' all-to-all does
        # (``DistTransport.all_to_all``: every receive posted, then every send).
        from reference.transport import DistTransport
        transport = DistTransport()
        for size in sizes:
            send = [torch.zeros(max(1, size // 4)) for _ in range(world)]
            recv = [torch.empty_like(x) for x in send]
            scatters.append({"size_bytes": send[0].numel() * 4,
                             "time_s": timed(lambda: transport.all_to_all(send, recv))})
    everyone = [None] * world
    dist.all_gather_object(everyone, {"pairs": mine, "all_gather": gathers, "exchange": exchanges,
                                      "all_to_all": scatters})
    if rank == 0:
        pairs_out = sorted((p for e in everyone for p in e["pairs"]),
                           key=lambda p: (p["src"], p["dst"], p["size_bytes"]))
        # An all-gather finishes when its slowest rank does.
        ag = [{"size_bytes": g["size_bytes"], "time_s": max(e["all_gather"][k]["time_s"] for e in everyone)}
              for k, g in enumerate(gathers)]
        ex = [{"size_bytes": g["size_bytes"], "time_s": max(e["exchange"][k]["time_s"] for e in everyone[:2]),
               "ranks": [{"rank": r, "recv_s": everyone[r]["exchange"][k]["recv_s"],
                          "send_s": everyone[r]["exchange"][k]["send_s"]} for r in range(2)]}
              for k, g in enumerate(exchanges)]
        a2a = [{"size_bytes": g["size_bytes"], "time_s": max(e["all_to_all"][k]["time_s"] for e in everyone)}
               for k, g in enumerate(scatters)]
        print(_MARK + json.dumps({"world_size": world, "pairs": pairs_out, "all_gather": ag, "exchange": ex,
                                  "all_to_all": a2a}),
              flush=True)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="rank side of the netcluster link probe")
    ap.add_argument("--sizes", default=str(1 << 20))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", default=None, help="e.g. 0-1,1-0")
    ap.add_argument("--no-all-gather", action="store_true")
    a = ap.parse_args(argv)
    pairs = None if a.pairs is None else [tuple(map(int, p.split("-"))) for p in a.pairs.split(",")]
    _rank_main([int(s) for s in a.sizes.split(",")], repeats=a.repeats, pairs=pairs,
               do_all_gather=not a.no_all_gather)
    return 0


if __name__ == "__main__":
    sys.exit(main())
