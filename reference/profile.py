"""Measure the simulator's cost components on this device: a profile JSON the simulator interpolates.

    python -m reference.profile --model PRESET_OR_CONFIG --device cpu|cuda --dtype fp32|fp16|bf16 \\
        --out profiles/NAME.json [--grid small|cpu|gpu] [--repeat 7] [--threads 1]

The components are the ``CostModel`` questions of ``sim/cost.py`` (docs/cost_model.md), timed on the
runtime's own modules (layer 0 of a seeded random model built by ``reference.checkpoint``, fused as
``reference.launch`` fuses it):

- ``embed``: the embedding lookup of t tokens;
- ``pre_attention``: the layer's ``pre`` (input norm(s), the fused QKV GEMM, rotary on Q and K) and
  the ``torch.stack`` of K and V every cache does;
- ``kv_copy``: ``reference.kvcache.cat_tokens`` of n tokens' stacked K and V (the kvr chain's and
  tsp's copies);
- ``attention``: ``reference.fast_attention.chunk_attention`` of c queries against k keys (the
  kernel the runtime uses, bottom-right causal);
- ``post_attention``: the layer's ``post`` (the output projection, the MLP, a sequential block's
  second norm, the residual adds);
- ``head``: the final norm and LM head on the last token and the argmax to the host;
- ``layer``: a whole decoder layer (``pre``, the cache hook of a local KV-cache holding a past, the
  attention, ``post``) as the model's forward runs it, a check that the parts add up to the whole;
- ``forward`` (CUDA): a whole forward of the model (``model.hidden``, as ``reference.replay`` runs a
  rank) of t tokens with a past of 0 and of 1024 tokens, timed one call at a time (``forward_s``),
  and the host's time per layer to issue it (``host_s``, for t <= 4096): the pace of a host-bound
  layer, the simulator's floor. Timed twice, before the other components and after them; the pass
  with the lower median is kept and both medians are recorded (the H100 caps its power under
  sustained load and then runs at 1.3-1.7 instead of 1.98 GHz; in the final H100 profiles the two
  passes differed by 0-5%). The simulator calibrates its layers to the forwards with a past and holds
  those without one out as a check (``sim.profile``, docs/validation.md).

Timing: on CUDA, CUDA events around back-to-back calls lasting about ``--steady-ms`` (the steady-state
cost of a component inside a forward pass, see ``make_timer``); ``pre_attention``, ``post_attention``
and ``attention`` as replays of CUDA graphs of the calls at every size, so their GPU time (the model's
forward replays ``pre`` and ``post`` as graphs up to ``KVR_CUDA_GRAPHS`` tokens, ``reference/graphs.py``,
and above that its host work hides behind the GPU's); on CPUs ``time.perf_counter`` around one call;
``--warmup`` untimed calls, then ``--repeat`` samples per grid point, median kept. Grid points
listed in the grid's ``held_out`` are measured like the others but flagged, so the simulator can fit
without them and report how well it predicts them (``python -m sim.profile``).
Schema: docs/validation.md. References: PyTorch CUDA events; Vidur's operator profiling.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from datetime import datetime, timezone
from typing import Callable

SCHEMA_VERSION = 3
FORWARD_HOST_MAX_TOKENS = 4096  # host time of forwards up to here: above, a layer's GPU work is longer

# Token grids (linear parts), attention grids as (queries, past keys); held-out points are measured
# and flagged. ``cpu`` suits the small cluster model (chunks of 256..2048 tokens, contexts to 4096);
# ``gpu`` a 7B model on an H100 (chunks of 128..16384); ``small`` is for tests (seconds).
GRIDS = {
    "small": {"tokens": [8, 16, 32, 64], "tokens_held_out": [24, 48],
              "queries": [8, 16, 32, 64], "past": [0, 16, 64], "attention_held_out": [[24, 24], [24, 40]]},
    "cpu": {"tokens": [128, 256, 512, 768, 1024, 1536, 2048, 3072], "tokens_held_out": [384, 1280],
            "queries": [128, 256, 512, 1024, 1536, 2048], "past": [0, 256, 512, 1024, 2048, 3072],
            "attention_held_out": [[768, 768], [768, 1536], [1280, 2304], [384, 1664]]},
    "gpu": {"tokens": [128, 256, 512, 1024, 2048, 4096, 8192, 16384], "tokens_held_out": [3072, 12288],
            "queries": [128, 256, 512, 1024, 2048, 4096, 8192, 16384], "past": [0, 1024, 4096, 8192, 16384],
            "attention_held_out": [[3072, 3072], [3072, 9216], [6144, 14336]]},
}


class ProfileError(ValueError):
    """Bad command-line input."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="preset name or config.json (random weights)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--out", required=True, help="profile JSON path")
    p.add_argument("--grid", default="cpu", choices=sorted(GRIDS))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7, help="samples per grid point (default 7)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU (default 1, as a cluster rank)")
    p.add_argument("--steady-ms", type=float, default=5.0,
                   help="CUDA: each sample times back-to-back calls lasting about this long, the "
                        "steady-state cost inside a forward pass (default 5; 0: one call per sample)")
    p.add_argument("--max-keys", type=int, default=None, help="skip attention points with more keys")
    return p


