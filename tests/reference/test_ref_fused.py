"""The CUDA-only fused (torch.compile) paths trace as one graph and compute what the eager code does.

On GPUs ``reference.cuda_fused`` compiles these functions; CI has no GPU, so this compiles the
same functions for the CPU, which proves they trace with ``fullgraph=True`` and dynamic shapes, and
compares them with the eager result.
"""
import torch

from reference.layers import apply_rotary, rms_norm, rotary_cos_sin, silu_mul


def test_fused_functions_trace_and_match_eager():
    torch.manual_seed(0)
    for t in (7, 33):  # two lengths: the dynamic graph serves both
        x = torch.randn(1, t, 64)
        w = torch.randn(64)
        q = torch.randn(1, 4, t, 16)
        cos, sin = rotary_cos_sin(5, t, head_dim=16, theta=10000.0, dtype=torch.float32,
                                  device=torch.device("cpu"))
        for fn, args in ((rms_norm, (x, w, 1e-5)), (silu_mul, (x, x.flip(-1))),
                         (apply_rotary, (q, cos, sin))):
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
