"""GPU tests: the CUDA paths that CI (no GPU) cannot run. ``pytest -m gpu`` on a machine with CUDA.

- ``chunk_attention`` (cuDNN with the log-sum-exp merge, or flash/SDPA) against an fp32 reference, for
  MHA, GQA and MQA, square and chunk-with-past shapes, and that the cuDNN path really is taken;
- the torch.compile-fused norm, rotary and SiLU*up against their eager code on CUDA tensors;
- CUDA graphs of the layers' halves (``reference.cuda_graphs``) against the eager forward: the same
  logits and KV-cache, no cache aliasing the graphs' buffers, recapture when weights move, the shape
  cache's bound, and kvr/tsp with some ranks graphed and some eager;
- the KV-Runahead chain and TSP on CUDA (ranks are threads of this process on one GPU, joined by the
  in-process transport) against a single-process prefill on CUDA: fp32 to 1e-4, and bf16 with fused
  GEMMs and compiled kernels to a bf16 tolerance;
- our models against transformers on CUDA in bf16;
- the CUDA paths of ``reference.measure.bench``, ``.profile`` and ``.replay`` end to end on a
  tiny model.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _reference_attention(q, k, v):
    """fp32 attention of the last c positions to all keys, causal at the bottom right, K/V expanded."""
    c, n = q.shape[-2], k.shape[-2]
    rep = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(rep, dim=1) for t in (k, v))
    s = (q.float() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    mask = torch.ones(c, n, dtype=torch.bool, device=q.device).tril(n - c)
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("heads", [(8, 8), (8, 2), (8, 1)])  # MHA, GQA, MQA
@pytest.mark.parametrize("c, n", [(128, 128), (64, 320), (1, 97), (200, 1000), (333, 333), (600, 1500),
                                  (1024, 1536)])
def test_chunk_attention_matches_fp32_reference(dtype, heads, c, n):
    import reference.chunk_attention as ca

    nh, nkv = heads
    g = torch.Generator(device="cuda").manual_seed(c * 1000 + n)
    q = torch.randn(1, nh, c, 128, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(1, nkv, n, 128, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(1, nkv, n, 128, device="cuda", dtype=dtype, generator=g)
    got = ca.chunk_attention(q, k, v)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), _reference_attention(q, k, v), atol=2e-2, rtol=2e-2)


def test_chunk_attention_takes_the_cudnn_path_in_bf16(monkeypatch):
    """The speed claim rests on cuDNN: a refused shape would fall back silently, so check it is used:
    one call without a past, two (the split) for a chunk of more than FLASH_MAX_CHUNK with a past, none
    (one flash call) for a smaller chunk with a past."""
    import reference.chunk_attention as ca

    if not torch.backends.cudnn.is_available():
        pytest.skip("no cuDNN")
    calls = []
    real = ca._cudnn
    monkeypatch.setattr(ca, "_cudnn", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    small, big = ca.FLASH_MAX_CHUNK, ca.FLASH_MAX_CHUNK + 128
    for c, n, expected in [(big, big, 1), (big, big + 512, 2), (small, small + 512, 0)]:
        calls.clear()
        q = torch.randn(1, 32, c, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 1, n, 128, device="cuda", dtype=torch.bfloat16)
        ca.chunk_attention(q, k, k)
        assert len(calls) == expected, (c, n, len(calls))
    assert ca._use_cudnn(q), "cuDNN attention was refused for a head dim of 128 in bf16"


def test_compiled_elementwise_kernels_match_eager_on_cuda():
    from reference.layers import rms_norm, rotary_cos_sin, rotate_qk, silu_mul

    torch.manual_seed(0)
    for t in (17, 1024):
        x = torch.randn(1, t, 256, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(256, device="cuda", dtype=torch.bfloat16)
        qkv = torch.randn(1, t, 6, 64, device="cuda", dtype=torch.bfloat16)
        q, k = qkv[:, :, :4], qkv[:, :, 4:5]
        cos, sin = rotary_cos_sin(9, t, head_dim=64, theta=10000.0, dtype=torch.bfloat16,
                                  device=torch.device("cuda"))
        for fn, args in ((rms_norm, (x, w, 1e-5)), (silu_mul, (x, x.flip(-1))), (rotate_qk, (q, k, cos, sin))):
            torch.testing.assert_close(fn(*args), fn.__wrapped__(*args), atol=2e-2, rtol=2e-2)


def _same_as_single(task: dict, tol: float) -> None:
    from reference.transport import run_in_threads
    from refsupport import run_example

    # The single-process reference first: it also compiles the fused kernels before threads use them.
    want = run_example({**task, "scheme": "single", "chunks": [len(task["ids"])], "fuse": False}, None)
    got = run_in_threads(len(task["chunks"]), lambda t: run_example(task, t), timeout_s=120)[-1]
    for name in ("k", "v"):
        for layer, (g, w) in enumerate(zip(got[name], want[name], strict=True)):
            assert g.shape == w.shape
            scale = max(1.0, float(np.abs(w).max()))
            assert np.abs(g - w).max() <= tol * scale, f"{name} of layer {layer}"
    scale = max(1.0, float(np.abs(want["logits"]).max()))
    assert np.abs(got["logits"] - want["logits"]).max() <= tol * scale, "first-token logits"


def _prefill_both_ways(model, ids, monkeypatch):
    """(eager, graphed) single-process prefills of ids."""
    from reference.schemes.single import prefill

    monkeypatch.setenv("KVR_CUDA_GRAPHS", "0")
    eager = prefill(model, ids)
    monkeypatch.delenv("KVR_CUDA_GRAPHS")
    return eager, prefill(model, ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["tiny-llama-gqa", "tiny-falcon", "tiny-falcon-40b", "tiny-falcon-seq"])
def test_cuda_graphs_match_the_eager_forward(name, dtype, monkeypatch):
    from reference.checkpoint import random_model
    from sim.model import ModelSpec

    torch.backends.cuda.matmul.allow_tf32 = False
    if name == "tiny-falcon-seq":  # the sequential Falcon layout: attention, then the MLP
        spec = ModelSpec.preset("tiny-falcon").replace(parallel_attn=False, num_ln_per_layer=2)
    else:
        spec = ModelSpec.preset(name)
    model = random_model(spec.replace(head_dim=64), 2, "cuda", dtype).fuse_()
    ids = torch.randint(0, spec.vocab_size, (1, 200), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        eager, graphed = _prefill_both_ways(model, ids, monkeypatch)
    assert len(model.__dict__.get("_cuda_graphs", {})) == 1, "the graphed prefill did not use CUDA graphs"
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(graphed.logits.float(), eager.logits.float(), atol=tol, rtol=tol)
    for g, e in zip(graphed.cache.k + graphed.cache.v, eager.cache.k + eager.cache.v, strict=True):
        torch.testing.assert_close(g.float(), e.float(), atol=tol, rtol=tol)


def test_cuda_graph_caches_own_their_memory_and_weights_are_tracked():
    from reference.checkpoint import random_model
    from reference.cuda_graphs import KEEP
    from reference.schemes.single import prefill
    from sim.model import ModelSpec

    spec = ModelSpec.preset("tiny-llama-gqa").replace(head_dim=64)
    model = random_model(spec, 0, "cuda", torch.bfloat16)
    gen = torch.Generator("cuda").manual_seed(1)
    a, b = (torch.randint(0, spec.vocab_size, (1, 96), device="cuda", generator=gen) for _ in range(2))
    with torch.no_grad():
        first = prefill(model, a)
        kept = [t.clone() for t in first.cache.k + first.cache.v]
        prefill(model, b)  # replays the same graphs with other tokens
        for now, then in zip(first.cache.k + first.cache.v, kept, strict=True):
            assert torch.equal(now, then), "a second prefill overwrote the first one's KV-cache"
        unfused = prefill(model, a).logits
        model.fuse_()  # new weight tensors: the graphs must be captured again
        torch.testing.assert_close(prefill(model, a).logits.float(), unfused.float(), atol=2e-2, rtol=2e-2)
        for t in (16, 32, 48, 64):
            prefill(model, a[:, :t])
    assert len(model.__dict__["_cuda_graphs"]) == KEEP


@pytest.mark.parametrize("scheme, chunks", [("kvr", [300, 150, 61]), ("tsp", [171, 170, 170])])
def test_schemes_with_some_ranks_graphed_match_single(scheme, chunks, monkeypatch):
    """KVR_CUDA_GRAPHS=160: ranks with more tokens run eagerly, the others as graphs, in one chain."""
    from sim.model import ModelSpec

    monkeypatch.setenv("KVR_CUDA_GRAPHS", "160")
    spec = ModelSpec.preset("tiny-llama-gqa").replace(head_dim=64)
    ids = torch.randint(0, spec.vocab_size, (sum(chunks),), generator=torch.Generator().manual_seed(4)).tolist()
    _same_as_single({"spec": spec.to_dict(), "seed": 3, "scheme": scheme, "chunks": chunks, "ids": ids,
                     "fuse": True, "device": "cuda", "dtype": "bfloat16"}, 5e-2)


@pytest.mark.parametrize("scheme", ["kvr", "tsp"])
def test_scheme_matches_single_on_cuda_fp32(scheme):
    from strategies import prefill_examples

    torch.backends.cuda.matmul.allow_tf32 = False

    @settings(max_examples=25)
    @given(prefill_examples(scheme))
    def check(task):
        _same_as_single({**task, "device": "cuda", "dtype": "float32"}, 1e-4)

    check()


@pytest.mark.parametrize("scheme, chunks", [("kvr", [300, 150, 61]), ("tsp", [171, 170, 170]),
                                            ("kvr", [64, 64, 64, 64])])
@pytest.mark.parametrize("name", ["tiny-llama-gqa", "tiny-falcon", "tiny-falcon-40b"])
def test_scheme_matches_single_on_cuda_bf16_fused(scheme, chunks, name):
    """The timed configuration: bf16, fused GEMMs, cuDNN attention with a past, compiled kernels."""
    from sim.model import ModelSpec

    spec = ModelSpec.preset(name).replace(head_dim=64)
    ids = torch.randint(0, spec.vocab_size, (sum(chunks),), generator=torch.Generator().manual_seed(1)).tolist()
    _same_as_single({"spec": spec.to_dict(), "seed": 3, "scheme": scheme, "chunks": chunks, "ids": ids,
                     "fuse": True, "device": "cuda", "dtype": "bfloat16"}, 5e-2)


@pytest.mark.parametrize("name", ["tiny-llama-gqa", "tiny-falcon", "tiny-falcon-40b"])
def test_models_match_transformers_on_cuda_bf16(tmp_path, name):
    """A transformers model saved with save_pretrained, loaded by our checkpoint loader onto the GPU in
    bf16 and fused: the same last-position logits as transformers' own bf16 forward on the GPU."""
    transformers = pytest.importorskip("transformers")
    from reference.measure.bench import hf_config
    from reference.checkpoint import load_checkpoint
    from reference.schemes.single import prefill
    from sim.model import ModelSpec

    spec = ModelSpec.preset(name).replace(head_dim=64)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(spec, torch.float32))
    hf.save_pretrained(tmp_path)
    hf = hf.to("cuda", torch.bfloat16).eval()
    ours = load_checkpoint(str(tmp_path), None, "cuda", torch.bfloat16).fuse_()
    ids = torch.randint(0, spec.vocab_size, (1, 300), device="cuda")
    with torch.no_grad():
        want = hf(ids, logits_to_keep=1).logits[0, -1].float()
        got = prefill(ours, ids).logits[0].float()
    assert (got - want).abs().max() <= 5e-2 * max(1.0, want.abs().max().item())


