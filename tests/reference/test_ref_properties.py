"""Properties of the parallel prefill schemes: the KV-Runahead chain and TSP give, on the rank of the
last chunk, the same KV-cache (every layer, K and V) and the same first-token logits as one process
prefilling the whole prompt.

Tolerance: max absolute difference <= 1e-5 in fp32 (observed ~3e-7: only the floating-point order of
the chunked matrix products differs).

Two paths run the same scheme code (refsupport.run_example): real torch.distributed gloo
processes (a pool of 4 started once for this module, subgroups for world sizes 1..3), and threads of
this process joined by an in-process transport, which affords more examples. The parallel side runs
with or without fused GEMMs (``fuse_()``, as the launcher times it); the single side is unfused.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from reference.checkpoint import random_model
from reference.schemes import prefill
from reference.transport import run_in_threads
from refsupport import GlooPool, run_example
from sim.model import ModelSpec
from strategies import prefill_examples

TOL = 1e-5


@pytest.fixture(scope="module")
def pool():
    p = GlooPool(world=4, timeout_s=30.0)
    yield p
    p.close()


def single_reference(task: dict) -> dict:
    spec = ModelSpec.from_dict(task["spec"])
    res = prefill("single", random_model(spec, task["seed"]), torch.tensor([task["ids"]]), [len(task["ids"])], None)
    return {"logits": res.logits.numpy(), "k": [k.numpy() for k in res.cache.k],
            "v": [v.numpy() for v in res.cache.v]}


def assert_same_as_single(task: dict, got: dict) -> None:
    want = single_reference(task)
    assert len(got["k"]) == len(want["k"]) == task["spec"]["num_layers"]
    for name in ("k", "v"):
        for layer, (g, w) in enumerate(zip(got[name], want[name])):
            assert g.shape == w.shape, (name, layer, g.shape, w.shape)
            err = np.abs(g - w).max()
            assert err <= TOL, f"{name} of layer {layer} differs by {err}"
    err = np.abs(got["logits"] - want["logits"]).max()
    assert err <= TOL, f"first-token logits differ by {err}"


@pytest.mark.parametrize("scheme", ["kvr", "tsp"])
def test_scheme_matches_single_over_gloo(pool, scheme):
    @settings(max_examples=60)
    @given(prefill_examples(scheme))
    def check(task):
        assert_same_as_single(task, pool.run(task))

    check()


@pytest.fixture
def one_thread_per_rank():
    """Ranks are threads here: one torch thread each, so they do not oversubscribe the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("scheme", ["kvr", "tsp"])
def test_scheme_matches_single_in_threads(scheme, one_thread_per_rank):
    @settings(max_examples=100)
    @given(prefill_examples(scheme))
    def check(task):
        outs = run_in_threads(len(task["chunks"]), lambda t: run_example(task, t))
        assert_same_as_single(task, outs[-1])

    check()


def test_in_process_rank_failure_is_raised_at_once():
    def rank_fn(t):
        if t.rank == 1:
            raise ValueError("rank 1 fails")
        t.recv(torch.empty(3), 1)  # would wait for rank 1 until the timeout

    with pytest.raises(ValueError, match="rank 1 fails"):
        run_in_threads(3, rank_fn, timeout_s=30)


@pytest.mark.parametrize("name, chunks", [("tiny-llama-gqa", [9, 5, 3, 2]), ("tiny-falcon", [3, 8, 8]),
                                           ("tiny-falcon-40b", [10, 9])])
def test_greedy_generation_after_kvr_equals_single(pool, name, chunks):
    """The last rank of a KV-Runahead chain decodes from its cache exactly as one process does."""
    spec = ModelSpec.preset(name)
    ids = torch.randint(0, spec.vocab_size, (sum(chunks),), generator=torch.Generator().manual_seed(7)).tolist()
    task = {"spec": spec.to_dict(), "seed": 5, "scheme": "kvr", "chunks": chunks, "ids": ids, "generate": 12,
            "fuse": True}
    want = run_example({**task, "scheme": "single", "chunks": [sum(chunks)], "fuse": False}, None)["generated"]
    assert pool.run(task)["generated"] == want
    assert len(want) == 12


def test_pool_reports_a_failing_worker(pool):
    """A worker's exception reaches the test as an error at once (runs last: it retires the pool
    for worlds > 1, whose peers could be left with unmatched messages)."""
    task = {"spec": ModelSpec.preset("tiny-llama").to_dict(), "seed": 0, "scheme": "kvr",
            "chunks": [4], "ids": [1, 2, 3, 999]}  # token 999 is outside the vocabulary
    with pytest.raises(RuntimeError, match="worker failed"):
        pool.run(task)
