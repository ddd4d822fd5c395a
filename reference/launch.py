"""torchrun entry: load a model, prefill one prompt under a scheme, time TTFT, write results JSON.

    torchrun --nproc-per-node P -m reference.launch --model PRESET_OR_FOLDER --scheme kvr \\
        --partition 30,20,14 --context 64 --dtype bf16 --warmup 2 --repeat 5 --out results.json

Also runs without torchrun as one process (world size 1). Flags, the TTFT method and the results
schema: docs/reference.md. Bad input is one line on stderr (rank 0) and exit code 2; a failed peer or
collective is one line and exit code 1. This module checks the input without importing torch (which
takes seconds), so user errors answer at once; ``reference/timed_prefill.py`` does the rest.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

from reference.schemes import SCHEME_NAMES, SCHEMES, check_supported, parse_partition
from sim.model import DTYPE_BYTES, ModelSpec
from sim.outputs import OutputError, check_file_writable, write_text

# On bad input only rank 0 prints the error; the others wait this long before exiting, since torchrun
# stops every rank as soon as one exits and rank 0 could be killed before it printed.
USER_ERROR_GRACE_S = 2.0


class LaunchError(ValueError):
    """Bad command-line input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        raise LaunchError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m reference.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="preset name, checkpoint folder, or config.json (random weights)")
    p.add_argument("--scheme", required=True, choices=SCHEME_NAMES,
                   help="single: one process prefills the whole prompt; kvr: KV-Runahead, a chain of ranks each "
                   "passing the cumulative KV-cache to the next; tsp: tensor/sequence-parallel, even chunks and "
                   "one all-gather of K and V per layer; ring: ring attention, K/V blocks passed around a ring, "
                   "partial attention merged by log-sum-exp; ring-zigzag: ring attention, rank r holding pieces r "
                   "and 2P-1-r of 2P; ulysses: DeepSpeed-Ulysses, all-to-all from sequence to head shards and "
                   "back around attention; tp: Megatron tensor parallel, 1/P of heads and MLP, two all-reduces "
                   "a layer; pipeline: layers in P stages, prompt pieces flowing through them (docs/design.md)")
    p.add_argument("--partition", default="even",
                   help="'even' (default), tokens per rank, e.g. 30,20,14, or (kvr) 'searched' (KVR-S on the "
                   "simulator) or 'predicted' (KVR-P from --table); the last two need --partition-scenario")
    p.add_argument("--partition-scenario", metavar="FILE",
                   help="scenario YAML whose hardware and cluster a searched or predicted partition is for")
    p.add_argument("--partition-cluster", metavar="NAME", help="cluster of --partition-scenario (default: its first)")
    p.add_argument("--table", metavar="FILE", help="KVR-P lookup table (python -m sim.partition build-table)")
    p.add_argument("--context", type=int, help="prompt tokens C (default: the length of --input-ids)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPE_BYTES),
                   help="weights, activations and KV-cache (default fp32; bf16 on GPUs)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    p.add_argument("--out", help="results JSON path (written by rank 0, atomically; its folder is checked "
                   "before the run)")
    p.add_argument("--input-ids", help="JSON file with the prompt as a list of token ids")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and random prompt (default 0)")
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"],
                   help="auto: nccl when every rank has its own CUDA GPU, else gloo")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda:LOCAL_RANK when every local rank has a GPU, else cpu")
    p.add_argument("--pieces", type=int, default=0, metavar="N",
                   help="pipeline: prompt pieces flowing through the stages (default 0: four a stage; at most C)")
    p.add_argument("--generate", type=int, default=0, metavar="N",
                   help="after timing, N greedy tokens on the last rank from its full cache (single, kvr, tsp)")
    p.add_argument("--layer-timings", action="store_true",
                   help="one extra untimed prefill timing every layer on every rank")
    p.add_argument("--trace", metavar="FILE", help="one extra untimed prefill recording every rank's layers, waits "
                   "and sends, written by rank 0 as a Chrome trace (its folder is checked before the run)")
    p.add_argument("--timeout", type=float, default=300.0, help="process-group timeout in seconds (default 300)")
    p.add_argument("--link", help="free-form description of the interconnect, copied to the results")
    return p


def _prompt(args: argparse.Namespace, spec: ModelSpec) -> list[int]:
    if args.input_ids is None:
        if args.context is None:
            raise LaunchError("give --context C or --input-ids FILE")
        if args.context < 1:
            raise LaunchError(f"--context {args.context} must be >= 1")
        rng = random.Random(args.seed)
        return [rng.randrange(spec.vocab_size) for _ in range(args.context)]
    try:
        with open(args.input_ids, encoding="utf-8") as f:
            ids = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LaunchError(f"--input-ids {args.input_ids}: {e}") from None
    if not (isinstance(ids, list) and ids and all(type(i) is int and 0 <= i < spec.vocab_size for i in ids)):
        raise LaunchError(f"--input-ids {args.input_ids}: need a non-empty JSON list of token ids "
                          f"in [0, {spec.vocab_size})")
    if args.context is not None and args.context != len(ids):
        raise LaunchError(f"--context {args.context} but --input-ids has {len(ids)} tokens")
    return ids


