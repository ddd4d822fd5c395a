"""Single-process prefill TTFT: our runtime against transformers, and chunk-attention kernels.

    python -m reference.measure.bench [--models llama-2-7b,falcon-7b] [--dtypes bf16,fp16]
        [--contexts 1024,...,32768] [--no-hf] [--eager] [--attention] [--out FILE]

For each model, dtype and context it times our ``single`` prefill and transformers'
``LlamaForCausalLM`` / ``FalconForCausalLM`` built from the same shapes (random weights; TTFT depends
on shapes, not values) in the same run, and prints TTFT, achieved TFLOP/s, peak memory and our time
over transformers'. FLOPs follow ``ModelSpec.prefill_flops``: 2 x linear weights per token, causal
attention as half the square (4*hd*nh per kept query-key pair), the LM head on the last token.
``--eager`` also times our prefill with CUDA graphs off (``KVR_CUDA_GRAPHS=0``, rows ``ours-eager``),
so the graphs' gain on small chunks shows as a ratio measured in the same run. ``--attention`` times
``chunk_attention`` (c queries against k keys, causal at the bottom right, the call ``kvr`` and
``tsp`` ranks make) against PyTorch's flash attention at several (c, k) points.

TTFT here: input ids already on the device; CUDA events around the prefill up to the argmax of the
last position's logits; warm-up runs not counted; the median of the repeats. Figures:
docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
from typing import Any, Callable

import torch

from sim.model import ModelSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ATTENTION_POINTS = [(16384, 16384), (8192, 8192), (1024, 16384), (2048, 16384), (4096, 16384),
                    (8192, 16384), (2048, 8192), (4096, 8192)]


def hf_config(spec: ModelSpec, dtype: torch.dtype):
    """A transformers config with the same shapes as `spec`."""
    from transformers import FalconConfig, LlamaConfig
    if spec.family == "llama":
        return LlamaConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                           intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
                           num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
                           rms_norm_eps=spec.norm_eps, rope_theta=spec.rope_theta,
                           tie_word_embeddings=spec.tie_word_embeddings, dtype=dtype)
    return FalconConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
                        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                        num_kv_heads=spec.num_kv_heads, multi_query=spec.num_kv_heads == 1,
                        new_decoder_architecture=spec.num_ln_per_layer == 2, parallel_attn=True,
                        bias=spec.bias, alibi=False, rope_theta=spec.rope_theta,
                        layer_norm_epsilon=spec.norm_eps, ffn_hidden_size=spec.intermediate_size,
                        dtype=dtype)


def time_cuda(fn: Callable[[], Any], warmup: int, repeat: int) -> list[float]:
    """Seconds of each timed call, measured with CUDA events after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return samples


def _ours(spec: ModelSpec, dtype: torch.dtype):
    from reference.checkpoint import random_model
    from reference.schemes.single import prefill
    model = random_model(spec, seed=0, device="cuda", dtype=dtype).fuse_()
    return model, lambda ids: int(prefill(model, ids).logits.argmax(-1)[0])


