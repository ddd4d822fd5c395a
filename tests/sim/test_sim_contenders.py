"""The contenders in the engine, on timelines worked out by hand with round-number costs (the
``StubCost`` of tests/stubs.py: QKV and MLP take one second a token, attention one a query-key
pair, a KV copy a tenth of a second a token), and their memory."""
import dataclasses

import pytest

from sim.cluster import ClusterSpec
from sim.cost import causal_pairs
from sim.hardware import GpuSpec
from sim.job import BUILTIN, Job, SchemeSpec
from sim.model import ModelSpec
from sim.partition import Plan
from sim.partition.plan import plan
from sim.schemes import memory_check, unsupported
from sim.simulate import simulate
from stubs import StubCost

SPEC = ModelSpec.preset("tiny-llama")  # 2 layers, fp16 below
B = 2  # bytes per element




def job(scheme, context, gpus, bandwidth):
    scheme = BUILTIN[scheme] if isinstance(scheme, str) else scheme
    return Job(model=SPEC, gpu=GpuSpec.preset("h100-sxm"), dtype="fp16", scheme=scheme, context=context,
               num_gpus=gpus, cluster=ClusterSpec.uniform("u", gpus, bandwidth, 0.0))


def test_ring_skips_blocks_above_the_diagonal_and_overlaps_the_pass():
    kvb = SPEC.kv_bytes_per_token_per_layer("fp16")
    result = simulate(job("ring", 4, 2, 2 * kvb), cost=StubCost())  # a 2-token block takes 1 s
    # Rank 1, a layer: QKV 2, send its block (1 s, beside the work), its own causal block 3, rank 0's
    # block 2 x 2 = 4 (arrived at 4, after the QKV and the send), MLP 2: 11 s; two layers, embed, head.
    # Rank 0 attends only to its own block; in layer 1 it waits for rank 1's block (sent at 14, in at
    # 15) although it skips it: the ring must pass it on.
    assert result.chunks == (2, 2)
    assert result.ttft_s == pytest.approx(1 + 2 * 11 + 0.5)
    assert [r.busy_s for r in result.ranks] == pytest.approx([1 + 2 * 7, 1 + 2 * 11 + 0.5])
    ops = sorted((s.rank, s.start_s, s.end_s) for s in result.segments if s.kind == "transfer")
    assert [x for op in ops for x in op] == pytest.approx([0, 3, 4, 0, 10, 11, 1, 3, 4, 1, 14, 15])


def test_zigzag_gives_every_rank_the_same_attention_and_rank_0_the_last_token():
    result = simulate(job("ring-zigzag", 8, 2, 1e30), cost=StubCost())
    # Pieces of 2: rank 0 holds pieces 0 and 3, rank 1 pieces 1 and 2. Attention pairs a layer: rank 0
    # 3 + 7 (own) + 2 x 4 (piece 3 on rank 1's block); rank 1 3 + 7 + 4 x 2 (both on piece 0): 18 each,
    # 36 in all = the causal pairs of 8 tokens.
    assert result.chunks == (4, 4) and 18 + 18 == causal_pairs(8, 8)
    per_layer = 4 + 18 + 4
    assert [r.busy_s for r in result.ranks] == pytest.approx([1 + 2 * per_layer + 0.5, 1 + 2 * per_layer])
    assert result.ttft_s == pytest.approx(1 + 2 * per_layer + 0.5)


def test_tp_pays_two_ring_all_reduces_a_layer():
    activation = 4 * SPEC.hidden_size * B
    result = simulate(job("tp", 4, 2, activation / 2), cost=StubCost())  # each of 2 steps: half of it, 1 s
    # Every rank: QKV 4/2, attention 10/2, all-reduce 2 x 1 s, MLP 4/2, all-reduce 2 s: 13 s a layer.
    assert result.chunks == (4, 4)
    assert result.ttft_s == pytest.approx(1 + 2 * 13 + 0.5)
    assert result.ranks[0].bytes_sent == pytest.approx(2 * 2 * 2 * activation / 2)


