"""Kernel breakdown of one single-process prefill on CUDA: ``torch.profiler``'s table, by GPU time.

    python -m reference.kernels [CONTEXT] [--models llama-2-7b,falcon-7b]

Random weights at real shapes, bf16, fused as ``reference.launch`` runs them; two warm-up prefills,
then one profiled. Used for the kernel shares in docs/benchmarks.md.
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
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("reference.kernels: needs a CUDA device", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
