"""How the measurements time things: timers, the machine-speed and host probes, one rank's compute as
a function to time, the device's name, and the command line every JSON-writing measurement shares.

Used by ``profile``, ``replay``, ``cluster`` and ``kernel_tables``. Method and why: docs/validation.md
(section 3, "Machine speed"; section 7, "Component timing" and "Host-bound layers").
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

from reference.launch import write_atomic

HOST_PROBE_TOKENS = 128  # the host probe's forward: the smallest ``forward`` point of the gpu grid


class MeasureError(ValueError):
    """Bad command-line input of a measurement."""


def speed_probe_s(repeat: int = 9) -> float:
    """Seconds of a fixed single-thread fp32 GEMM (256 x 512 x 1376), median of ``repeat``.

    Shared CPUs change speed over minutes, so every profile point and every measured run records this
    probe next to it, and the simulator compares like with like (docs/validation.md, "Machine speed")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        a, w = torch.randn(256, 512, generator=g), torch.randn(512, 1376, generator=g)
        a @ w
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(4):
                a @ w
            samples.append((time.perf_counter() - t0) / 4)
        return statistics.median(samples)
    finally:
        torch.set_num_threads(threads)


def events_per_call_s(fn: Callable[[], object], n: int) -> float:
    """CUDA: seconds per call of n back-to-back ``fn()`` calls between two CUDA events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / n


def make_timer(device, warmup: int, repeat: int,
               steady_s: float | None = None) -> Callable[[Callable[[], object]], list[float]]:
    """A function that times ``fn()``: ``warmup`` untimed calls, then ``repeat`` samples in seconds.

    On CUDA with ``steady_s``, a sample is the mean of n back-to-back calls between two events, n
    chosen so a sample lasts about ``steady_s`` (at most 64 calls). That is a component's cost inside
    a forward pass, where the host enqueues the next kernels while the GPU runs the last ones: the
    larger of its host (launch) time and its GPU time. One call after a synchronisation would add the
    two, which is right for a whole rank (``replay``) but not for the parts of a layer the simulator
    sums (docs/validation.md, section 7, "Component timing")."""
    import torch

    cuda = device.type == "cuda"

    def one(fn, n: int) -> float:
        torch.cuda.synchronize(device)
        return events_per_call_s(fn, n)

    def timer(fn: Callable[[], object]) -> list[float]:
        for _ in range(warmup):
            fn()
        if not cuda:
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            return samples
        n = 1
        if steady_s:
            n = max(1, min(64, round(steady_s / max(one(fn, 1), 1e-6))))
        return [one(fn, n) for _ in range(repeat)]
    return timer


def forward_s(run: Callable[[], object], *, layers: int, warmup: int, repeat: int) -> tuple[list[float], list[float]]:
    """CUDA: a whole forward ``run()`` (the model's own ``hidden``, as a replayed rank runs it:
    embedding, rotary tables, graph lookup, every layer) timed as ``replay`` times a rank: one call
    after a synchronisation, between CUDA events; ``repeat`` samples after ``warmup`` calls.
    Returns (seconds per forward, the host's seconds per layer to issue it). The host's time is the
    pace of a host-bound layer (docs/validation.md, "Host-bound layers")."""
    import torch

    for _ in range(warmup):
        run()
    gpu, host = [], []

    def issued():  # the host's time to issue run(), inside the events
        t0 = time.perf_counter()
        run()
        host.append((time.perf_counter() - t0) / layers)
    for _ in range(repeat):
        torch.cuda.synchronize()
        gpu.append(events_per_call_s(issued, 1))
    return gpu, host


def rank_run(model, spec, *, device, dtype, chunk: int, past: int, last: bool, seed: int = 0,
             kv_chain: str = "copy"):
    """A function running one rank's compute: ``chunk`` tokens at positions [past, past + chunk) through
    every layer against a local cache holding ``past`` tokens' K and V; the LM head if ``last``.
    The model's own forward, so on CUDA small chunks run as CUDA graphs as in ``reference.launch``.

    ``kv_chain`` (``sim.hardware.KV_CHAINS``): ``copy``, a plain ``KVCache`` that concatenates the past
    and the chunk's K/V (a copy of past + chunk tokens a layer: the KV-Runahead rank before 2026-12-06,
    and a TSP rank's gathered keys); ``resident``, a ``ResidentKVCache`` whose buffers already hold the
    past, so a layer writes only the chunk's K/V (the KV-Runahead rank since, without its receive)."""
    import torch

    from reference.kvcache import KVCache, ResidentKVCache
    from sim.hardware import KV_CHAINS

    if kv_chain not in KV_CHAINS:
        raise ValueError(f"kv_chain {kv_chain!r}: must be one of {list(KV_CHAINS)}")
    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (1, chunk), generator=g, device=device)
    shape = (1, spec.num_kv_heads, past, spec.head_dim)
    pasts = [(torch.randn(*shape, generator=g, device=device, dtype=dtype),
              torch.randn(*shape, generator=g, device=device, dtype=dtype)) for _ in range(spec.num_layers)]
    buffers = []
    if kv_chain == "resident":
        for k, v in pasts:
            buf = torch.zeros((past + chunk, 2, 1, spec.num_kv_heads, spec.head_dim), device=device, dtype=dtype)
            buf[:past, 0], buf[:past, 1] = k.permute(2, 0, 1, 3), v.permute(2, 0, 1, 3)
            buffers.append(buf)
        pasts = []

    def run():
        if kv_chain == "resident":
            cache = ResidentKVCache(spec.num_layers, past, buffers)
        else:
            cache = KVCache(spec.num_layers)
            for i, (k, v) in enumerate(pasts if past else []):
                cache.k[i], cache.v[i] = k, v
        x = model.hidden(ids, past, cache)
        if last:
            return int(model.head(x)[0].argmax())
        return x
    return run