def test_ulysses_moves_heads_there_and_back():
    bw = 1e6
    result = simulate(job("ulysses", 4, 2, bw), cost=StubCost())
    # tiny-llama: 4 query heads, 4 K/V heads (2 ranks: two each); 2 tokens a rank.
    there = 2 * (SPEC.q_size / 2 + 2 * SPEC.head_dim * 2) * B / bw
    back = 2 * SPEC.q_size / 2 * B / bw
    assert result.ttft_s == pytest.approx(1 + 2 * (2 + there + 10 / 2 + back + 2) + 0.5)
    assert unsupported("ulysses", ModelSpec.preset("falcon-7b"), 2, 1024) == \
        "71 query heads are not divisible by 2 GPUs"


@pytest.mark.parametrize("kv_chain", ["copy", "resident"])
def test_pipeline_pieces_flow_through_the_stages(kv_chain):
    activation = 2 * SPEC.hidden_size * B
    scheme = SchemeSpec(name="pp", kind="pipeline", pieces=2)
    j = job(scheme, 4, 2, activation)  # a 2-token piece's activations take 1 s
    j = dataclasses.replace(j, gpu=j.gpu.replace(kv_chain=kv_chain))
    assert plan(j) == Plan((4, 4), (0, 1), (2, 2))
    result = simulate(j, cost=StubCost())
    # Stage 0 (layer 0): piece 0 embed 0-1, layer 1-8 (2 + 3 + 2), sent 8-9; piece 1 embed 8-9, layer
    # 9-20.4 (2 + 0.4 + 7 + 2; the 0.4 s kv-cat of the copying cache, none with the cache in place).
    # Stage 1 (layer 1): piece 0 9-16, piece 1 from 21.4 to 32.8, head 33.3 (0.8 s sooner in place).
    cat = 0.4 if kv_chain == "copy" else 0.0
    assert result.ttft_s == pytest.approx(32.5 + 2 * cat)
    assert [r.busy_s for r in result.ranks] == pytest.approx([1 + 7 + 1 + 11 + cat, 7 + 11 + cat + 0.5])


def test_equal_time_pieces_shrink_as_the_past_grows():
    j = job(BUILTIN["pipeline-et"], 4096, 2, 1e30)
    pieces = plan(j).pieces
    assert len(pieces) == 8 and sum(pieces) == 4096 and list(pieces) == sorted(pieces, reverse=True)


def test_memory_per_rank_follows_each_scheme():
    model = ModelSpec.preset("llama-2-7b")
    weights = model.num_params * B
    tp = memory_check(job("tp", 4096, 4, 1e9), Plan((4096,) * 4, (0, 1, 2, 3)), None)
    assert tp.ranks[0].weights == pytest.approx(SPEC.num_params * B / 4)
    big = Job(model=model, gpu=GpuSpec.preset("h100-sxm"), dtype="fp16", scheme=BUILTIN["ring"], context=8192,
              num_gpus=4, cluster=ClusterSpec.uniform("u", 4, 1e9, 0.0))
    ring = memory_check(big, plan(big), None)
    kv_layer = model.kv_bytes_per_token_per_layer("fp16")
    assert ring.ranks[3].weights == weights
    assert ring.ranks[3].kv_cache == pytest.approx(2048 * kv_layer * model.num_layers)  # its own chunk only


def test_simulating_a_job_its_scheme_cannot_run_says_why_before_simulating():
    """A pipeline of more stages than layers, or tensor-parallel groups that do not divide the heads,
    is refused by ``simulate`` with the reason (not an error from inside the SimPy run)."""
    two_layers = dataclasses.replace(ModelSpec.preset("llama-2-7b"), num_layers=2)
    job = Job(model=two_layers, gpu=GpuSpec.preset("a100-80gb-sxm"), dtype="fp16",
              cluster=ClusterSpec.uniform("u", 4, 300e9, 1e-5), scheme=BUILTIN["pipeline"], context=4096, num_gpus=4)
    with pytest.raises(ValueError, match="pipeline cannot run .* on 4 GPUs: 2 layers cannot fill 4 stages"):
        simulate(job)
    assert simulate(dataclasses.replace(job, num_gpus=2)).ttft_s > 0  # two stages of one layer each run
    tp3 = dataclasses.replace(job, model=ModelSpec.preset("llama-2-7b"), num_gpus=3,
                              cluster=ClusterSpec.uniform("u", 3, 300e9, 1e-5), scheme=SchemeSpec(name="tp3", kind="ring", tp=3))
    with pytest.raises(ValueError, match="32 query heads are not divisible by tensor-parallel groups of 3"):
        simulate(tp3)
