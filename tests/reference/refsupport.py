"""Test support for tests/reference: a persistent pool of gloo worker processes that serves prefill
examples (``from refsupport import GlooPool, run_example``).

Starting processes and a process group costs seconds, so the property tests start one world of 4
CPU processes once and send it many examples. Subgroups for world sizes 1..4 are made once at start
(every rank must take part in creating each). An example is a plain dict; the ranks of its world
rebuild the model from (spec, seed), run the scheme over real torch.distributed gloo, and every
rank returns its logits and KV-cache. Every wait has a timeout, so a failing or hung worker fails the
test instead of hanging it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
import tempfile
import traceback
from datetime import timedelta
from typing import Any


def run_example(task: dict[str, Any], transport) -> dict[str, Any]:
    """Rebuild the model, prefill `task["ids"]` under `task["scheme"]` on this rank; decode
    `task["generate"]` tokens on the last rank. Returns fp32 numpy arrays (logits, k and v per layer;
    None where the rank has none). Optional keys: ``device`` (default "cpu"), ``dtype`` (a torch
    dtype name, default "float32"), ``fuse`` (run with fused GEMMs), ``pieces`` (pipeline)."""
    import torch

    from reference.checkpoint import random_model
    from reference.decode import greedy
    from reference.schemes import prefill
    from sim.model import ModelSpec

    spec = ModelSpec.from_dict(task["spec"])
    device = torch.device(task.get("device", "cpu"))
    dtype = getattr(torch, task.get("dtype", "float32"))
    from reference.cuda_graphs import CAPTURE_LOCK
    with CAPTURE_LOCK:  # ranks may be threads, and another may be capturing CUDA graphs
        model = random_model(spec, task["seed"], device, dtype)
    if task.get("fuse"):  # the fused-GEMM layout that launch times
        model.fuse_()
    ids = torch.tensor([task["ids"]], device=device)
    options = {"pieces": task["pieces"]} if "pieces" in task else {}
    res = prefill(task["scheme"], model, ids, task["chunks"], transport, **options)

    def host(t):
        return None if t is None else t.float().cpu().numpy()
    out = {"logits": host(res.logits), "k": [host(k) for k in res.cache.k], "v": [host(v) for v in res.cache.v]}
    if task.get("generate"):
        out["generated"] = greedy(model, res.logits, res.cache, task["generate"])
    return out


def _worker(rank: int, world: int, store_path: str, tasks: mp.Queue, results: mp.Queue,
            timeout_s: float) -> None:
    import torch
    import torch.distributed as dist

    from reference.transport import DistTransport

    torch.set_num_threads(1)  # 4 ranks on a 2-core CI machine must not thrash
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_s))
    transports = {n: DistTransport(dist.new_group(list(range(n)))) for n in range(1, world)}
    transports[world] = DistTransport()
    try:
        while (task := tasks.get()) is not None:
            n = len(task["chunks"])
            try:
                out = run_example(task, transports[n])
                results.put((rank, "ok", out))
            except Exception:  # noqa: BLE001 - reported to the test, which fails
                results.put((rank, "error", traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class GlooPool:
    """`world` CPU processes in one gloo process group, serving examples until ``close()``."""

    def __init__(self, world: int = 4, timeout_s: float = 30.0):
        # The test waits longer than the gloo timeout, so that workers stuck in a collective report
        # their own error first.
        self.world, self.timeout_s = world, timeout_s + 15.0
        ctx = mp.get_context("spawn")  # no fork of a process that already runs torch threads
        self._dir = tempfile.mkdtemp(prefix="gloo-pool-")
        store = os.path.join(self._dir, "store")
        self.tasks = [ctx.Queue() for _ in range(world)]
        self.results = ctx.Queue()
        self.procs = [ctx.Process(target=_worker, args=(r, world, store, self.tasks[r], self.results, timeout_s),
                                  daemon=True) for r in range(world)]
        for p in self.procs:
            p.start()
        self.broken: str | None = None

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Serve one example on ranks 0 .. len(task["chunks"]) - 1; the last rank's output."""
        return self.run_all(task)[-1]

    def run_all(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        """Serve one example on ranks 0 .. len(task["chunks"]) - 1; every rank's output, rank order."""
        if self.broken:
            raise RuntimeError(f"gloo pool is broken: {self.broken}")
        n = len(task["chunks"])
        assert 1 <= n <= self.world, n
        for r in range(n):
            self.tasks[r].put(task)
        out, errors = [None] * n, []
        for _ in range(n):
            try:
                rank, status, payload = self.results.get(timeout=self.timeout_s)
            except queue.Empty:
                dead = [r for r, p in enumerate(self.procs) if not p.is_alive()]
                self.broken = f"no answer within {self.timeout_s} s (dead ranks: {dead})"
                raise TimeoutError(self.broken) from None
            if status == "error":
                errors.append(f"rank {rank}:\n{payload}")
            else:
                out[rank] = payload
        if errors:
            if n > 1:  # unmatched messages may be left in flight: later examples cannot be trusted
                self.broken = "an earlier example failed"
            raise RuntimeError("worker failed:\n" + "\n".join(errors))
        return out

    def close(self) -> None:
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)