def test_bench_profile_and_replay_run_on_cuda(tmp_path):
    from reference.measure.bench import main as bench_main
    from reference.measure.profile import main as profile_main
    from reference.measure.replay import main as replay_main

    out = tmp_path / "bench.json"
    assert bench_main(["--models", "tiny-llama-gqa,tiny-falcon", "--dtypes", "bf16", "--contexts", "256,512",
                       "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["prefill"]
    assert {(r["impl"], r["model"], r["context"]) for r in rows} == {
        (i, m, c) for i in ("ours", "transformers") for m in ("tiny-llama-gqa", "tiny-falcon") for c in (256, 512)}
    assert all(r["ttft_s"] > 0 for r in rows)

    prof = tmp_path / "profile.json"
    assert profile_main(["--model", "tiny-llama", "--device", "cuda", "--dtype", "bf16", "--grid", "small",
                         "--repeat", "2", "--out", str(prof)]) == 0
    doc = json.loads(prof.read_text())
    assert doc["timer"] == "cuda-events" and doc["device_type"] == "cuda"
    assert all(e["median_s"] > 0 for comp in doc["components"].values() for e in comp)

    scenario = tmp_path / "s.yaml"
    scenario.write_text(f"""\
name: gpu-replay
models: [tiny-llama]
hardware: {{profile: {prof}, dtype: bf16}}
clusters: [{{name: u, kind: uniform, gpus: 2, bandwidth_gb_per_s: 100}}]
workload: {{contexts: [64], gpus: [2], schemes: [tsp, kvr-e]}}
""")
    rep = tmp_path / "replay.json"
    assert replay_main([str(scenario), "--device", "cuda", "--out", str(rep), "--repeat", "2"]) == 0
    entries = json.loads(rep.read_text())["replays"]
    assert [(e["scheme"], e["rank"]) for e in entries] == [("tsp", 0), ("tsp", 1), ("kvr-e", 0), ("kvr-e", 1)]
    assert all(e["median_s"] > 0 for e in entries)


@pytest.mark.parametrize("scheme", ["ring", "ring-zigzag", "ulysses", "tp", "pipeline"])
def test_contender_matches_single_on_cuda_fp32(scheme):
    """The contenders on CUDA (ranks as threads on one GPU): every rank's share of single's K/V and
    the token rank's logits, fp32 without TF32."""
    from reference.schemes import token_rank
    from reference.transport import run_in_threads
    from refsupport import run_example
    from strategies import prefill_examples
    from test_ref_properties import kept_slice

    torch.backends.cuda.matmul.allow_tf32 = False

    @settings(max_examples=15)
    @given(prefill_examples(scheme, min_world=2))
    def check(task):
        task = {**task, "device": "cuda", "dtype": "float32"}
        alone = {k: v for k, v in task.items() if k != "pieces"}  # pipeline's piece count is not single's
        want = run_example({**alone, "scheme": "single", "chunks": [len(task["ids"])], "fuse": False}, None)
        outs = run_in_threads(len(task["chunks"]), lambda t: run_example(task, t), timeout_s=120)
        for rank, got in enumerate(outs):
            for name in ("k", "v"):
                for layer, (g, w) in enumerate(zip(got[name], want[name], strict=True)):
                    w = kept_slice(task, rank, w, layer)
                    if w is None:
                        assert g is None
                        continue
                    assert g.shape == w.shape, (rank, name, layer)
                    assert np.abs(g - w).max() <= 1e-4 * max(1.0, float(np.abs(w).max())), (rank, name, layer)
        logits = outs[token_rank(scheme, len(outs))]["logits"]
        assert np.abs(logits - want["logits"]).max() <= 1e-4 * max(1.0, float(np.abs(want["logits"]).max()))

    check()
