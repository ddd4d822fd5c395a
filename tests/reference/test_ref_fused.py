"""The CUDA-only fused (torch.compile) paths trace as one graph and compute what the eager code does.

On GPUs ``reference.cuda_fused`` compiles these functions; CI has no GPU, so this compiles the
same functions for the CPU, which proves they trace with ``fullgraph=True`` and dynamic shapes, and
compares them with the eager result.
"""
import torch

from reference.layers import rms_norm, rotary_cos_sin, rotate_qk, silu_mul


def test_fused_functions_trace_and_match_eager():
    torch.manual_seed(0)
    for t in (7, 33):  # two lengths: the dynamic graph serves both
        x = torch.randn(1, t, 64)
        w = torch.randn(64)
        qkv = torch.randn(1, t, 4 + 2 * 2, 16)  # Llama-like: 4 query heads, 2 K/V heads, token-major
        q, k = qkv[:, :, :4], qkv[:, :, 4:6]
        cos, sin = rotary_cos_sin(5, t, head_dim=16, theta=10000.0, dtype=torch.float32,
                                  device=torch.device("cpu"))
        for fn, args in ((rms_norm, (x, w, 1e-5)), (silu_mul, (x, x.flip(-1))),
                         (rotate_qk, (q, k, cos, sin))):
            eager = fn.__wrapped__
            compiled = torch.compile(eager, dynamic=True, fullgraph=True)
            torch.testing.assert_close(compiled(*args), eager(*args), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(fn(*args), eager(*args), rtol=0, atol=0)  # CPU: eager path


def test_attention_merge_traces_and_matches_attention_over_all_keys():
    """The log-sum-exp merge (compiled on CUDA) of two partial attentions equals attention over the
    union of their keys."""
    import math

    from reference.chunk_attention import merge_partials

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 2, 5, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)

    def part(ks, vs):
        s = q @ ks.transpose(-1, -2) / math.sqrt(8)
        return torch.softmax(s, -1) @ vs, torch.logsumexp(s, -1)
    (o1, l1), (o2, l2) = part(k[:, :, :4], v[:, :, :4]), part(k[:, :, 4:], v[:, :, 4:])
    want = part(k, v)[0]
    compiled = torch.compile(merge_partials.__wrapped__, dynamic=True, fullgraph=True)
    torch.testing.assert_close(compiled(o1, l1, o2, l2), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merge_partials(o1, l1, o2, l2), want, rtol=1e-5, atol=1e-6)


def test_each_variant_compiles_its_own_copy_so_none_hits_the_recompile_limit():
    """``cuda_fused`` compiles one copy of a function (a code object of its own) per variant: eps and
    dtypes that would each recompile one code object stay within a recompile limit of 1 (as they do
    under torch.compile's default limit however many models a process runs), while a single compiled
    object given a second dtype hits it. Compiled here for the CPU with the eager backend (the limit is
    torch.compile's, whichever backend)."""
    import pytest
    import torch._dynamo

    from reference.cuda_fused import _fresh_copy, _variant_key

    fn = rms_norm.__wrapped__
    x, w = torch.randn(1, 9, 32), torch.randn(32)
    variants = [(x, w, 1e-5), (x, w, 1e-6), (x.double(), w.double(), 1e-5), (x.bfloat16(), w.bfloat16(), 1e-5)]
    assert len({_variant_key(v) for v in variants}) == len(variants)
    assert _variant_key(variants[0]) == _variant_key((torch.randn(1, 5, 32), w, 1e-5))  # sizes do not count
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):
        for args in variants:
            copy = _fresh_copy(fn)
            assert copy.__code__ is not fn.__code__
            out = torch.compile(copy, backend="eager", dynamic=True, fullgraph=True)(*args)
            torch.testing.assert_close(out, fn(*args), rtol=0, atol=0)
        shared = torch.compile(fn, backend="eager", dynamic=True, fullgraph=True)
        shared(*variants[0])
        shared(*variants[1])  # another eps (a float: not a recompile under dynamic=True in recent torch)
        with pytest.raises(Exception, match="(?i)recompil|fullgraph"):
            shared(*variants[2])  # another dtype: a recompile, past the limit
    torch._dynamo.reset()


def test_rotary_on_falcon_and_llama_views_of_many_shapes_never_fails_at_the_recompile_limit():
    """The GPU tests once warned ``torch.compile of apply_rotary failed (FailOnRecompileLimitHit)``
(``rotate_qk``'s forerunner):
    Falcon's Q (a reshaped slice) and K (a strided slice) of one and several K/V heads, and chunks of
    one token, specialise the graph on size-1 dimensions and stride relations. ``Variants`` keeps them
    apart and replaces a copy that runs out of recompilations: under a recompile limit of 1 every call
    compiles and agrees with the eager function. (CPU, eager backend: the limit is torch.compile's.)"""
    import pytest
    import torch._dynamo

    from reference.cuda_fused import Variants
    from reference.layers import rotate_qk

    fn = rotate_qk.__wrapped__
    variants = Variants(fn, backend="eager")
    torch._dynamo.reset()
    calls = 0
    with torch._dynamo.config.patch(recompile_limit=1):
        for nh, nkv in ((4, 1), (4, 2), (8, 8)):
            for t in (1, 2, 5, 16, 17):
                g, hd = nh // nkv, 8
                qkv = torch.randn(1, t, nkv, g + 2, hd)
                cos, sin = torch.randn(t, hd), torch.randn(t, hd)
                flat = qkv.view(1, t, nkv * (g + 2), hd)  # Llama's layout: all queries, then keys
                for q, k in ((qkv[:, :, :, :g], qkv[:, :, :, g]), (flat[:, :, :nh], flat[:, :, nh:nh + nkv])):
                    torch.testing.assert_close(variants(q, k, cos, sin), fn(q, k, cos, sin), rtol=0, atol=0)
                    calls += 1
        shared = torch.compile(fn, backend="eager", dynamic=True, fullgraph=True)
        with pytest.raises(Exception, match="(?i)recompil|fullgraph"):  # the negative control
            for t in (1, 2):
                qkv = torch.randn(1, t, 1, 6, 8)
                flat = qkv.view(1, t, 6, 8)
                shared(qkv[:, :, :, :4], qkv[:, :, :, 4], torch.randn(t, 8), torch.randn(t, 8))
                shared(flat[:, :, :4], flat[:, :, 4:5], torch.randn(t, 8), torch.randn(t, 8))
    torch._dynamo.reset()
    assert calls == 30


def test_a_compiled_call_waits_while_another_thread_holds_the_call_lock():
    """Ranks run as threads on one GPU: while one thread compiles (dynamo traces with FX, a
    process-wide flag) another thread's call of a compiled function fails. ``Variants`` calls hold one
    lock, so a call from a second thread waits for it (the GPU tests once warned ``torch.compile of
    rms_norm failed (... FX to symbolically trace a dynamo-optimized function)``)."""
    import threading

    import torch._dynamo

    from reference.cuda_fused import _CALL_LOCK, Variants

    variants = Variants(rms_norm.__wrapped__, backend="eager")
    x, w = torch.randn(1, 4, 8), torch.randn(8)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (variants(x, w, 1e-5), done.set()))
    torch._dynamo.reset()
    with _CALL_LOCK:
        worker.start()
        assert not done.wait(0.5)  # blocked on the lock this thread holds
    assert done.wait(60)
    worker.join()
    torch._dynamo.reset()
