"""The measured part of a launch: device and process group, model loading, warm-up, TTFT timing,
optional per-layer timings and greedy decoding, and the results dict (schema: docs/reference.md).

TTFT method: the prompt is already on the device; all ranks meet at a barrier (then the device is
synchronised); the clock runs on the scheme's token rank (``reference.schemes.token_rank``: the last
rank, or rank 0 for ring-zigzag and tp) from there until it holds the first token (argmax of the last
position's logits, copied to the host, device synchronised). Samples travel from that rank to rank 0,
which alone writes the results.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from argparse import Namespace
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import torch
import torch.distributed as dist

from reference.checkpoint import DTYPES, load_model
from reference.decode import greedy
from reference.schemes import prefill, token_rank
from reference.transport import DistTransport

SCHEMA_VERSION = 1


class DeviceError(ValueError):
    """A device that this machine does not have."""


# NVLink SHARP / multicast off in NCCL, PyTorch and NVSHMEM: the schemes need no in-switch reductions,
# and on shared multi-GPU hosts a program using multicast can take the host's GPUs out of service.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def pick_device(choice: str, local_rank: int, local_world: int) -> torch.device:
    """cuda:LOCAL_RANK when every local rank has its own GPU (or --device cuda), else cpu."""
    has_gpu = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if choice == "cuda" and not has_gpu:
        raise DeviceError(f"--device cuda: need {local_world} CUDA GPUs on this host, "
                          f"found {torch.cuda.device_count()}")
    if choice == "cuda" or (choice == "auto" and has_gpu):
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def is_comm_failure(e: BaseException) -> bool:
    """A peer died or a collective timed out (gloo raises plain RuntimeErrors for these)."""
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and any(
        w in str(e) for w in ("gloo", "NCCL", "Connection closed", "Connection reset", "imed out", "timeout")))


class _Solo:
    """The transport of a world of one (no process group): nothing to send; collectives of one."""
    rank, world_size = 0, 1

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]

    def all_reduce(self, tensor: torch.Tensor) -> None:
        return None

    def all_to_all(self, send, recv) -> None:
        recv[0].copy_(send[0])


def measure(args: Namespace, *, rank: int, world: int, local_rank: int, local_world: int,
            ids: list[int], chunks: list[int], say: Callable[[str], None]) -> dict[str, Any] | None:
    """Set up, warm up, time; the results dict on rank 0, None on the other ranks."""
    device = pick_device(args.device, local_rank, local_world)
    cuda = device.type == "cuda"
    backend = ("nccl" if cuda else "gloo") if args.backend == "auto" else args.backend
    if (backend == "nccl") != cuda:  # gloo sends CPU tensors only; NCCL CUDA tensors only
        raise DeviceError(f"--backend {backend} does not run on device {device}")
    if cuda:
        torch.cuda.set_device(device)
        for name, value in NO_MULTICAST.items():  # unless the user set them otherwise
            os.environ.setdefault(name, value)
    else:  # ranks sharing a CPU share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout),
                                device_id=device if cuda else None)
    try:
        return _measure(args, rank=rank, world=world, local_rank=local_rank, ids=ids, chunks=chunks,
                        device=device, backend=backend, say=say)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@torch.no_grad()
def _measure(args, *, rank, world, local_rank, ids, chunks, device, backend, say):
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    spec, model, source = load_model(args.model, device, DTYPES[args.dtype], args.seed)
    model.fuse_()  # Q/K/V and gate/up as single GEMMs (Llama; Falcon's QKV is fused already)
    input_ids = torch.tensor([ids], device=device)
    transport = DistTransport() if dist.is_initialized() else _Solo()
    first = token_rank(args.scheme, world)  # the rank that emits the first token
    options = {"pieces": args.pieces} if args.scheme == "pipeline" else {}
    if args.scheme == "tp":  # keep this rank's weight slices now: slicing is loading, not prefill
        from reference.schemes.tp import shard_

        shard_(model, transport)

    def barrier() -> None:
        if dist.is_initialized():
            dist.barrier(device_ids=[local_rank]) if cuda else dist.barrier()
        sync()

    def run(via=None):
        return prefill(args.scheme, model, input_ids, chunks, via or transport, **options)

    def once():
        barrier()
        t0 = time.perf_counter()
        res = run()
        token = int(res.logits[0].argmax()) if rank == first else None  # int() waits for the device
        sync()
        return time.perf_counter() - t0, token, res

    for _ in range(args.warmup):
        once()
    say(f"reference.launch: warm-up done, timing {args.repeat} runs")
    samples, token, res = [], None, None
    for _ in range(args.repeat):
        # Free the last prefill's result (its KV-cache) before the next one runs, so that every timed
        # prefill starts as the first did. Held, it made the second of the timed prefills the first
        # to reach a new peak of memory; at 8 CPU ranks on 2 cores that one ran about 20% slower than
        # the others (docs/validation.md, section 8, "Timed against traced").
        res = None
        dt, token, res = once()
        samples.append(dt)
    generated = greedy(model, res.logits, res.cache, args.generate) if rank == first and args.generate else None
    res = None  # nor does the extra prefill of --layer-timings or --trace run beside it
    layer_times = _layer_times(model, run, barrier, sync) if args.layer_timings else None
    trace = _trace(model, run, barrier, sync, transport) if args.trace else None

    # TTFT is the token rank's clock; rank 0 writes, so everything travels there.
    mine = {"ttft_s": samples, "first_token_id": token, "generated_ids": generated}
    if dist.is_initialized():
        box = [mine]
        dist.broadcast_object_list(box, src=first, device=device if cuda else None)
        mine = box[0]
        if layer_times is not None:
            every: list = [None] * world
            dist.all_gather_object(every, layer_times)
            layer_times = every
    elif layer_times is not None:
        layer_times = [layer_times]
    if trace is not None and dist.is_initialized():
        every = [None] * world
        dist.all_gather_object(every, trace)
        trace = every
    elif trace is not None:
        trace = [trace]
    hosts = [platform.node()]  # each rank's host: the ranks may span machines (multi-node torchrun)
    if dist.is_initialized():
        hosts = [None] * world
        dist.all_gather_object(hosts, platform.node())
    if rank != 0:
        return None
    trace_path = None
    if trace is not None:
        from reference.trace import trace_json
        from sim.outputs import write_text

        write_text(args.trace, trace_json(trace, f"measured {args.scheme}: {spec.name}, C={len(ids)}, {world} ranks"))
        # relative to the results file's folder, where readers of the results look for it
        trace_path = os.path.relpath(os.path.abspath(args.trace), os.path.dirname(os.path.abspath(args.out))) \
            if args.out else os.path.abspath(args.trace)
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
        "layer_times_s": layer_times, "trace": trace_path,
        "host": platform.node(), "hosts": hosts, "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _layer_times(model, run, barrier, sync) -> list[float]:
    """Wall seconds of each layer in one extra prefill, device-synchronised at every layer boundary
    (so it includes waits for peers, e.g. the KV-Runahead receive)."""
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


def _trace(model, run, barrier, sync, transport) -> list[dict]:
    """This rank's events of one extra prefill through a timed transport (``reference.trace``),
    from a barrier; its layers run eagerly (no CUDA graphs)."""
    from reference.trace import Recorder, TracedTransport

    rec = Recorder(sync)
    handles = rec.hook_layers(list(model.layers))
    graphable, model.graphable = model.graphable, False  # CUDA graphs would run the layers past their hooks
    try:
        barrier()
        rec.start()
        run(TracedTransport(transport, rec))
    finally:
        model.graphable = graphable
        for h in handles:
            h.remove()
    return rec.events


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