def scheme_rank_run(model, spec, *, kind: str, context: int, chunks, rank: int, device, pieces: int = 0,
                    seed: int = 0):
    """A function running rank ``rank``'s share of scheme ``kind`` (``ring``, ``ring-zigzag``,
    ``ulysses``, ``tp``, ``pipeline``, ...) for a prompt of ``context`` tokens, alone (``chunks``: the
    tokens each rank runs, as the simulator's plan has them; tp's and pipeline's ranks each run all
    ``context``, so their chunks do not sum to it): the
    scheme's own prefill over a ``SoloTransport`` (communication costs nothing, received data is
    zeros), so what it times is the rank's compute as the runtime does it, copies included. ``tp``
    shards ``model`` in place for this rank (a model serves one rank of one P)."""
    import torch

    from reference.schemes import prefill
    from reference.transport import SoloTransport

    g = torch.Generator(device=device).manual_seed(seed)
    ids = torch.randint(0, spec.vocab_size, (1, context), generator=g, device=device)
    transport = SoloTransport(rank, len(chunks))
    options = {"pieces": pieces} if kind == "pipeline" else {}

    def run():
        out = prefill(kind, model, ids, list(chunks), transport, **options)
        return None if out.logits is None else int(out.logits[0].argmax())
    return run


def host_probe_s(model, spec, device, dtype, repeat: int = 3) -> float:
    """CUDA: the host's seconds per layer to issue a forward of ``HOST_PROBE_TOKENS`` tokens without a
    past, measured as the profile's ``forward`` points' ``host_s``: the host's pace where this runs,
    against which the simulator scales the profile's host floor (docs/validation.md, "The host's
    pace"; it differs from one process to the next and holds steady within one)."""
    run = rank_run(model, spec, device=device, dtype=dtype, chunk=HOST_PROBE_TOKENS, past=0, last=False)
    return statistics.median(forward_s(run, layers=spec.num_layers, warmup=1, repeat=repeat)[1])


def device_name(device) -> str:
    """The GPU's name, or the CPU's with its core count (the measurements' ``device`` field)."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def measurement_main(prog: str, parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace], dict],
                     argv: list[str] | None, *, check: Callable[[argparse.Namespace], object] | None = None) -> int:
    """The command line of a measurement (profile, replay): parse and check the flags, measure, write
    the JSON atomically to --out. Bad input is one line on stderr and exit 2."""
    try:
        args = parser.parse_args(argv)
        if args.repeat < 1 or args.warmup < 0 or args.threads < 1:
            raise MeasureError("need --repeat >= 1, --warmup >= 0, --threads >= 1")
        if check is not None:
            check(args)
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise MeasureError(f"--out {args.out}: no such folder")
        result = measure(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    write_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


_WORKLOAD: tuple | None = None


def workload_probe_s(model_arg: str, dtype: str, tokens: int = 256, repeat: int = 3) -> float:
    """Seconds of one forward of ``tokens`` tokens through the cluster's own model (seeded random
    weights, fused, every layer, no past) on one thread, median of ``repeat`` after one untimed: the
    ranks' own mix of work (GEMMs, attention, copies), not a GEMM alone. Run in one pool process and in
    P at once, it says how much slower a rank computes while every rank does, which the GEMM probe
    overstates (docs/validation.md, section 3)."""
    global _WORKLOAD
    import torch

    from reference.checkpoint import DTYPES, load_model

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    if _WORKLOAD is None or _WORKLOAD[0] != (model_arg, dtype, tokens):
        spec, model, _ = load_model(model_arg, cpu, DTYPES[dtype], seed=0)
        run = rank_run(model.fuse_(), spec, device=cpu, dtype=DTYPES[dtype], chunk=tokens, past=0, last=False)
        _WORKLOAD = ((model_arg, dtype, tokens), run)
    with torch.no_grad():
        return statistics.median(make_timer(cpu, 1, repeat)(_WORKLOAD[1]))
