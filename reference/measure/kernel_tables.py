"""Kernel breakdown of one single-process prefill on CUDA: ``torch.profiler``'s table, by GPU time.

    python -m reference.measure.kernel_tables [CONTEXT] [--models llama-2-7b,falcon-7b]
    python -m reference.measure.kernel_tables --attention [--models ...]
    python -m reference.measure.kernel_tables --kv-cat [--models ...]

Random weights at real shapes, bf16, fused as ``reference.launch`` runs them; two warm-up prefills,
then one profiled. Used for the kernel shares in docs/benchmarks.md.

``--attention``: attention of a chunk with a past, per path, at the model's head shapes: the host's
time to issue one call (40 back-to-back calls without waiting, median of 5) and the time per call
between CUDA events (the larger of host and GPU time): cuDNN split in two with the log-sum-exp
merge, one flash call (SDPA with a bottom-right ``CausalBias``), and a CUDA graph of the cuDNN
path (its GPU time). docs/benchmarks.md, "Attention with a past".

``--kv-cat``: one layer's K/V concatenation (a past of K and V plus a chunk's new ones, as a layer's
``pre`` leaves them: views into the fused QKV output), GPU time of CUDA graph replays and the bytes
moved per second, per form: ``torch.cat`` of the stacked (2, B, nkv, S, hd) tensors, ``torch.cat`` of
K and V apart with the new part as a view, and ``reference.kvcache.cat_tokens`` (what the caches use).
Which form the caches used when: docs/benchmarks.md, "Concatenating K and V".
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

    p = argparse.ArgumentParser(prog="python -m reference.measure.kernel_tables",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("context", nargs="?", type=int, default=16384)
    p.add_argument("--models", default="llama-2-7b,falcon-7b")
    p.add_argument("--attention", action="store_true", help="host and GPU time of attention with a past, per path")
    p.add_argument("--kv-cat", action="store_true", help="GPU time of a layer's K/V concatenation, per form")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("reference.measure.kernel_tables: needs a CUDA device", file=sys.stderr)
        return 2
    if args.attention:
        return attention_paths(args.models.split(","))
    if args.kv_cat:
        return kv_cat_forms(args.models.split(","))
    for name in args.models.split(","):
        spec = ModelSpec.resolve(name)
        model = random_model(spec, seed=0, device="cuda", dtype=torch.bfloat16).fuse_()
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

    from reference.measure.timing import events_per_call_s

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

    from reference.chunk_attention import _cudnn_chunk_attention
    from reference.cuda_graphs import capture
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
                split = _host_and_event_ms(lambda: _cudnn_chunk_attention(q, k, v))
                flash = _host_and_event_ms(lambda: F.scaled_dot_product_attention(
                    q, k, v, attn_mask=causal_lower_right(c, n_keys), enable_gqa=gqa))
                graph = capture(lambda: _cudnn_chunk_attention(q, k, v), (), None)[0]
                gpu = _host_and_event_ms(graph.replay)[1]
                print(f"{name:<12}{c:>6}{past:>7}  {split[0]:>12.3f} / {split[1]:<11.3f}  {flash[0]:>8.3f} / "
                      f"{flash[1]:<9.3f}  {gpu:>18.3f}", flush=True)
    return 0


def kv_cat_forms(models: list[str]) -> int:
    """The ``--kv-cat`` table: per (chunk, past), GPU ms and TB/s (bytes read and written) of each form."""
    import statistics

    import torch

    from reference.cuda_graphs import capture
    from reference.kvcache import cat_tokens
    from reference.measure.timing import make_timer
    from sim.model import ModelSpec

    timer = make_timer(torch.device("cuda"), 3, 5, steady_s=5e-3)
    forms = ("stacked torch.cat", "apart, view", "cat_tokens")
    print(f"{'model':<12}{'chunk':>6}{'past':>7}{'MiB':>7}" + "".join(f"{f + ' ms (TB/s)':>30}" for f in forms))
    with torch.no_grad():
        for name in models:
            s = ModelSpec.resolve(name)
            for c, past in ((128, 4096), (128, 8192), (1024, 4096), (2048, 8192)):
                r = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.bfloat16)  # noqa: E731
                fused = r(1, c, s.num_heads + 2 * s.num_kv_heads, s.head_dim)  # as the fused QKV leaves them
                nh, nkv = s.num_heads, s.num_kv_heads
                k, v = fused[:, :, nh:nh + nkv].transpose(1, 2), fused[:, :, nh + nkv:].transpose(1, 2)
                prev = r(2, 1, nkv, past, s.head_dim)
                pk, pv = prev[0].clone(), prev[1].clone()
                calls = (lambda: torch.cat([prev, torch.stack([k, v])], dim=-2),
                         lambda: (torch.cat([pk, k], dim=-2), torch.cat([pv, v], dim=-2)),
                         lambda: cat_tokens([prev, torch.stack([k, v])]))
                mib = 2 * nkv * (c + past) * s.head_dim * 2 / 2**20
                cells = []
                for fn in calls:
                    ms = statistics.median(timer(capture(fn, (), None)[0].replay)) * 1e3
                    cells.append(f"{ms:.3f} ({2 * mib * 2**20 / ms / 1e9:.2f})")
                print(f"{name:<12}{c:>6}{past:>7}{mib:>7.0f}" + "".join(f"{x:>30}" for x in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
