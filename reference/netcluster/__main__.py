"""Command line of ``reference.netcluster``: run a command on a shaped cluster, probe its links, clean up.

    python -m reference.netcluster --world-size 2 --bandwidth 100MB/s --latency 1ms -- CMD ARGS...
    python -m reference.netcluster probe --world-size 3 --bandwidth "x,20MB/s,5MB/s;20MB/s,x,inf;5MB/s,inf,x"
    python -m reference.netcluster cpu --world-size 2 --bandwidth 100MB/s --sizes 32MB --repeats 4
    python -m reference.netcluster busy-cpu --world-size 2 --bandwidth 100MB/s --seconds 5 --repeats 10 --sizes 256KB,1MB,4MB
    python -m reference.netcluster latency --world-size 2 --busy 2
    python -m reference.netcluster chain --world-size 8 --bandwidth 20MB/s --compute-ms 10 --repeats 40
    python -m reference.netcluster cleanup

``--bandwidth`` and ``--latency`` take one value for every directed pair, or a P x P matrix written as
rows separated by ``;`` and entries by ``,`` (row i, column j is link i -> j; the diagonal, e.g. ``x``, is ignored).
``--noise SRC-DST[:ON_S/OFF_S]`` (repeatable) adds a competing flow on link SRC -> DST. ``cpu`` measures the
host CPU seconds a byte moved from rank 0 to rank 1 costs (``host_probe.cpu_probe``), ``busy-cpu`` the compute it
takes from processes keeping every core busy with ``--model``'s forwards, in ``--seconds`` windows with and without
the traffic, ``--repeats`` pairs (``host_probe.busy_cpu_probe``), at each of ``--sizes`` (default 4MB) and, with two
sizes or more, fitted as a cost a message plus a cost a byte (``host_probe.busy_cpu_fit``: the
``NET_CPU_S_PER_MESSAGE`` and ``NET_CPU_S_PER_BYTE`` of the CPU-cluster model), ``latency`` a small
message's one-way latency on an idle host and with ``--busy N`` processes spinning (``host_probe.latency_probe``),
``chain`` a small message's delivery down a chain of ranks that compute ``--compute-ms`` after each send, against
the same chain asleep (``host_probe.chain_probe``: the ``busy_wake_s`` of the CPU-cluster model); run them on a quiet
machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from reference.netcluster.cluster import ShapedCluster
from reference.netcluster.host_probe import busy_cpu_sizes, chain_probe, cpu_probe, latency_probe
from reference.netcluster.links import (LinkSpec, NetClusterError, NoiseFlow, parse_bandwidth, parse_duration,
                                        parse_sizes)
from reference.netcluster.net import cleanup_stale
from reference.netcluster.probe import format_probe, probe


# The shaped-link cluster's own model (scenarios/validate-cluster.yaml): the default work of ``busy-cpu``.
_CLUSTER_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "profiles", "models", "cpu-llama-h512", "config.json")


def _matrix(text: str, world_size: int, parse) -> list[list[float]]:
    if ";" not in text:
        v = parse(text)
        return [[v] * world_size for _ in range(world_size)]
    rows = [r.split(",") for r in text.split(";")]
    if len(rows) != world_size or any(len(r) != world_size for r in rows):
        raise NetClusterError(f"matrix {text!r} is not {world_size} x {world_size}")
    return [[0.0 if i == j else parse(v) for j, v in enumerate(r)] for i, r in enumerate(rows)]


def _noise(text: str) -> NoiseFlow:
    pair, _, period = text.partition(":")
    try:
        src, dst = map(int, pair.split("-"))
        on_s, off_s = (map(float, period.split("/")) if period else (None, None))
    except ValueError:
        raise NetClusterError(f"--noise {text!r}: expected SRC-DST or SRC-DST:ON_S/OFF_S") from None
    return NoiseFlow(src=src, dst=dst, on_s=on_s, off_s=off_s)


def _cluster(a: argparse.Namespace) -> ShapedCluster:
    bw = _matrix(a.bandwidth, a.world_size, parse_bandwidth)
    lat = _matrix(a.latency, a.world_size, parse_duration)
    links = [[None if i == j else LinkSpec(bandwidth_bytes_per_s=bw[i][j], latency_s=lat[i][j])
              for j in range(a.world_size)] for i in range(a.world_size)]
    return ShapedCluster(a.world_size, links, noise=[_noise(n) for n in a.noise])


def _write_json(path: str | None, report: dict) -> None:
    """``--json``: the probe's report, also as a file."""
    if path:
        with open(path, "w") as f:
            json.dump(report, f, indent=1)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m reference.netcluster [run|probe|cpu|busy-cpu|latency|chain|cleanup]", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--bandwidth", default="inf", help="e.g. 100MB/s, or a matrix (see above)")
    ap.add_argument("--latency", default="0", help="e.g. 1ms, or a matrix")
    ap.add_argument("--noise", action="append", default=[], help="SRC-DST[:ON_S/OFF_S]")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before every rank is killed")
    ap.add_argument("--sizes", default=None, help="probe: message sizes (default 1MB,4MB); busy-cpu: the streamed "
                                                  "message's size (default 4MB)")
    ap.add_argument("--repeats", type=int, default=3, help="probe: timed repeats per size")
    ap.add_argument("--json", default=None, help="probe: also write the report here")
    ap.add_argument("--busy", type=int, default=2, help="latency: processes kept spinning (default 2)")
    ap.add_argument("--compute-ms", type=float, default=10.0,
                    help="chain: milliseconds each rank computes (or sleeps) after its send (default 10)")
    ap.add_argument("--model", default=_CLUSTER_MODEL,
                    help="busy-cpu: the model whose forwards keep the cores busy (default: the cluster's)")
    ap.add_argument("--processes", type=int, default=None, help="busy-cpu: computing processes (default: one a core)")
    ap.add_argument("--seconds", type=float, default=15.0, help="busy-cpu: seconds of each window (default 15)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    mode = args.pop(0) if args[:1] and args[0] in ("run", "probe", "cpu", "busy-cpu", "latency", "chain", "cleanup") else "run"
    command = args[args.index("--") + 1:] if "--" in args else []
    a = _parser().parse_args(args[:args.index("--")] if "--" in args else args)
    a.mode = mode
    a.sizes_given, a.sizes = a.sizes is not None, a.sizes or "1MB,4MB"
    try:
        if a.mode == "cleanup":
            print("\n".join(cleanup_stale()) or "nothing to clean")
            return 0
        if a.mode == "chain" and (a.world_size < 3 or a.compute_ms <= 0 or a.repeats < 1):
            raise NetClusterError("chain: needs --world-size >= 3, --compute-ms > 0 and --repeats >= 1")
        if a.mode == "busy-cpu" and (a.world_size != 2 or a.seconds <= 0 or a.repeats < 1
                                     or (a.processes is not None and a.processes < 1)):
            raise NetClusterError("busy-cpu: needs --world-size 2, --seconds > 0, --repeats >= 1 and --processes >= 1")
        if a.mode == "busy-cpu" and not os.path.isfile(a.model):
            raise NetClusterError(f"busy-cpu: --model {a.model!r} is not a file")
        if a.mode == "run" and not command:
            raise NetClusterError("nothing to run: give -- CMD ARGS...")
        with _cluster(a) as cluster:
            if a.mode == "cpu":
                report = cpu_probe(cluster, parse_sizes(a.sizes)[0], repeats=a.repeats,
                                   timeout_s=a.timeout)
                print(f"{report['bytes'] / 1e6:.0f} MB in {report['seconds']:.2f} s: host busy {report['busy_s']:.2f} s "
                      f"(idle spell: {report['idle_busy_s']:.2f} s) -> {report['cpu_s_per_byte'] * 1e9:.2f} ns of CPU a byte")
                return 0
            if a.mode == "busy-cpu":
                sizes = parse_sizes(a.sizes) if a.sizes_given else [4 << 20]
                report = busy_cpu_sizes(cluster, a.model, sizes, processes=a.processes, window_s=a.seconds,
                                        pairs=a.repeats, timeout_s=a.timeout, say=lambda line: print(line, flush=True))
                _write_json(a.json, report)
                return 0
            if a.mode == "latency":
                report = latency_probe(cluster, busy=a.busy, repeats=a.repeats, timeout_s=a.timeout)
                for label in ("idle", "busy"):
                    r = report[label]
                    print(f"{label:>4} ({0 if label == 'idle' else a.busy} spinning): one way median "
                          f"{r['one_way_median_s'] * 1e3:.3f} ms, p90 {r['one_way_p90_s'] * 1e3:.3f} ms")
                return 0
            if a.mode == "chain":
                report = chain_probe(cluster, compute_ms=a.compute_ms, repeats=a.repeats, timeout_s=a.timeout)
                print(f"asleep after the send: delivery median {report['asleep_median_s'] * 1e3:.3f} ms")
                for n, med in report["computing_median_s"].items():
                    print(f"computing after the send, {n} other ranks computing at arrival: median "
                          f"{med * 1e3:.3f} ms over {report['computing_hops'][n]} hops")
                wake = report["busy_wake_s"]
                print(f"busy_wake_s (at least {report['cores']:g} computing, less asleep): "
                      + (f"{wake * 1e3:.3f} ms over {report['busy_hops']} hops" if wake is not None else "no such hop"))
                _write_json(a.json, report)
                return 0
            if a.mode == "probe":
                sizes = parse_sizes(a.sizes)
                report = probe(cluster, sizes, repeats=a.repeats, timeout_s=a.timeout)
                print(format_probe(report))
                _write_json(a.json, report)
                return 0
            results = cluster.run(command, timeout_s=a.timeout)
    except NetClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        for stream, text in ((sys.stdout, r.stdout), (sys.stderr, r.stderr)):
            for line in text.splitlines():
                print(f"[rank {r.rank}] {line}", file=stream)
    if any(r.timed_out for r in results):
        print(f"error: timed out after {a.timeout} s; every rank was killed", file=sys.stderr)
        return 124
    return max((r.returncode for r in results), key=abs)


if __name__ == "__main__":
    sys.exit(main())
