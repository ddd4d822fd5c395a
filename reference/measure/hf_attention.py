"""transformers' own attention, eager and sdpa, timed on this device: the measurements the simulator's
``eager`` attention cost is checked against (``sim/validation/attention_impl.py``).

    python -m reference.measure.hf_attention --models llama-2-7b,falcon-7b --dtype fp16 \\
        --out profiles/h200-hf-attention-fp16.json

For each model and grid point (c queries, the last c of k keys, causal at the bottom right) it times
the attention function transformers' model file calls (``eager_attention_forward`` of
``modeling_llama`` / ``modeling_falcon``: repeat_kv, Q K^T times the scale, the additive mask, an fp32
softmax cast back, P V; and ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` through
transformers' wrapper), with the masks transformers builds: an additive float mask for eager, none
(``is_causal``) for sdpa when c = k and a boolean mask when there is a past. Timed as
``reference.measure.profile`` times its components (CUDA events, back-to-back calls). Schema and use:
docs/cost_model.md, "Attention implementations".
"""
from __future__ import annotations

import argparse
import importlib
import platform
import statistics
import sys
from datetime import datetime, timezone

from reference.measure.timing import MeasureError, device_name, make_timer, measurement_main

SCHEMA = "hf-attention/1"
# (queries, keys): chunks of a 16k prompt over 2-8 GPUs and whole short prompts.
POINTS = [(512, 512), (1024, 1024), (2048, 2048), (4096, 4096), (1024, 2048), (1024, 4096), (1024, 8192),
          (2048, 4096), (2048, 8192), (2048, 16384), (4096, 8192), (4096, 16384), (8192, 8192)]
IMPLS = ("eager", "sdpa")
KERNEL_POINT = (2048, 8192)  # the point whose kernels are listed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.measure.hf_attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama-2-7b,falcon-7b", help="presets, comma-separated")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    p.add_argument("--max-pairs", type=float, default=4096 * 16384, help="skip points with more query-key pairs")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="result JSON path")
    return p


def _check(args) -> None:
    from sim.model import PRESETS
    args.model_list = [m for m in args.models.split(",") if m]
    for m in args.model_list:
        if m not in PRESETS:
            raise MeasureError(f"--models: {m!r} is not a preset ({', '.join(PRESETS)})")
    import torch
    if not torch.cuda.is_available():
        raise MeasureError("needs a CUDA device")


def attention_functions(spec, dtype):
    """(module, {impl: function}) as transformers' model file for ``spec``'s family calls them."""
    import torch

    from reference.measure.bench import hf_config
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config = hf_config(spec, dtype)
    config._attn_implementation = "eager"
    family = "llama" if spec.family == "llama" else "falcon"
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    cls = modeling.LlamaAttention if family == "llama" else modeling.FalconAttention
    with torch.device("meta"):
        module = cls(config, layer_idx=0).eval()
    if not hasattr(module, "num_key_value_groups"):  # older Falcon files: MQA/GQA broadcast by repeat_kv
        module.num_key_value_groups = spec.num_heads // spec.num_kv_heads
    # transformers' Falcon file calls Llama's eager function from 5.2x on; older ones have their own
    # attention forward, whose arithmetic (Q K^T, mask, softmax, P V) this is too: recorded per row.
    eager = getattr(modeling, "eager_attention_forward", None)
    if eager is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as eager
    return module, {"eager": eager, "sdpa": ALL_ATTENTION_FUNCTIONS["sdpa"]}


def measure(args) -> dict:
    import torch

    from reference.checkpoint import DTYPES
    from sim.model import ModelSpec

    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    timer = make_timer(device, args.warmup, args.repeat, steady_s=0.005)
    gen = torch.Generator(device=device).manual_seed(0)
    rows, kernels = [], {}
    for name in args.model_list:
        spec = ModelSpec.preset(name)
        module, functions = attention_functions(spec, dtype)
        scaling = spec.head_dim ** -0.5
        for c, k in POINTS:
            if c * k > args.max_pairs:
                continue
            q = torch.randn(1, spec.num_heads, c, spec.head_dim, generator=gen, device=device, dtype=dtype)
            kk = torch.randn(1, spec.num_kv_heads, k, spec.head_dim, generator=gen, device=device, dtype=dtype)
            vv = torch.randn_like(kk)
            allowed = torch.ones(c, k, dtype=torch.bool, device=device).tril(k - c)[None, None]
            masks = {"eager": torch.zeros(1, 1, c, k, dtype=dtype, device=device).masked_fill(
                ~allowed, torch.finfo(dtype).min), "sdpa": None if c == k else allowed}
            for impl in IMPLS:
                fn, mask = functions[impl], masks[impl]
                try:
                    with torch.no_grad():
                        samples = timer(lambda: fn(module, q, kk, vv, mask, scaling=scaling, dropout=0.0))
                except torch.OutOfMemoryError:
                    print(f"{name} {impl} {c} x {k}: out of memory", flush=True)
                    torch.cuda.empty_cache()
                    continue
                rows.append({"model": name, "impl": impl, "function": f"{fn.__module__}.{fn.__name__}",
                             "queries": c, "keys": k, "samples_s": samples,
                             "median_s": statistics.median(samples)})
                print(f"{name} {impl:5s} {c:5d} x {k:5d}: {rows[-1]['median_s'] * 1e3:8.3f} ms", flush=True)
            if (c, k) == KERNEL_POINT:
                kernels[name] = {impl: kernel_times(lambda: functions[impl](
                    module, q, kk, vv, masks[impl], scaling=scaling, dropout=0.0)) for impl in IMPLS}
            del q, kk, vv, masks
            torch.cuda.empty_cache()
    import transformers
    return {"schema": SCHEMA, "dtype": args.dtype, "device": device_name(device),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "cuda_version": torch.version.cuda, "python_version": platform.python_version(),
            "host": platform.node(), "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m reference.measure.hf_attention " + " ".join(sys.argv[1:]),
            "warmup": args.warmup, "repeat": args.repeat, "rows": rows,
            "kernel_point": list(KERNEL_POINT), "kernels": kernels}


def kernel_times(fn) -> list[dict]:
    """The GPU kernels one call of ``fn`` runs, in order of first launch, with their seconds (torch.profiler):
    which passes over the score matrix an implementation makes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    out: dict[str, dict] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            row = out.setdefault(e.name, {"kernel": e.name, "calls": 0, "seconds": 0.0})
            row["calls"] += 1
            row["seconds"] += e.device_time / 1e6
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    return measurement_main("python -m reference.measure.hf_attention", _parser(), measure, argv, check=_check)


if __name__ == "__main__":
    sys.exit(main())
