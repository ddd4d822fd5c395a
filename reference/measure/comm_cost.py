"""What communication costs the compute beside it, on one GPU: a decoder layer timed alone and with a
communication kernel kept running on a second stream throughout.

    python -m reference.measure.comm_cost --model llama-2-7b --dtype bf16 --tokens 1024,4096 \\
        --sizes 256KiB,1MiB,4MiB,16MiB,64MiB --out profiles/h200-comm-cost.json

The side kernels, each moving one message of ``--sizes`` bytes again and again for as long as the
layers run:
- ``nccl``: NCCL's send/receive kernel, a one-rank communicator's all-to-all (NCCL sends to and receives
  from itself: a real NCCL kernel on the GPU's SMs, moving bytes at the GPU's memory speed);
- ``copy``: a device-to-device copy of the same bytes (``Tensor.copy_``);
- ``resident``: a kernel of ``--ctas`` thread blocks of 512 threads that holds its SMs while barely
  touching memory (a Triton loop): what an NCCL kernel waiting on a slow link is to the SMs.
The slowdown is (layers with the side kernel - layers alone) / layers alone: the fraction of a layer's
time lost while a communication kernel runs beside it; the side kernels' own time per message alone
and beside the layers is recorded too. Method and use: docs/cost_model.md, "Communication's cost to
compute". References: PyTorch CUDA events and streams; NCCL's point-to-point operations.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from datetime import datetime, timezone

from reference.measure.timing import MeasureError, device_name, events_per_call_s, measurement_main

SCHEMA = "comm-cost/1"
UNITS = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def parse_size(text: str) -> int:
    for unit, scale in UNITS.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * scale)
            except ValueError:
                break
    raise MeasureError(f"--sizes: {text!r} is not a size like 256KiB, 4MiB or 1GiB")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reference.measure.comm_cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-2-7b", help="preset name or config.json (random weights)")
    p.add_argument("--dtype", default="bf16", choices=["fp16", "bf16"])
    p.add_argument("--tokens", default="1024,4096", help="layer chunk sizes, comma-separated")
    p.add_argument("--sizes", default="256KiB,1MiB,4MiB,16MiB,64MiB", help="message sizes, comma-separated")
    p.add_argument("--ctas", default="8,16,32", help="thread blocks of the resident kernel, comma-separated")
    p.add_argument("--spin-iters", type=int, default=100000, help="loop length of the resident kernel")
    p.add_argument("--layers", type=int, default=40, help="layer calls a sample (default 40)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", required=True, help="result JSON path")
    return p


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise MeasureError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise MeasureError(f"{flag}: need integers >= 1, got {text!r}")
    return values


def _check(args) -> None:
    args.token_list = _ints(args.tokens, "--tokens")
    args.cta_list = _ints(args.ctas, "--ctas")
    args.size_list = [parse_size(s) for s in args.sizes.split(",") if s]
    if not args.size_list:
        raise MeasureError("--sizes: give at least one size")
    import torch
    if not torch.cuda.is_available():
        raise MeasureError("needs a CUDA device (the cost measured is a GPU's)")


def _one_rank_nccl():
    import torch.distributed as dist
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("nccl", rank=0, world_size=1)
    return dist


def _resident_kernel():
    """A Triton kernel of ``grid`` blocks of 16 warps that loop ``iters`` times on registers."""
    import triton
    import triton.language as tl

    @triton.jit
    def spin(out_ptr, iters, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        x = tl.arange(0, BLOCK).to(tl.float32) + pid
        for _ in range(iters):
            x = x * 0.999 + 0.001
        tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), x)
    return spin


def measure(args) -> dict:
    import torch

    from reference.checkpoint import DTYPES, load_model
    from reference.measure.profile import Parts

    device = torch.device("cuda")
    dtype = DTYPES[args.dtype]
    spec, model, source = load_model(args.model, device, dtype, seed=0)
    model.fuse_()
    parts = Parts(model, spec, device, dtype)
    dist = _one_rank_nccl()
    side = torch.cuda.Stream()
    spin = _resident_kernel()

    def timed(fn, n: int) -> float:
        """Seconds per call of n back-to-back calls on the current stream."""
        torch.cuda.synchronize()
        return events_per_call_s(fn, n)

    def side_ops(size: int):
        src = torch.empty(size, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
        ops = {"nccl": lambda: dist.all_to_all_single(dst, src), "copy": lambda: dst.copy_(src)}
        for ctas in args.cta_list if size == args.size_list[0] else ():  # its time does not depend on size
            buf = torch.empty(ctas * 512, dtype=torch.float32, device=device)
            iters = args.spin_iters  # long enough that the host's launches leave no gaps
            ops[f"resident-{ctas}"] = (lambda b=buf, c=ctas, it=iters: spin[(c,)](b, it, BLOCK=512, num_warps=16))
        return ops

    def with_side(layer, op, n_layers: int, op_s: float) -> dict:
        """The layers with the side op running beside them: the layers are queued first (so the host's
        launches of the side ops cannot delay them), then the side ops on the side stream, enough to
        cover the layers' time alone. Seconds per layer, per side op, and the overlap of the two."""
        layer_s_alone = timed(layer, 3)
        count = int(n_layers * layer_s_alone / max(op_s, 1e-7)) + 2
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]  # start, end, side start, side end
        torch.cuda.synchronize()
        ev[0].record()
        for _ in range(n_layers):
            layer()
        ev[1].record()
        side.wait_event(ev[0])
        with torch.cuda.stream(side):
            ev[2].record()
            for _ in range(count):
                op()
            ev[3].record()
        torch.cuda.synchronize()
        total, side_from, side_to = (ev[0].elapsed_time(e) / 1e3 for e in (ev[1], ev[2], ev[3]))
        return {"layer_s": total / n_layers, "op_s": (side_to - side_from) / count,
                "overlap": max(0.0, min(side_to, total) - side_from) / total}

    rows = []
    with torch.no_grad():
        kernels = {}
        for t in args.token_list:
            layer = parts.layer(t, 0)
            for _ in range(args.warmup):
                layer()
            for size in args.size_list:
                for name, op in side_ops(size).items():
                    for _ in range(args.warmup):
                        op()
                    op_alone = statistics.median(timed(op, 10) for _ in range(args.repeat))
                    alone, beside = [], []
                    for _ in range(args.repeat):
                        alone.append(timed(layer, args.layers))
                        beside.append(with_side(layer, op, args.layers, op_alone))
                    a = statistics.median(alone)
                    b = statistics.median(x["layer_s"] for x in beside)
                    overlap = statistics.median(x["overlap"] for x in beside)
                    rows.append({"tokens": t, "side": name, "bytes": size, "layer_alone_s": a, "layer_beside_s": b,
                                 "slowdown": b / a - 1, "overlap": overlap, "side_alone_s": op_alone,
                                 "side_beside_s": statistics.median(x["op_s"] for x in beside),
                                 "samples_alone_s": alone, "samples_beside": beside})
                    print(f"tokens {t} {name:12s} {size / 2**20:8.2f} MiB: layer {a * 1e3:.3f} -> {b * 1e3:.3f} ms "
                          f"(+{(b / a - 1) * 100:.1f}%, side op beside {overlap * 100:.0f}% of it), side op "
                          f"{op_alone * 1e6:.1f} us alone, {rows[-1]['side_beside_s'] * 1e6:.1f} us beside", flush=True)
                    if name not in kernels:
                        kernels[name] = _kernel_names(op)
    return {"schema": SCHEMA, "model": spec.to_dict(), "model_arg": args.model, "model_source": source,
            "dtype": args.dtype, "device": device_name(device),
            "multiprocessors": torch.cuda.get_device_properties(device).multi_processor_count,
            "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "nccl_version": ".".join(map(str, torch.cuda.nccl.version())),
            "python_version": platform.python_version(), "host": platform.node(),
            "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python -m reference.measure.comm_cost " + " ".join(sys.argv[1:]),
            "layers_per_sample": args.layers, "warmup": args.warmup, "repeat": args.repeat,
            "side_kernels": kernels, "rows": rows}


def _kernel_names(op) -> list[str]:
    """The GPU kernels one call of ``op`` runs (torch.profiler), so the JSON says what was measured."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        op()
        torch.cuda.synchronize()
    return sorted({e.key for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA})[:8]


def main(argv: list[str] | None = None) -> int:
    return measurement_main("python -m reference.measure.comm_cost", _parser(), measure, argv, check=_check)


if __name__ == "__main__":
    sys.exit(main())
