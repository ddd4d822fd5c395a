"""The cost model alone (pure functions), and the schemes' totals against it."""
import pytest

from sim.cluster import ClusterSpec
from sim.cost import causal_pairs
from sim.cost.analytic import AnalyticCost, gemm_s, memory_op_s, roofline_s
from sim.hardware import GPU_PRESETS, GpuSpec, HardwareError
from sim.model import ModelSpec
from sim.partition import PartitionError, even, from_fractions
from sim.job import BUILTIN, SchemeSpec
from sim.job import Job
from sim.simulate import simulate

A100 = GpuSpec.preset("a100-80gb-sxm")


def test_gpu_presets():
    assert {n: (g.peak_flops_per_s, g.hbm_bytes_per_s) for n, g in GPU_PRESETS.items()} == {
        "a100-80gb-sxm": (312e12, 2.039e12), "h100-sxm": (989e12, 3.35e12), "h200": (989e12, 4.8e12)}
    with pytest.raises(HardwareError, match="matmul_efficiency=1.5 must be in"):
        A100.replace(matmul_efficiency=1.5)


def test_causal_pairs():
    assert causal_pairs(4, 4) == 10  # lower triangle with the diagonal
    assert causal_pairs(2, 5) == 2 * 3 + 3  # two queries after three earlier keys
    assert causal_pairs(1, 9) == 9


def test_roofline_takes_the_slower_bound_plus_launch():
    g = A100
    big = gemm_s(g, 4096, 4096, 4096, 2)
    assert big == pytest.approx(2 * 4096**3 / (312e12 * 0.7) + 5e-6)  # compute-bound
    one = gemm_s(g, 1, 4096, 32000, 2)
    assert one == pytest.approx((4096 + 4096 * 32000 + 32000) * 2 / (2.039e12 * 0.8) + 5e-6)  # memory-bound
    assert memory_op_s(g, 1e9) == roofline_s(g, 0, 1e9, 1.0) == pytest.approx(1e9 / (2.039e12 * 0.8) + 5e-6)


def test_layer_costs_of_llama_and_falcon():
    llama = AnalyticCost(ModelSpec.preset("llama-2-7b"), A100)
    t, h, i, b = 1024, 4096, 11008, 2
    norm = memory_op_s(A100, 2 * t * h * b)
    assert llama.kv_copy_s(t) == memory_op_s(A100, 2 * t * (2 * h * b))
    assert llama.pre_attention_s(t) == pytest.approx(
        norm + gemm_s(A100, t, h, 3 * h, b) + memory_op_s(A100, 2 * t * 2 * h * b) + llama.kv_copy_s(t))
    assert llama.post_attention_s(t) == pytest.approx(
        gemm_s(A100, t, h, h, b) + norm + gemm_s(A100, t, h, 2 * i, b) + memory_op_s(A100, 3 * t * i * b)
        + gemm_s(A100, t, i, h, b) + 2 * memory_op_s(A100, 3 * t * h * b))
    falcon = AnalyticCost(ModelSpec.preset("falcon-7b"), A100)
    h, i, q, kv = 4544, 18176, 71 * 64, 64
    assert falcon.pre_attention_s(t) == pytest.approx(
        memory_op_s(A100, 2 * t * h * b) + gemm_s(A100, t, h, q + 2 * kv, b) + memory_op_s(A100, 2 * t * (q + kv) * b)
        + memory_op_s(A100, 2 * t * 2 * kv * b))
    assert falcon.post_attention_s(t) == pytest.approx(
        gemm_s(A100, t, q, h, b) + gemm_s(A100, t, h, i, b) + memory_op_s(A100, 2 * t * i * b)
        + gemm_s(A100, t, i, h, b) + 2 * memory_op_s(A100, 3 * t * h * b))
    assert falcon.kv_bytes_per_token() == 2 * 1 * 64 * 2
    assert llama.kv_bytes_per_token() == 2 * 32 * 128 * 2


def test_attention_flops_and_bytes():
    spec = ModelSpec.preset("llama-2-7b")
    cost = AnalyticCost(spec, A100)
    pairs = causal_pairs(8192, 8192)
    assert cost.attention_s(8192, 8192, pairs) == pytest.approx(4 * pairs * 32 * 128 / (312e12 * 0.5) + 5e-6)


def job(scheme, context, gpus, model="llama-2-7b"):
    return Job(model=ModelSpec.preset(model), gpu=A100, dtype="fp16",
               cluster=ClusterSpec.uniform("u", 8, 300e9, 10e-6), scheme=scheme, context=context, num_gpus=gpus)


@pytest.mark.parametrize("model", ["llama-2-7b", "falcon-7b", "falcon-40b"])
def test_single_ttft_is_the_sum_of_its_op_times(model):
    c = 3000
    result = simulate(job(BUILTIN["single"], c, 1, model))
    cost = AnalyticCost(ModelSpec.preset(model), A100)
    layers = ModelSpec.preset(model).num_layers
    total = cost.embed_s(c) + layers * (
        cost.pre_attention_s(c) + cost.attention_s(c, c, causal_pairs(c, c)) + cost.post_attention_s(c)
    ) + cost.head_s()
    assert result.ttft_s == pytest.approx(total, rel=1e-12)
    assert result.ranks[0].busy_s == pytest.approx(total, rel=1e-12) and result.ranks[0].idle_s < 1e-9


@pytest.mark.parametrize("model", ["llama-2-7b", "falcon-7b"])
def test_kvr_on_one_gpu_equals_single_exactly(model):
    one = simulate(job(SchemeSpec(name="kvr-e", kind="kvr"), 4096, 1, model))
    single = simulate(job(BUILTIN["single"], 4096, 1, model))
    assert one == single and one.segments == single.segments


def test_partitions():
    assert even(10, 4) == [3, 3, 2, 2]
    assert from_fractions(9, [4, 3, 2]) == [4, 3, 2]
    assert from_fractions(10, [0.5, 0.25, 0.25]) == [5, 3, 2]  # remainder tie: earlier chunk
    with pytest.raises(PartitionError, match="has a zero chunk"):
        from_fractions(10, [0.98, 0.01, 0.01])
    with pytest.raises(PartitionError, match="cannot split 3 tokens into 4"):
        even(3, 4)
