"""Kernel breakdown of one single-process prefill on CUDA: ``torch.profiler``'s table, by GPU time.

    python -m reference.kernels [CONTEXT] [--models llama-2-7b,falcon-7b]
    python -m reference.kernels --attention [--models ...]

Random weights at real shapes, bf16, fused as ``reference.launch`` runs them; two warm-up prefills,
then one profiled. Used for the kernel shares in docs/benchmarks.md.

``--attention``: attention of a chunk with a past, per path, at the model's head shapes: the host's
time to issue one call (40 back-to-back calls without waiting, median of 5) and the time per call
between CUDA events (the larger of host and GPU time): cuDNN split in two with the log-sum-exp
merge, one flash call (SDPA with a bottom-right ``CausalBias``), and a CUDA graph of the cuDNN
path (its GPU time). docs/benchmarks.md, "Attention with a past".
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from reference.checkpoint import random_model
    from reference.schemes.single import prefill
    from sim.model import ModelSpec

    p = argparse.ArgumentParser(prog="python -m reference.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("context", nargs="?", type=int, default=16384)
    p.add_argument("--models", default="llama-2-7b,falcon-7b")
    p.add_argument("--attention", action="store_true", help="host and GPU time of attention with a past, per path")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("reference.kernels: needs a CUDA device", file=sys.stderr)
        return 2
    if args.attention:
        return attention_paths(args.models.split(","))
    for name in args.models.split(","):
        spec = ModelSpec.resolve(name)
        model = random_model(spec, 0, "cuda", torch.bfloat16).fuse_()
        ids = torch.randint(0, spec.vocab_size, (1, args.context), device="cuda")
        for _ in range(2):
            prefill(model, ids)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            prefill(model, ids)
            torch.cuda.synchronize()
        print(f"== {name} C={args.context}", flush=True)
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=22,
                                        max_name_column_width=90), flush=True)
        del model
        torch.cuda.empty_cache()
    return 0


def _host_and_event_ms(fn, n: int = 40) -> tuple[float, float]:
    import statistics
    import time

    import torch

    from reference.profile import events_per_call_s

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    host = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        host.append((time.perf_counter() - t0) / n)
        torch.cuda.synchronize()
    return statistics.median(host) * 1e3, events_per_call_s(fn, n) * 1e3


def attention_paths(models: list[str]) -> int:
    """The ``--attention`` table: per (chunk, past), host ms / event ms of each path."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    from reference import fast_attention
    from reference.graphs import capture
    from sim.model import ModelSpec

    shapes = [(128, 640), (256, 1280), (512, 1536), (512, 4096), (128, 16256), (1024, 4096), (2048, 2048)]
    print(f"{'model':<12}{'chunk':>6}{'past':>7}  {'cuDNN split host/event ms':>26}  {'flash host/event ms':>20}"
          f"  {'cuDNN graph GPU ms':>18}")
    with torch.no_grad():
        for name in models:
            spec = ModelSpec.resolve(name)
            for c, past in shapes:
                n_keys = c + past
                q = torch.randn(1, spec.num_heads, c, spec.head_dim, device="cuda", dtype=torch.bfloat16)
                k = torch.randn(1, spec.num_kv_heads, n_keys, spec.head_dim, device="cuda", dtype=torch.bfloat16)
                v = torch.randn_like(k)
                gqa = spec.num_heads != spec.num_kv_heads
                split = _host_and_event_ms(lambda: fast_attention._cudnn_chunk_attention(q, k, v))
                flash = _host_and_event_ms(lambda: F.scaled_dot_product_attention(
                    q, k, v, attn_mask=causal_lower_right(c, n_keys), enable_gqa=gqa))
                graph = capture(lambda: fast_attention._cudnn_chunk_attention(q, k, v), (), None)[0]
                gpu = _host_and_event_ms(graph.replay)[1]
                print(f"{name:<12}{c:>6}{past:>7}  {split[0]:>12.3f} / {split[1]:<11.3f}  {flash[0]:>8.3f} / "
                      f"{flash[1]:<9.3f}  {gpu:>18.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