def speed_probe_s(repeat: int = 9) -> float:
    """Seconds of a fixed single-thread fp32 GEMM (256 x 512 x 1376), median of ``repeat``.

    The cloud CPUs this runs on change speed by up to 4x over minutes (the host time-slices its vCPUs;
    no steal time is reported), so every profile point and every measured run records this probe next
    to it, and the simulator can compare like with like (docs/validation.md, "Machine speed")."""
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
    two, which is right for a whole rank (``reference.replay``) but not for the parts of a layer the
    simulator sums (docs/validation.md, "Steady-state component timing")."""
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


def forward_s(run: Callable[[], object], layers: int, warmup: int, repeat: int) -> tuple[list[float], list[float]]:
    """CUDA: a whole forward ``run()`` (the model's own ``hidden``, as a replayed rank runs it:
    embedding, rotary tables, graph lookup, every layer) timed as ``reference.replay`` times a rank:
    one call after a synchronisation, between CUDA events; ``repeat`` samples after ``warmup`` calls.
    Returns (seconds per forward, the host's seconds per layer to issue it). The host's time is the
    pace of a host-bound layer; one layer called in a loop measured a half to a third of it on the
    H100 machine (docs/validation.md, "Host-bound layers")."""
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


class Parts:
    """The cost components as calls on layer 0 of ``model`` (Llama or Falcon, fused)."""

    def __init__(self, model, spec, device, dtype):
        import torch

        self.torch, self.model, self.spec, self.device, self.dtype = torch, model, spec, device, dtype
        self.block = model.layers[0]
        self.gen = torch.Generator(device=device).manual_seed(0)

    def randn(self, *shape):
        return self.torch.randn(*shape, generator=self.gen, device=self.device, dtype=self.dtype)

    def rotary(self, t: int):
        from reference.layers import rotary_cos_sin
        return rotary_cos_sin(0, t, self.spec.head_dim, self.spec.rope_theta, self.dtype, self.device)

    def embed(self, t: int):
        ids = self.torch.randint(0, self.spec.vocab_size, (1, t), generator=self.gen, device=self.device)
        return lambda: self.model.tok_embeddings(ids)

    def halves(self, x, cos, sin, as_forward: bool = False):
        """(pre, post) of layer 0 at x's shape: ``pre()`` -> (q, k, v, *extra); ``post(y, pre_out)``
        runs the rest of the layer on attention output y.

        On CUDA the components are timed as CUDA graph replays at every size: their GPU time. Eager
        calls above the graphed sizes would measure the host's time to issue them where it exceeds
        the GPU's (up to 2x for ``pre_attention`` at 2k-4k tokens on the H100 machine's VM), which a
        forward hides behind the previous part's GPU work; the host's pace is the separate per-layer
        floor (the ``forward`` points' ``host_s``). ``as_forward``: as the model's forward runs them
        instead (graphs up to ``reference.graphs.max_tokens()``, eager above), for the whole-layer
        points."""
        from reference.graphs import LayerGraphs, applies

        blk = self.block
        if applies(x) if as_forward else x.is_cuda:
            graphs = LayerGraphs(self.model, x, cos, sin, layers=[blk])
            return (lambda: graphs.pre(0)), (lambda y, out: graphs.post(0, y))
        return (lambda: blk.pre(x, cos, sin)), (lambda y, out: blk.post(x, y, *out[3:]))

    def pre_attention(self, t: int):
        pre, _ = self.halves(self.randn(1, t, self.spec.hidden_size), *self.rotary(t))

        def run():
            _, k, v, *_ = pre()
            return self.torch.stack([k, v])  # as every KV-cache does first
        return run

    def kv_copy(self, n: int):
        from reference.kvcache import cat_tokens

        s = self.spec
        half = max(1, n // 2)
        a = self.randn(2, 1, s.num_kv_heads, half, s.head_dim)
        b = self.randn(2, 1, s.num_kv_heads, n - half, s.head_dim) if n > half else None
        return (lambda: cat_tokens([a, b])) if b is not None else (lambda: a.clone())

    def attention(self, c: int, k: int):
        from reference.fast_attention import chunk_attention

        s = self.spec
        q = self.randn(1, s.num_heads, c, s.head_dim)
        kk, vv = self.randn(1, s.num_kv_heads, k, s.head_dim), self.randn(1, s.num_kv_heads, k, s.head_dim)
        run = lambda: chunk_attention(q, kk, vv)  # noqa: E731
        if self.device.type != "cuda":
            return run
        # Its GPU time: replays of a CUDA graph of the call. Eager calls at small shapes measure the
        # host's time to issue them, which a layer overlaps with the GPU work of its other parts;
        # the layer's host time is the ``forward`` points' host_s.
        from reference.graphs import capture
        try:
            return capture(run, (), None)[0].replay
        except RuntimeError as e:
            warnings.warn(f"attention {c} x {k} could not be captured in a CUDA graph ({e}); timing "
                          "eager calls", RuntimeWarning, stacklevel=2)
            return run

    def post_attention(self, t: int):
        s = self.spec
        pre, post = self.halves(self.randn(1, t, s.hidden_size), *self.rotary(t))
        out = pre()
        y = self.randn(1, s.num_heads, t, s.head_dim)
        return lambda: post(y, out)

    def head(self):
        x = self.randn(1, 4, self.spec.hidden_size)
        return lambda: int(self.model.output(self.model.norm(x[:, -1]))[0].argmax())

    def layer(self, t: int, past: int):
        from reference.kvcache import KVCache
        from reference.layers import attention

        s = self.spec
        pre, post = self.halves(self.randn(1, t, s.hidden_size), *self.rotary(t), as_forward=True)
        pk = self.randn(1, s.num_kv_heads, past, s.head_dim) if past else None
        pv = self.randn(1, s.num_kv_heads, past, s.head_dim) if past else None

        def run():  # DecoderBlock.forward with a local cache holding `past` tokens
            cache = KVCache(s.num_layers)
            cache.k[0], cache.v[0] = pk, pv
            out = pre()
            k, v = cache.update(0, out[1], out[2])
            return post(attention(out[0], k, v), out)
        return run


def _entry(samples: list[float], held_out: bool, probe_s: float | None, **key) -> dict:
    return {**key, "held_out": held_out, "samples_s": samples, "median_s": statistics.median(samples),
            "probe_s": probe_s}


def host_probe_s(model, spec, device, dtype, repeat: int = 3) -> float:
    """CUDA: the host's seconds per layer to issue a forward of the profile's smallest ``forward`` point
    without a past (``GRIDS["gpu"]["tokens"][0]`` tokens), measured as that point's ``host_s``: the
    host's pace where this runs, against which the simulator scales the profile's host floor
    (``sim.profile.ProfileCost.host_scaled``). On the H200 machine the same forward's host time
    differed by 30-50% from one process to the next, and held steady within one."""
    from reference.replay import rank_run

    run = rank_run(model, spec, device, dtype, GRIDS["gpu"]["tokens"][0], 0, False)
    return statistics.median(forward_s(run, spec.num_layers, 1, repeat)[1])


def profile(args: argparse.Namespace, say=print) -> dict:
    """Measure every component over the grid; the profile dict (schema: docs/validation.md)."""
    import torch

    from reference.checkpoint import DTYPES, load_model
    from reference.fast_attention import FLASH_MAX_CHUNK

    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ProfileError("--device cuda: no CUDA device on this machine")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    grid = GRIDS[args.grid]
    spec, model, source = load_model(args.model, device, DTYPES[args.dtype], seed=0)
    model.fuse_()
    parts = Parts(model, spec, device, DTYPES[args.dtype])
    base_timer = make_timer(device, args.warmup, args.repeat, steady_s=args.steady_ms / 1e3)
    cpu = device.type == "cpu"
    probes: list[float] = []

    def timer(fn):  # on CPUs, a speed probe next to every point (see speed_probe_s)
        probes.append(speed_probe_s(5) if cpu else None)
        return base_timer(fn)
    comps: dict[str, list[dict]] = {k: [] for k in
                                    ("embed", "pre_attention", "kv_copy", "post_attention", "attention", "head", "layer",
                                     "forward")}
    tokens = sorted({(t, False) for t in grid["tokens"]} | {(t, True) for t in grid["tokens_held_out"]})

    def forwards_pass():  # CUDA: every forward point once, (t, past) -> (samples, host per layer)
        from reference.replay import rank_run
        out = {}
        for t in grid["tokens"]:
            for past in (0, grid["past"][1]):
                run = rank_run(model, spec, device, DTYPES[args.dtype], t, past, False)
                out[(t, past)] = forward_s(run, spec.num_layers, args.warmup, args.repeat)
        return out.items()

    with torch.no_grad():
        first = {} if cpu else dict(forwards_pass())  # before the components, and again after them
        for t, held in tokens:
            for name in ("embed", "pre_attention", "post_attention", "kv_copy"):
                comps[name].append(_entry(timer(getattr(parts, name)(t)), held, probes[-1], tokens=t))
            say(f"tokens {t}: pre {comps['pre_attention'][-1]['median_s'] * 1e3:.2f} ms, post "
                f"{comps['post_attention'][-1]['median_s'] * 1e3:.2f} ms")
        points = [(c, c + p, False) for c in grid["queries"] for p in grid["past"]]
        points += [(c, k, True) for c, k in grid["attention_held_out"]]
        for c, k, held in points:
            if args.max_keys is None or k <= args.max_keys:
                comps["attention"].append(_entry(timer(parts.attention(c, k)), held, probes[-1], queries=c, keys=k))
                say(f"attention {c} x {k}: {comps['attention'][-1]['median_s'] * 1e3:.2f} ms")
        comps["head"].append(_entry(timer(parts.head()), False, probes[-1]))
        for t in grid["queries"][::2]:
            for past in (0, grid["past"][len(grid["past"]) // 2]):
                run = parts.layer(t, past)
                comps["layer"].append(_entry(timer(run), False, probes[-1], tokens=t, keys=t + past))
        if not cpu:
            for (t, past), (samples2, host2) in forwards_pass():
                samples, host = first[(t, past)]
                medians = [statistics.median(samples), statistics.median(samples2)]
                entry = _entry(samples if medians[0] <= medians[1] else samples2, past == 0, None,
                               tokens=t, keys=t + past)
                entry["pass_medians_s"] = medians
                if t <= FORWARD_HOST_MAX_TOKENS:
                    entry["host_s"] = min(statistics.median(host), statistics.median(host2))
                comps["forward"].append(entry)
                say(f"forward {t} + past {past}: {entry['median_s'] * 1e3:.2f} ms (passes "
                    f"{medians[0] * 1e3:.2f}, {medians[1] * 1e3:.2f}), host "
                    f"{entry.get('host_s', float('nan')) * 1e3:.3f} ms a layer")
    return {
        "schema_version": SCHEMA_VERSION, "model": spec.to_dict(), "model_arg": args.model,
        "model_source": source, "dtype": args.dtype, "device": _device_name(device),
        "device_type": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "steady_ms": args.steady_ms if device.type == "cuda" else None,
        "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(), "host": platform.node(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m reference.profile " + " ".join(sys.argv[1:]),
        "grid_name": args.grid, "grid": grid, "warmup": args.warmup, "repeat": args.repeat,
        "flash_max_chunk": FLASH_MAX_CHUNK if device.type == "cuda" else None,
        "speed_probe_s": statistics.median(probes) if cpu else None,
        "components": comps,
    }


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def measurement_main(prog: str, parser: argparse.ArgumentParser, measure: Callable[[argparse.Namespace], dict],
                     argv: list[str] | None, check: Callable[[argparse.Namespace], object] | None = None) -> int:
    """The command line of a measurement (profile, replay): parse and check the flags, measure, write
    the JSON atomically to --out. Bad input is one line on stderr and exit 2."""
    try:
        args = parser.parse_args(argv)
        if args.repeat < 1 or args.warmup < 0 or args.threads < 1:
            raise ProfileError("need --repeat >= 1, --warmup >= 0, --threads >= 1")
        if check is not None:
            check(args)
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise ProfileError(f"--out {args.out}: no such folder")
        result = measure(args)
    except ValueError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    from reference.launch import write_atomic
    write_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from sim.model import ModelSpec
    return measurement_main("reference.profile", _parser(), profile, argv,
                            check=lambda args: ModelSpec.resolve(args.model))


if __name__ == "__main__":
    sys.exit(main())
