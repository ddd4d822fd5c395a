"""Measure the simulator's cost components on this device: a profile JSON the simulator interpolates.

    python -m reference.measure.profile --model PRESET_OR_CONFIG --device cpu|cuda --dtype fp32|fp16|bf16 \\
        --out profiles/NAME.json [--grid small|cpu|cpu-low|gpu] [--repeat 7] [--threads 1] [--add-to PROFILE]

The components are the questions of the simulator's cost model (docs/cost_model.md), timed on layer 0
of the runtime's own seeded random model, fused as ``reference.launch`` fuses it: ``embed``,
``pre_attention``, ``kv_copy``, ``attention``, ``post_attention``, ``head``, a whole ``layer`` (a check
that the parts add up) and, on CUDA, whole ``forward`` passes with the host's time per layer. Grid
points listed in a grid's ``held_out`` are measured like the others but flagged, so the simulator can
fit without them and report how well it predicts them. What each component times, how, and the JSON
schema: docs/validation.md, section 1. References: PyTorch CUDA events; Vidur's operator profiling.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import warnings
from datetime import datetime, timezone

from reference.measure.timing import (HOST_PROBE_TOKENS, MeasureError, device_name, forward_s, make_timer,
                                      measurement_main, rank_run, speed_probe_s)

SCHEMA_VERSION = 3
FORWARD_HOST_MAX_TOKENS = 4096  # host time of forwards up to here: above, a layer's GPU work is longer

# Token grids (linear parts), attention grids as (queries, past keys); held-out points are measured
# and flagged. ``cpu`` suits the small cluster model (chunks of 256..2048 tokens, contexts to 4096);
# ``gpu`` a 7B model on an H100 (chunks of 128..16384); ``small`` is for tests (seconds).
GRIDS = {
    "small": {"tokens": [8, 16, 32, 64], "tokens_held_out": [24, 48],
              "queries": [8, 16, 32, 64], "past": [0, 16, 64], "attention_held_out": [[24, 24], [24, 40]]},
    # ``cpu-low`` extends a ``cpu`` profile below its grid (``--add-to``): the nearly empty ranks of
    # KV-Runahead chains searched on slow links, whose layers cost a fixed part the 128-token line misses
    "cpu-low": {"tokens": [1, 8, 32, 64], "tokens_held_out": [16],
                "queries": [1, 8, 32, 64], "past": [0, 256, 512, 1024, 2048, 3072], "attention_held_out": [[16, 528]]},
    "cpu": {"tokens": [128, 256, 512, 768, 1024, 1536, 2048, 3072], "tokens_held_out": [384, 1280],
            "queries": [128, 256, 512, 1024, 1536, 2048], "past": [0, 256, 512, 1024, 2048, 3072],
            "attention_held_out": [[768, 768], [768, 1536], [1280, 2304], [384, 1664]]},
    "gpu": {"tokens": [128, 256, 512, 1024, 2048, 4096, 8192, 16384], "tokens_held_out": [3072, 12288],
            "queries": [128, 256, 512, 1024, 2048, 4096, 8192, 16384], "past": [0, 1024, 4096, 8192, 16384],
            "attention_held_out": [[3072, 3072], [3072, 9216], [6144, 14336]]},
}
assert GRIDS["gpu"]["tokens"][0] == HOST_PROBE_TOKENS  # the host probe is this point's forward (timing.py)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.measure.profile", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--add-to", metavar="PROFILE", default=None,
                   help="measure this grid's points and write them merged into PROFILE's (same model, dtype, "
                        "device type and threads; no shared points): the result keeps PROFILE's reference speed "
                        "and head, and lists the addition under 'extensions'")
    return p


def _point_keys(comps: dict) -> set[tuple]:
    """(component, tokens, queries, keys) of every measured point but ``head`` (one per profile)."""
    return {(name, e.get("tokens"), e.get("queries"), e.get("keys"))
            for name, entries in comps.items() if name != "head" for e in entries}


def _grid_keys(grid: dict) -> set[tuple]:
    """The points a grid measures, as ``_point_keys`` names them (CPU: no ``forward`` points)."""
    keys = {(name, t, None, None) for t in grid["tokens"] + grid["tokens_held_out"]
            for name in ("embed", "pre_attention", "post_attention", "kv_copy")}
    keys |= {("attention", None, c, c + p) for c in grid["queries"] for p in grid["past"]}
    keys |= {("attention", None, c, k) for c, k in grid["attention_held_out"]}
    keys |= {("layer", t, None, t + p) for t in grid["queries"][::2] for p in (0, grid["past"][len(grid["past"]) // 2])}
    return keys


def read_base(args: argparse.Namespace) -> dict | None:
    """``--add-to``'s profile, checked against the flags before anything is measured (MeasureError)."""
    import json

    from sim.model import ModelSpec

    if args.add_to is None:
        return None
    try:
        with open(args.add_to, encoding="utf-8") as f:
            base = json.load(f)
    except OSError as e:
        raise MeasureError(f"--add-to {args.add_to}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise MeasureError(f"--add-to {args.add_to}: not valid JSON ({e})") from None
    if not isinstance(base, dict) or not isinstance(base.get("components"), dict):
        raise MeasureError(f"--add-to {args.add_to}: not a profile (no components)")
    if args.device != "cpu":
        raise MeasureError("--add-to: only CPU profiles can be extended (a GPU profile's forwards and host "
                           "floor are measured over its whole grid)")
    for name, want in (("model", ModelSpec.resolve(args.model).to_dict()), ("dtype", args.dtype),
                       ("device_type", args.device), ("threads", args.threads)):
        if base.get(name) != want:
            raise MeasureError(f"--add-to {args.add_to}: its {name} is {base.get(name)!r}, these flags measure {want!r}")
    shared = sorted(_grid_keys(GRIDS[args.grid]) & _point_keys(base["components"]), key=str)
    if shared:
        raise MeasureError(f"--add-to {args.add_to}: grid {args.grid} measures points it already has, e.g. {shared[0]}")
    return base


def merged(base: dict, new: dict) -> dict:
    """``base`` with ``new``'s points added: each point keeps its own ``probe_s``, so the cost model brings
    it to the base's reference speed (``speed_probe_s``); the grids are united; ``extensions`` records
    when, how and at what machine speed the points were added."""
    out = dict(base)
    out["components"] = {name: list(base["components"].get(name, [])) + (new["components"].get(name, [])
                                                                          if name != "head" else [])
                         for name in set(base["components"]) | set(new["components"])}
    out["grid"] = {key: sorted({tuple(x) if isinstance(x, list) else x for x in base["grid"].get(key, []) + val})
                   for key, val in new["grid"].items()}
    out["grid"]["attention_held_out"] = [list(x) for x in out["grid"]["attention_held_out"]]
    out["extensions"] = list(base.get("extensions", [])) + [
        {key: new[key] for key in ("grid_name", "grid", "command", "timestamp_utc", "torch_version", "host",
                                   "load_average", "warmup", "repeat", "speed_probe_s")}]
    return out


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
        return rotary_cos_sin(0, t, head_dim=self.spec.head_dim, theta=self.spec.rope_theta, dtype=self.dtype,
                              device=self.device)

    def embed(self, t: int):
        ids = self.torch.randint(0, self.spec.vocab_size, (1, t), generator=self.gen, device=self.device)
        return lambda: self.model.tok_embeddings(ids)

    def halves(self, x, cos, sin, as_forward: bool = False):
        """(pre, post) of layer 0 at x's shape: ``pre()`` -> (q, k, v, *extra); ``post(y, pre_out)``
        runs the rest of the layer on attention output y.

        On CUDA the components are timed as CUDA graph replays at every size: their GPU time. Eager
        calls above the graphed sizes would measure the host's time to issue them where it exceeds
        the GPU's, which a forward hides behind the previous part's GPU work (docs/validation.md,
        section 7, "Component timing"); the host's pace is the separate per-layer floor (the
        ``forward`` points' ``host_s``). ``as_forward``: as the model's forward runs them instead
        (graphs up to ``reference.cuda_graphs.max_tokens()``, eager above), for the whole-layer
        points."""
        from reference.cuda_graphs import LayerGraphs, applies

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
        from reference.chunk_attention import chunk_attention

        s = self.spec
        q = self.randn(1, s.num_heads, c, s.head_dim)
        kk, vv = self.randn(1, s.num_kv_heads, k, s.head_dim), self.randn(1, s.num_kv_heads, k, s.head_dim)
        run = lambda: chunk_attention(q, kk, vv)  # noqa: E731
        if self.device.type != "cuda":
            return run
        # Its GPU time: replays of a CUDA graph of the call. Eager calls at small shapes measure the
        # host's time to issue them, which a layer overlaps with the GPU work of its other parts;
        # the layer's host time is the ``forward`` points' host_s.
        from reference.cuda_graphs import capture
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


def _entry(samples: list[float], *, held_out: bool, probe_s: float | None, **key) -> dict:
    return {**key, "held_out": held_out, "samples_s": samples, "median_s": statistics.median(samples),
            "probe_s": probe_s}


def profile(args: argparse.Namespace, say=print) -> dict:
    """Measure every component over the grid; the profile dict (schema: docs/validation.md)."""
    import torch

    from reference.checkpoint import DTYPES, load_model
    from reference.chunk_attention import FLASH_MAX_CHUNK

    base = read_base(args)  # bad --add-to input fails here, before anything is loaded or measured
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeasureError("--device cuda: no CUDA device on this machine")
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
        out = {}
        for t in grid["tokens"]:
            for past in (0, grid["past"][1]):
                run = rank_run(model, spec, device=device, dtype=DTYPES[args.dtype], chunk=t, past=past,
                               last=False)
                out[(t, past)] = forward_s(run, layers=spec.num_layers, warmup=args.warmup, repeat=args.repeat)
        return out.items()

    with torch.no_grad():
        first = {} if cpu else dict(forwards_pass())  # before the components, and again after them
        for t, held in tokens:
            for name in ("embed", "pre_attention", "post_attention", "kv_copy"):
                comps[name].append(_entry(timer(getattr(parts, name)(t)), held_out=held, probe_s=probes[-1],
                                          tokens=t))
            say(f"tokens {t}: pre {comps['pre_attention'][-1]['median_s'] * 1e3:.2f} ms, post "
                f"{comps['post_attention'][-1]['median_s'] * 1e3:.2f} ms")
        points = [(c, c + p, False) for c in grid["queries"] for p in grid["past"]]
        points += [(c, k, True) for c, k in grid["attention_held_out"]]
        for c, k, held in points:
            if args.max_keys is None or k <= args.max_keys:
                comps["attention"].append(_entry(timer(parts.attention(c, k)), held_out=held, probe_s=probes[-1],
                                                 queries=c, keys=k))
                say(f"attention {c} x {k}: {comps['attention'][-1]['median_s'] * 1e3:.2f} ms")
        comps["head"].append(_entry(timer(parts.head()), held_out=False, probe_s=probes[-1]))
        for t in grid["queries"][::2]:
            for past in (0, grid["past"][len(grid["past"]) // 2]):
                run = parts.layer(t, past)
                comps["layer"].append(_entry(timer(run), held_out=False, probe_s=probes[-1], tokens=t, keys=t + past))
        if not cpu:
            for (t, past), (samples2, host2) in forwards_pass():
                samples, host = first[(t, past)]
                medians = [statistics.median(samples), statistics.median(samples2)]
                entry = _entry(samples if medians[0] <= medians[1] else samples2, held_out=past == 0, probe_s=None,
                               tokens=t, keys=t + past)
                entry["pass_medians_s"] = medians
                if t <= FORWARD_HOST_MAX_TOKENS:
                    entry["host_s"] = min(statistics.median(host), statistics.median(host2))
                comps["forward"].append(entry)
                say(f"forward {t} + past {past}: {entry['median_s'] * 1e3:.2f} ms (passes "
                    f"{medians[0] * 1e3:.2f}, {medians[1] * 1e3:.2f}), host "
                    f"{entry.get('host_s', float('nan')) * 1e3:.3f} ms a layer")
    result = {
        "schema_version": SCHEMA_VERSION, "model": spec.to_dict(), "model_arg": args.model,
        "model_source": source, "dtype": args.dtype, "device": device_name(device),
        "device_type": device.type, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "steady_ms": args.steady_ms if device.type == "cuda" else None,
        "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
        "python_version": platform.python_version(), "host": platform.node(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m reference.measure.profile " + " ".join(sys.argv[1:]),
        "grid_name": args.grid, "grid": grid, "warmup": args.warmup, "repeat": args.repeat,
        "flash_max_chunk": FLASH_MAX_CHUNK if device.type == "cuda" else None,
        "speed_probe_s": statistics.median(probes) if cpu else None,
        "components": comps,
    }
    return result if base is None else merged(base, result)


def main(argv: list[str] | None = None) -> int:
    from sim.model import ModelSpec
    return measurement_main("reference.measure.profile", _parser(), profile, argv,
                            check=lambda args: ModelSpec.resolve(args.model))


if __name__ == "__main__":
    sys.exit(main())
