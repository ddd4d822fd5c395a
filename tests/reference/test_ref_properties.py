"""Properties of the parallel prefill schemes: every scheme gives, on its token rank, the same
first-token logits as one process prefilling the whole prompt, and every rank keeps exactly its slice
of that process's KV-cache (every layer, K and V; ``kept_slice``: its tokens, its K/V heads or its
layers). The last rank of the KV-Runahead chain and of TSP holds the whole cache.

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
from hypothesis import strategies as st

from reference.checkpoint import random_model
from reference.schemes import prefill, token_rank
from reference.transport import run_in_threads
from refsupport import GlooPool, run_example
from sim.model import ModelSpec
from sim.partition import even
from strategies import prefill_examples

TOL = 1e-5
NEW_SCHEMES = ["ring", "ring-zigzag", "ulysses", "tp", "pipeline"]


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


def kept_slice(task: dict, rank: int, k: np.ndarray, layer: int) -> np.ndarray | None:
    """What `rank` keeps of one layer's single-process K (or V) (B, nkv, C, hd), written from the
    schemes' definitions: kvr and tsp the tokens up to the end of its chunk (the last rank all);
    ring its chunk; ring-zigzag pieces r and 2P-1-r of 2P; ulysses and tp all tokens of the K/V
    heads its nh/P query heads read; pipeline its stage's layers (None elsewhere)."""
    spec, world, context = task["spec"], len(task["chunks"]), len(task["ids"])
    bounds = lambda split, i: (sum(split[:i]), sum(split[:i + 1]))  # noqa: E731
    scheme = task["scheme"]
    if scheme in ("kvr", "tsp"):
        return k[:, :, :bounds(task["chunks"], rank)[1]]
    if scheme == "ring":
        a, b = bounds(task["chunks"], rank)
        return k[:, :, a:b]
    if scheme == "ring-zigzag":
        split = even(context, 2 * world)
        return np.concatenate([k[:, :, slice(*bounds(split, i))] for i in (rank, 2 * world - 1 - rank)], axis=2)
    if scheme in ("ulysses", "tp"):
        nq, group = spec["num_heads"] // world, spec["num_heads"] // spec["num_kv_heads"]
        return k[:, sorted({h // group for h in range(rank * nq, (rank + 1) * nq)})]
    assert scheme == "pipeline", scheme
    start, stop = bounds(even(spec["num_layers"], world), rank)
    return k if start <= layer < stop else None


def assert_shares_of_single(task: dict, outs: list[dict]) -> None:
    """The token rank's logits are single's; every rank keeps its slice of single's K and V."""
    want = single_reference(task)
    for rank, got in enumerate(outs):
        for name in ("k", "v"):
            for layer, (g, w) in enumerate(zip(got[name], want[name], strict=True)):
                w = kept_slice(task, rank, w, layer)
                if w is None:
                    assert g is None, (rank, name, layer)
                    continue
                assert g is not None and g.shape == w.shape, (rank, name, layer, None if g is None else g.shape, w.shape)
                err = np.abs(g - w).max()
                assert err <= TOL, f"rank {rank}: {name} of layer {layer} differs by {err}"
    err = np.abs(outs[token_rank(task["scheme"], len(outs))]["logits"] - want["logits"]).max()
    assert err <= TOL, f"first-token logits differ by {err}"


# (scheme, examples over gloo, examples in threads, least world size): kvr and tsp from one process up;
# the other schemes on 2-4 ranks, fewer examples (tests/reference stays within minutes on 2 cores).
CASES = [("kvr", 60, 100, 1), ("tsp", 60, 100, 1), *((s, 20, 50, 2) for s in NEW_SCHEMES)]


@pytest.mark.parametrize("scheme, gloo_examples, thread_examples, min_world", CASES)
def test_scheme_matches_single_over_gloo(pool, scheme, gloo_examples, thread_examples, min_world):
    @settings(max_examples=gloo_examples)
    @given(prefill_examples(scheme, min_world=min_world))
    def check(task):
        assert_shares_of_single(task, pool.run_all(task))

    check()


@pytest.fixture
def one_thread_per_rank():
    """Ranks are threads here: one torch thread each, so they do not oversubscribe the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("scheme, gloo_examples, thread_examples, min_world", CASES)
def test_scheme_matches_single_in_threads(scheme, gloo_examples, thread_examples, min_world, one_thread_per_rank):
    @settings(max_examples=thread_examples)
    @given(prefill_examples(scheme, min_world=min_world))
    def check(task):
        assert_shares_of_single(task, run_in_threads(len(task["chunks"]), lambda t: run_example(task, t)))

    check()


@pytest.mark.parametrize("scheme, name, world, message", [
    ("ulysses", "tiny-llama", 3, "scheme 'ulysses' cannot run here: 4 query heads are not divisible by 3 GPUs"),
    ("tp", "tiny-falcon", 3, "scheme 'tp' cannot run here: 4 query heads are not divisible by 3 GPUs"),
    ("pipeline", "tiny-llama", 3, "scheme 'pipeline' cannot run here: 2 layers cannot fill 3 stages"),
])
def test_unsupported_shapes_fail_before_any_message(scheme, name, world, message):
    """Every rank raises the same one-line error before it sends (no rank is left waiting)."""
    spec = ModelSpec.preset(name)
    task = {"spec": spec.to_dict(), "seed": 0, "scheme": scheme, "chunks": [4] * world, "ids": list(range(12))}
    with pytest.raises(ValueError, match=f"^{message}$"):
        run_in_threads(world, lambda t: run_example(task, t), timeout_s=10)


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


@settings(max_examples=25, deadline=None)
@given(pieces=st.lists(st.integers(1, 7), min_size=1, max_size=5), past=st.integers(0, 6), spare=st.integers(0, 3))
def test_a_resident_cache_holds_what_concatenation_would_and_refuses_what_does_not_fit(pieces, past, spare):
    """``ResidentKVCache``: K and V appended piece by piece after a preset past equal their
    concatenation (the copying cache's), the tokens held are one contiguous prefix of the buffer, and an
    update past the buffer's capacity is a named error."""
    from reference.kvcache import ResidentKVCache, cat_tokens

    g = torch.Generator().manual_seed(len(pieces) * 31 + past)
    total = past + sum(pieces)
    ks = [torch.randn(1, 2, t, 4, generator=g) for t in [past, *pieces]]
    vs = [torch.randn(1, 2, t, 4, generator=g) for t in [past, *pieces]]
    buf = torch.zeros(total + spare, 2, 1, 2, 4)
    buf[:past, 0], buf[:past, 1] = ks[0].permute(2, 0, 1, 3), vs[0].permute(2, 0, 1, 3)
    cache = ResidentKVCache(1, past=past, buffers=[buf])
    for i in range(1, len(ks)):
        k, v = cache.update(0, ks[i], vs[i])
        want_k, want_v = (cat_tokens([p for p in parts[:i + 1] if p.shape[-2]]) for parts in (ks, vs))
        assert torch.equal(k, want_k) and torch.equal(v, want_v)
    held = cache.held(0)
    assert held.shape[0] == total and held.is_contiguous() and held.data_ptr() == buf.data_ptr()
    with pytest.raises(ValueError, match=f"cannot take {spare + 1} more tokens"):
        cache.update(0, torch.zeros(1, 2, spare + 1, 4), torch.zeros(1, 2, spare + 1, 4))