def validate(args: argparse.Namespace, world: int) -> tuple[list[int], list[int]]:
    """Everything about the input that can be checked before any process talks to another:
    returns (prompt token ids, tokens per rank)."""
    if args.warmup < 0 or args.repeat < 1 or args.generate < 0 or args.timeout <= 0 or args.pieces < 0:
        raise LaunchError("need --warmup >= 0, --repeat >= 1, --generate >= 0, --timeout > 0, --pieces >= 0")
    if args.pieces and args.scheme != "pipeline":
        raise LaunchError(f"--pieces is for scheme pipeline, not {args.scheme!r}")
    if args.generate and not SCHEMES[args.scheme].decodes:
        raise LaunchError(f"--generate needs the whole KV-cache on one rank (single, kvr, tsp); "
                          f"{args.scheme!r} spreads it over the ranks")
    if world > 1 and "MASTER_ADDR" not in os.environ:
        raise LaunchError(f"WORLD_SIZE={world} but no MASTER_ADDR: start the ranks with torchrun")
    if args.out:  # before the run: a measurement must not be lost to an unwritable path
        check_file_writable(args.out, "--out")
    if args.trace:
        check_file_writable(args.trace, "--trace")
    spec = ModelSpec.resolve(args.model)
    ids = _prompt(args, spec)
    check_supported(args.scheme, spec, context=len(ids), world_size=world)  # the simulator's checks
    text = _sim_partition(args, len(ids), world)
    return ids, parse_partition(text, args.scheme, context=len(ids), world_size=world)


def _sim_partition(args: argparse.Namespace, context: int, world: int) -> str:
    """``--partition searched|predicted`` as tokens per rank, from the simulator's code
    (``sim.partition.runtime``); any other value unchanged."""
    kind = args.partition.strip()
    if kind not in ("searched", "predicted"):
        return args.partition
    if args.scheme != "kvr":
        raise LaunchError(f"--partition {kind} is for scheme kvr; {args.scheme!r} uses the even split")
    if args.partition_scenario is None or (kind == "predicted" and args.table is None):
        need = "--partition-scenario FILE" + (" and --table FILE" if kind == "predicted" else "")
        raise LaunchError(f"--partition {kind} needs {need}")
    from sim.partition.runtime import resolve_partition

    plan = resolve_partition(kind, context, world, model=args.model, dtype=args.dtype,
                             scenario=args.partition_scenario, table=args.table, cluster=args.partition_cluster)
    return ",".join(map(str, plan.chunks))


def write_atomic(path: str, results: dict) -> None:
    """Write JSON to a temporary file next to `path`, then rename: never a half-written file."""
    write_text(path, json.dumps(results, indent=1) + "\n")


def summary(r: dict, out: str | None) -> str:
    line = (f"scheme={r['scheme']} model={r['model']['name']} P={r['world_size']} C={r['context']} "
            f"partition={','.join(map(str, r['partition']))} dtype={r['dtype']} backend={r['backend']} "
            f"ttft_median_s={r['ttft_median_s']:.6f} first_token_id={r['first_token_id']}")
    if r["generated_ids"]:
        line += f" generated={r['generated_ids']}"
    return line + (f" -> {out}" if out else "")


def main(argv: list[str] | None = None) -> int:
    env = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
    rank, world = env("RANK", 0), env("WORLD_SIZE", 1)
    local_rank, local_world = env("LOCAL_RANK", 0), env("LOCAL_WORLD_SIZE", 1)

    def fail(msg: str, code: int) -> int:
        if rank == 0 or code != 2:  # user errors are the same on every rank: say them once
            where = "" if code == 2 else f"rank {rank}: "
            print(f"reference.launch: error: {where}{msg}", file=sys.stderr, flush=True)
        elif world > 1:
            # torchrun stops every rank once one exits: let rank 0 say the error before this one ends.
            time.sleep(USER_ERROR_GRACE_S)
        return code

    def say(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    try:
        args = _parser().parse_args(argv)
        ids, chunks = validate(args, world)
    except ValueError as e:
        return fail(str(e), 2)
    from reference.timed_prefill import is_comm_failure, measure  # torch: only once the input is good

    try:
        results = measure(args, rank=rank, world=world, local_rank=local_rank, local_world=local_world,
                          ids=ids, chunks=chunks, say=say)
    except ValueError as e:  # a checkpoint that does not fit its config, a missing GPU
        return fail(str(e), 2)
    except RuntimeError as e:
        if not is_comm_failure(e):
            raise  # a bug of ours: keep the traceback
        return fail(str(e).strip().splitlines()[0], 1)
    if results is not None:
        if args.out:
            try:
                write_atomic(args.out, results)
            except OutputError as e:  # the disk filled during the run: keep the measurement on stdout
                say(summary(results, None))
                return fail(f"{e}; the measurement is the line above", 2)
        say(summary(results, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
