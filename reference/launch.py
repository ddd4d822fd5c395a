"""torchrun entry: load a model, prefill one prompt under a scheme, time TTFT, write results JSON.

    torchrun --nproc-per-node P -m reference.launch --model PRESET_OR_FOLDER --scheme kvr \
        --partition 30,20,14 --context 64 --dtype bf16 --warmup 2 --repeat 5 --out results.json

Also runs without torchrun as one process (world size 1). Flags, the TTFT method and the results
schema: docs/reference.md. Bad input is one line on stderr (rank 0) and exit code 2; a failed peer
or collective is one line and exit code 1.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import torch
import torch.distributed as dist

from reference.checkpoint import DTYPES, load_model
from reference.generate import greedy
from reference.schemes import SCHEME_NAMES, parse_partition, prefill
from reference.transport import DistTransport
from sim.model import ModelSpec

SCHEMA_VERSION = 1


class LaunchError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise LaunchError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m reference.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="preset name, checkpoint folder, or config.json (random weights)")
    p.add_argument("--scheme", required=True, choices=SCHEME_NAMES)
    p.add_argument("--partition", default="even", help="'even' or tokens per rank, e.g. 30,20,14 (kvr only)")
    p.add_argument("--context", type=int, help="prompt tokens C (default: the length of --input-ids)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    p.add_argument("--out", help="results JSON path (written by rank 0)")
    p.add_argument("--input-ids", help="JSON file with the prompt as a list of token ids")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and random prompt (default 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="auto: nccl when every rank has its own CUDA GPU, else gloo")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda:LOCAL_RANK when there is such a GPU, else cpu")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="after timing, N greedy tokens on the last rank from its full cache")
    p.add_argument("--layer-timings", action="store_true",
                   help="one extra untimed prefill timing every layer on every rank")
    p.add_argument("--timeout", type=float, default=300.0, help="process-group timeout in seconds (default 300)")
    p.add_argument("--link", help="free-form description of the interconnect, copied to the results")
    return p


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _device(args: argparse.Namespace, local_rank: int, local_world: int) -> torch.device:
    has_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if args.device == "cuda" and not has_gpu:
        raise LaunchError(f"--device cuda: need {local_world} CUDA GPUs on this host, "
                          f"found {torch.cuda.device_count()}")
    if args.device == "cuda" or (args.device == "auto" and has_gpu):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _prompt(args: argparse.Namespace, spec: ModelSpec) -> list[int]:
    if args.input_ids is None:
        if args.context is None:
            raise LaunchError("give --context C or --input-ids FILE")
        if args.context < 1:
            raise LaunchError(f"--context {args.context} must be >= 1")
        gen = torch.Generator().manual_seed(args.seed)
        return torch.randint(0, spec.vocab_size, (args.context,), generator=gen).tolist()
    try:
        with open(args.input_ids, encoding="utf-8") as f:
            ids = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LaunchError(f"--input-ids {args.input_ids}: {e}") from None
    if not (isinstance(ids, list) and ids and all(isinstance(i, int) and 0 <= i < spec.vocab_size for i in ids)):
        raise LaunchError(f"--input-ids {args.input_ids}: need a non-empty JSON list of token ids in [0, {spec.vocab_size})")
    if args.context is not None and args.context != len(ids):
        raise LaunchError(f"--context {args.context} but --input-ids has {len(ids)} tokens")
    return ids


def _validate(args: argparse.Namespace, world: int) -> tuple[ModelSpec, list[int], list[int]]:
    """Everything about the input that can be checked before any process talks to another."""
    if args.warmup < 0 or args.repeat < 1 or args.generate < 0 or args.timeout <= 0:
        raise LaunchError("need --warmup >= 0, --repeat >= 1, --generate >= 0, --timeout > 0")
    spec = ModelSpec.resolve(args.model)
    ids = _prompt(args, spec)
    chunks = parse_partition(args.partition, args.scheme, len(ids), world)
    return spec, ids, chunks


def _run(args, rank: int, world: int, local_rank: int, spec: ModelSpec, ids: list[int],
         chunks: list[int], device: torch.device, backend: str) -> dict | None:
    """Load, warm up, time; returns the results dict on rank 0 (None elsewhere)."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    spec, model, source = load_model(args.model, device, DTYPES[args.dtype], args.seed)
    input_ids = torch.tensor([ids], device=device)
    transport = DistTransport() if dist.is_initialized() else _Solo()
    last = rank == world - 1

    def barrier() -> None:
        if dist.is_initialized():
            dist.barrier(device_ids=[local_rank]) if cuda else dist.barrier()
        sync()

    def once():
        barrier()
        t0 = time.perf_counter()
        res = prefill(args.scheme, model, input_ids, chunks, transport)
        token = int(res.logits[0].argmax()) if last else None  # .item() waits for the device
        sync()
        return time.perf_counter() - t0, token, res

    for _ in range(args.warmup):
        once()
    if rank == 0:
        print(f"reference.launch: warm-up done, timing {args.repeat} runs", flush=True)
    samples, token, res = [], None, None
    for _ in range(args.repeat):
        dt, token, res = once()
        samples.append(dt)
    generated = greedy(model, res.logits, res.cache, args.generate) if last and args.generate else None
    layer_times = _layer_times(model, lambda: prefill(args.scheme, model, input_ids, chunks, transport),
                               barrier, sync) if args.layer_timings else None

    # TTFT is the last rank's clock; everything reaches rank 0, which alone writes.
    mine = {"ttft_s": samples, "first_token_id": token, "generated_ids": generated}
    if dist.is_initialized():
        box = [mine]
        dist.broadcast_object_list(box, src=world - 1, device=device if cuda else None)
        mine = box[0]
        if layer_times is not None:
            every: list = [None] * world
            dist.all_gather_object(every, layer_times)
            layer_times = every
    elif layer_times is not None:
        layer_times = [layer_times]
    if rank != 0:
        return None
    return {
        "schema_version": SCHEMA_VERSION,
        "model": spec.to_dict(), "model_arg": args.model, "model_source": source,
        "scheme": args.scheme, "partition": chunks, "world_size": world, "context": len(ids),
        "dtype": args.dtype, "backend": backend, "device": _device_name(device),
        "torch_version": torch.__version__, "nccl_version": _nccl_version(),
        "link": args.link, "seed": args.seed, "input_ids_file": args.input_ids,
        "warmup": args.warmup, "repeat": args.repeat,
        "ttft_s": mine["ttft_s"], "ttft_median_s": statistics.median(mine["ttft_s"]),
        "first_token_id": mine["first_token_id"], "generated_ids": mine["generated_ids"],
        "layer_times_s": layer_times,
        "host": platform.node(), "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


class _Solo:
    """The transport of a world of one (no process group): nothing to send or gather."""
    rank, world_size = 0, 1


def _layer_times(model, run, barrier, sync) -> list[float]:
    """Wall seconds of each layer in one prefill (device-synchronised at every layer boundary;
    includes waits for peers, e.g. the KV-Runahead receive)."""
    starts, times = [], []

    def pre(mod, inp) -> None:  # a hook's return value would replace the layer's input or output
        sync()
        starts.append(time.perf_counter())

    def post(mod, inp, out) -> None:
        sync()
        times.append(time.perf_counter() - starts[-1])

    handles = [h for layer in model.layers
               for h in (layer.register_forward_pre_hook(pre), layer.register_forward_hook(post))]
    try:
        barrier()
        run()
    finally:
        for h in handles:
            h.remove()
    return times


def _is_comm_failure(e: RuntimeError) -> bool:
    """A peer died or a collective timed out. gloo raises plain RuntimeErrors for these."""
    return isinstance(e, dist.DistError) or any(
        w in str(e) for w in ("gloo", "NCCL", "Connection closed", "Connection reset", "imed out", "timeout"))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def _nccl_version() -> str | None:
    try:
        v = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def _write_atomic(path: str, results: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".results-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank, local_world = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)

    def fail(msg: str, code: int) -> int:
        if rank == 0 or code != 2:  # user errors are the same on every rank: say them once
            print(f"reference.launch: error: {'' if code == 2 else f'rank {rank}: '}{msg}", file=sys.stderr, flush=True)
        return code

    try:
        args = _parser().parse_args(argv)
        spec, ids, chunks = _validate(args, world)
        device = _device(args, local_rank, local_world)
        backend = ("nccl" if device.type == "cuda" else "gloo") if args.backend == "auto" else args.backend
        if args.out and not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise LaunchError(f"--out {args.out}: no such folder")
    except ValueError as e:
        return fail(str(e), 2)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world)) if device.type == "cpu" else None
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout),
                                    device_id=device if device.type == "cuda" else None)
        results = _run(args, rank, world, local_rank, spec, ids, chunks, device, backend)
    except ValueError as e:  # a checkpoint that does not fit its config
        return fail(str(e), 2)
    except RuntimeError as e:
        if not _is_comm_failure(e):
            raise  # a bug of ours: keep the traceback
        return fail(str(e).strip().splitlines()[0], 1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if results is not None:
        if args.out:
            _write_atomic(args.out, results)
        print(f"scheme={results['scheme']} model={spec.name} P={world} C={results['context']} "
              f"partition={','.join(map(str, chunks))} dtype={args.dtype} backend={backend} "
              f"ttft_median_s={results['ttft_median_s']:.6f} first_token_id={results['first_token_id']}"
              + (f" generated={results['generated_ids']}" if results["generated_ids"] else "")
              + (f" -> {args.out}" if args.out else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