def _transformers(spec: ModelSpec, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(hf_config(spec, dtype), dtype=dtype)
    model.eval().requires_grad_(False)

    @torch.no_grad()
    def run(ids):
        # As generate() prefills: logits for the last position only.
        return int(model(ids, use_cache=True, logits_to_keep=1).logits[0, -1].argmax())
    return model, run


def bench_prefill(impl: str, spec: ModelSpec, dtype_name: str, contexts: list[int], *,
                  warmup: int, repeat: int) -> list[dict[str, Any]]:
    """Rows for ``impl``: "ours", "ours-eager" (CUDA graphs off) or "transformers"."""
    dtype = DTYPES[dtype_name]
    model, run = (_transformers if impl == "transformers" else _ours)(spec, dtype)
    if impl == "ours-eager":
        ours = run

        def run(ids):
            saved = os.environ.get("KVR_CUDA_GRAPHS")
            os.environ["KVR_CUDA_GRAPHS"] = "0"
            try:
                return ours(ids)
            finally:
                if saved is None:
                    del os.environ["KVR_CUDA_GRAPHS"]
                else:
                    os.environ["KVR_CUDA_GRAPHS"] = saved
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for c in contexts:
        ids = torch.randint(0, spec.vocab_size, (1, c), device="cuda", generator=gen)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        row: dict[str, Any] = {"impl": impl, "model": spec.name, "dtype": dtype_name, "context": c}
        try:
            samples = time_cuda(lambda: run(ids), warmup, repeat)
            ttft = statistics.median(samples)
            row.update(ttft_s=ttft, samples_s=samples, tflops=spec.prefill_flops(c) / ttft / 1e12,
                       peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
        except torch.OutOfMemoryError:
            row.update(ttft_s=None, error="out of memory")
        gc.collect()
        rows.append(row)
        _print_row(row)
    del model, run
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def _print_row(row: dict[str, Any]) -> None:
    if row.get("ttft_s") is None:
        print(f"  {row['impl']:>12} {row['model']:>11} {row['dtype']} C={row['context']:>6}: "
              f"{row.get('error')}", flush=True)
    else:
        print(f"  {row['impl']:>12} {row['model']:>11} {row['dtype']} C={row['context']:>6}: "
              f"{row['ttft_s']*1e3:9.1f} ms {row['tflops']:6.0f} TFLOP/s "
              f"peak {row['peak_mem_gib']:5.1f} GiB", flush=True)


def bench_attention(points, dtype: torch.dtype, *, warmup: int, repeat: int) -> list[dict[str, Any]]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.bias import causal_lower_right

    from reference.chunk_attention import chunk_attention
    rows = []
    for name in ("llama-2-7b", "falcon-7b"):
        spec = ModelSpec.preset(name)
        for c, k in points:
            q = torch.randn(1, spec.num_heads, c, spec.head_dim, device="cuda", dtype=dtype)
            kk = torch.randn(1, spec.num_kv_heads, k, spec.head_dim, device="cuda", dtype=dtype)
            vv = torch.randn_like(kk)
            flops = spec.attention_flops(c, k - c) / spec.num_layers
            gqa = spec.num_heads != spec.num_kv_heads

            def flash():
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    if c == k:
                        return F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=gqa)
                    return F.scaled_dot_product_attention(q, kk, vv, attn_mask=causal_lower_right(c, k),
                                                          enable_gqa=gqa)
            t_ours = statistics.median(time_cuda(lambda: chunk_attention(q, kk, vv), warmup, repeat))
            t_flash = statistics.median(time_cuda(flash, warmup, repeat))
            row = {"model": name, "queries": c, "keys": k, "ours_s": t_ours, "flash_s": t_flash,
                   "ours_tflops": flops / t_ours / 1e12, "flash_tflops": flops / t_flash / 1e12}
            rows.append(row)
            print(f"  attention {name:>11} c={c:>6} k={k:>6}: ours {t_ours*1e3:7.2f} ms "
                  f"{row['ours_tflops']:5.0f} TFLOP/s | flash {t_flash*1e3:7.2f} ms "
                  f"{row['flash_tflops']:5.0f} TFLOP/s", flush=True)
    return rows


def summary(rows: list[dict[str, Any]], peak_tflops: float) -> str:
    """One line per (model, dtype, context): ours, transformers, ratio, % of peak, and our eager
    (no CUDA graphs) time over ours where it was measured."""
    by = {(r["model"], r["dtype"], r["context"], r["impl"]): r for r in rows}
    lines = [f"{'model':>11} {'dtype':>5} {'context':>7} | {'ours ms':>9} {'TFLOP/s':>7} {'%peak':>5} "
             f"{'GiB':>5} | {'HF ms':>9} {'TFLOP/s':>7} {'%peak':>5} | ours/HF | eager/ours"]
    for (model, dtype, c, impl), r in sorted(by.items()):
        if impl != "ours":
            continue
        hf = by.get((model, dtype, c, "transformers"))

        def cols(x):
            if x is None:
                return f"{'-':>9} {'-':>7} {'-':>5}"
            if x.get("ttft_s") is None:
                return f"{'OOM':>9} {'-':>7} {'-':>5}"
            return f"{x['ttft_s']*1e3:9.1f} {x['tflops']:7.0f} {100*x['tflops']/peak_tflops:5.1f}"
        ratio = (f"{r['ttft_s'] / hf['ttft_s']:.2f}" if r.get("ttft_s") and hf and hf.get("ttft_s")
                 else "-")
        eager = by.get((model, dtype, c, "ours-eager"))
        gain = (f"{eager['ttft_s'] / r['ttft_s']:.2f}" if r.get("ttft_s") and eager and eager.get("ttft_s")
                else "-")
        mem = f"{r['peak_mem_gib']:5.1f}" if r.get("ttft_s") else f"{'-':>5}"
        lines.append(f"{model:>11} {dtype:>5} {c:>7} | {cols(r)} {mem} | {cols(hf)} | {ratio:>7} | {gain}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reference.measure.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="llama-2-7b,falcon-7b")
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-hf", action="store_true", help="skip transformers")
    p.add_argument("--eager", action="store_true",
                   help="also time our prefill with CUDA graphs off (rows 'ours-eager')")
    p.add_argument("--attention", action="store_true", help="also time chunk attention kernels")
    p.add_argument("--peak-tflops", type=float, default=798.0,
                   help="matmul peak the %%peak column divides by (798: bf16 measured on the H100)")
    p.add_argument("--out", help="write all rows as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("reference.measure.bench: needs a CUDA device", file=sys.stderr)
        return 2
    contexts = [int(x) for x in args.contexts.split(",")]
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN "
          f"{torch.backends.cudnn.version()}", flush=True)
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        spec = ModelSpec.resolve(name)
        for dt in args.dtypes.split(","):
            times = dict(warmup=args.warmup, repeat=args.repeat)
            rows += bench_prefill("ours", spec, dt, contexts, **times)
            if args.eager:
                rows += bench_prefill("ours-eager", spec, dt, contexts, **times)
            if not args.no_hf:
                rows += bench_prefill("transformers", spec, dt, contexts, **times)
    attn = bench_attention(ATTENTION_POINTS, torch.bfloat16, warmup=3, repeat=10) if args.attention else []
    print(summary(rows, args.peak_tflops))
    if args.out:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                "cudnn": torch.backends.cudnn.version(), "peak_tflops": args.peak_tflops}
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "prefill": rows, "attention": attn}, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
