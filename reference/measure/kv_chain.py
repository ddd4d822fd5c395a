"""A KV-Runahead rank's layers against the same work in a single prefill, on CUDA.

    python -m reference.measure.kv_chain [--models llama-2-7b,falcon-7b] [--points 2048:2048,...]
        [--repeat 7] [--out FILE.json]

For each model and point (chunk c, past S), three forwards of the model's own ``hidden`` (random
weights at real shapes, bf16, fused as ``reference.launch`` runs them; one call after a
synchronisation between CUDA events, median of ``--repeat``), as seconds per layer:

- ``single``: the same work in a single prefill, ``hidden(S + c tokens) - hidden(S tokens)``: what the
  c tokens cost a one-process prefill of the whole prompt (their embedding, GEMMs, and attention to
  S + c keys; a single prefill keeps each layer's K and V where its QKV projection left them);
- ``resident``: the KV-Runahead rank as the runtime runs it since 2026-12-06 (``ResidentKVCache``:
  the past already in the layer's buffer, where the chain's receive puts it; the chunk's K/V written
  after it);
- ``copy``: the rank as it ran before (the past in a buffer of its own, concatenated with the chunk's
  K/V: a copy of S + c tokens a layer).

It prints each with its ratio to ``single``; issue 21's target is ``resident`` within 3% of
``single``. The receive itself is communication (the simulator's), so neither rank form has one.
docs/benchmarks.md, "The KV chain without copies".
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

DEFAULT_POINTS = "1024:7168,2048:2048,2048:6144,2048:14336,4096:12288"


def _points(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            c, past = (int(x) for x in item.split(":"))
        except ValueError:
            raise ValueError(f"--points {item!r}: must be CHUNK:PAST, e.g. 2048:6144") from None
        if c < 1 or past < 1:
            raise ValueError(f"--points {item!r}: chunk and past must be >= 1")
        out.append((c, past))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.measure.kv_chain", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama-2-7b,falcon-7b", help="model presets, comma-separated")
    p.add_argument("--points", default=DEFAULT_POINTS, help=f"CHUNK:PAST,... (default {DEFAULT_POINTS})")
    p.add_argument("--repeat", type=int, default=7, help="timed forwards per form and point (median)")
    p.add_argument("--out", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    from sim.model import PRESETS
    models = [m for m in args.models.split(",") if m]
    try:
        points = _points(args.points)
        if args.repeat < 1:
            raise ValueError("--repeat must be >= 1")
        for m in models:
            if m not in PRESETS:
                raise ValueError(f"--models: {m!r} is not a preset ({', '.join(PRESETS)})")
        if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise ValueError(f"--out {args.out}: no such folder")
    except ValueError as e:
        print(f"python -m reference.measure.kv_chain: error: {e}", file=sys.stderr)
        return 2
    import torch
    if not torch.cuda.is_available():
        print("python -m reference.measure.kv_chain: error: needs a CUDA device", file=sys.stderr)
        return 2
    rows = measure(models, points, args.repeat)
    if args.out:
        from reference.launch import write_atomic
        write_atomic(args.out, {"schema": "kv-chain/1", "device": torch.cuda.get_device_name(), "rows": rows})
    return 0


def measure(models: list[str], points: list[tuple[int, int]], repeat: int) -> list[dict]:
    import torch

    from reference.checkpoint import random_model
    from reference.measure.timing import forward_s, rank_run
    from sim.model import ModelSpec

    dev, dtype = torch.device("cuda"), torch.bfloat16
    rows = []
    print(f"{'model':<12}{'chunk':>6}{'past':>7}  {'single ms/layer':>16}{'resident':>18}{'copy':>18}", flush=True)
    with torch.no_grad():
        for name in models:
            spec = ModelSpec.resolve(name)
            model = random_model(spec, seed=0, device=dev, dtype=dtype).fuse_()
            layers = spec.num_layers

            def timed(chunk: int, past: int, kv_chain: str) -> float:
                run = rank_run(model, spec, device=dev, dtype=dtype, chunk=chunk, past=past, last=False,
                               kv_chain=kv_chain)
                s = statistics.median(forward_s(run, layers=layers, warmup=2, repeat=repeat)[0])
                del run
                torch.cuda.empty_cache()
                return s / layers
            for c, past in points:
                whole = timed(past + c, 0, "copy")  # a single prefill: no past, nothing copied
                before = timed(past, 0, "copy")
                single = whole - before
                resident, copy = timed(c, past, "resident"), timed(c, past, "copy")
                rows.append({"model": name, "chunk": c, "past": past, "single_s": single, "resident_s": resident,
                             "copy_s": copy, "single_whole_s": whole, "single_before_s": before})
                print(f"{name:<12}{c:>6}{past:>7}  {single * 1e3:>16.3f}"
                      f"{resident * 1e3:>10.3f} ({resident / single:.3f})"
                      f"{copy * 1e3:>10.3f} ({copy / single:.3f})", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
