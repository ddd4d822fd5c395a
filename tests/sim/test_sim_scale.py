"""Scale: multi-node clusters from presets, tensor-parallel groups inside nodes under every scheme,
the planner's choice of the group size, memory per GPU of a group, and the 70B-405B presets."""
import dataclasses

import pytest

from sim.cluster import ClusterSpec
from sim.cost import causal_pairs
from sim.cost.tensor_parallel import TensorParallelCost, allreduce_s
from sim.hardware import GpuSpec
from sim.job import BUILTIN, Job, SchemeSpec
from sim.model import ModelSpec
from sim.partition.plan import plan
from sim.scenario import ScenarioError, parse
from sim.schemes import memory_check
from sim.simulate import simulate
from stubs import StubCost
from sim import multinode

SPEC = ModelSpec.preset("tiny-llama")




def cluster(nodes=2, node="dgx-h100", fabric="ib-ndr", nics="rail"):
    n, switches, links = multinode.links(nodes=nodes, node=node, fabric=fabric, nics=nics)
    return ClusterSpec(name="mn", num_gpus=n, links=links, switches=switches, gpus_per_node=n // nodes)


def test_presets_are_the_published_shapes():
    assert ModelSpec.preset("llama-3.1-405b").num_params == pytest.approx(405.85e9, rel=1e-4)
    assert ModelSpec.preset("llama-3-70b").num_params == pytest.approx(70.55e9, rel=1e-4)
    assert GpuSpec.preset("h100-sxm").peak_flops_per_s == 989e12


def test_multinode_routes_use_the_own_rail_or_cross_the_node_first():
    c = cluster()
    assert c.num_gpus == 16 and c.gpus_per_node == 8
    assert c.route(0, 1) == ((0, "n0"), ("n0", 1))  # NVSwitch inside a node
    assert c.route(3, 11) == ((3, "rail3"), ("rail3", 11))  # the same rail: one leaf
    # Another rail: through the node's NVSwitch to the GPU on the destination's rail (2 us + 2 us)
    # rather than up to the spine (4 x 1 us ... equal latency, fewer hops win); either way 2 NIC hops.
    route = c.route(3, 12)
    assert route[0][0] == 3 and route[-1][1] == 12 and sum(1 for a, b in route if str(b).startswith("rail")) == 1


def test_a_tensor_parallel_group_splits_the_layer_and_adds_two_all_reduces():
    inner = StubCost()
    tpc = TensorParallelCost(inner=inner, tp=4, hidden_bytes=100.0, bandwidth_bytes_per_s=1e3, latency_s=0.5)
    reduce = allreduce_s(8 * 100.0, 4, 1e3, 0.5)
    assert reduce == pytest.approx(2 * 3 * (0.5 + 8 * 100 / 4 / 1e3))
    assert tpc.post_attention_s(8) == pytest.approx(8 / 4 + 2 * reduce)
    assert tpc.attention_s(8, 8, causal_pairs(8, 8)) == pytest.approx(36 / 4)
    assert tpc.embed_s(8) == inner.embed_s(8) and tpc.head_s() == inner.head_s()


def _job(scheme, gpus, context=64, c=None, model=SPEC):
    return Job(model=model, gpu=GpuSpec.preset("h100-sxm"), dtype="bf16", scheme=scheme, context=context,
               num_gpus=gpus, cluster=c or cluster())


def test_groups_are_whole_nodes_and_messages_go_lane_by_lane():
    eight_heads = dataclasses.replace(SPEC, num_heads=8, hidden_size=128)  # groups of 8 need 8 query heads
    job = _job(SchemeSpec(name="kvr+tp8", kind="kvr", tp=8), 16, model=eight_heads)
    p = plan(job)
    assert (p.chunks, p.gpus, p.tp) == ((32, 32), (0, 8), 8)
    result = simulate(job)
    sends = [s for s in result.segments if s.kind == "transfer"]
    kv = SPEC.kv_bytes_per_token_per_layer("bf16")
    assert sends and all(s.nbytes == pytest.approx(32 * kv) for s in sends)
    # Each lane carried an eighth of every message over its own rail.
    rails = {link: b for link, b in result.link_bytes.items() if str(link[1]).startswith("rail")}
    assert len(rails) == 8 and all(b == pytest.approx(eight_heads.num_layers * 32 * kv / 8) for b in rails.values())


def test_the_planner_keeps_the_fastest_group_size():
    auto = _job(dataclasses.replace(BUILTIN["ring-zigzag"], name="zz", tp=0), 16, context=4096)
    chosen = plan(auto)
    times = {t: simulate(_job(dataclasses.replace(BUILTIN["ring-zigzag"], name="zz", tp=t), 16, context=4096)).ttft_s
             for t in (1, 2, 4)}  # tiny-llama has 4 heads: groups of 8 cannot split them
    assert chosen.tp in times and simulate(auto).ttft_s == pytest.approx(min(times.values()))


def test_a_gpu_of_a_group_holds_its_share():
    big = ModelSpec.preset("llama-3-70b")
    job = Job(model=big, gpu=GpuSpec.preset("h100-sxm"), dtype="bf16", scheme=SchemeSpec(name="z", kind="ring", tp=8),
              context=8192, num_gpus=16, cluster=cluster())
    m = memory_check(job, plan(job), None)
    assert m.ranks[0].weights == pytest.approx(big.num_params * 2 / 8)
    kv_per_gpu = 4096 * big.kv_bytes_per_token_per_layer("bf16") * big.num_layers / 8  # 8 K/V heads over 8 GPUs
    assert m.ranks[0].kv_cache == pytest.approx(kv_per_gpu)


def doc(**scheme):
    return {"models": ["tiny-llama"], "hardware": {"gpu": "h100-sxm"},
            "clusters": [{"name": "mn", "kind": "multinode", "nodes": 2, "node": "dgx-h100", "fabric": "ib-ndr"}],
            "workload": {"contexts": [64], "gpus": [16], "schemes": [{"name": "s", "kind": "kvr", **scheme}]}}


@pytest.mark.parametrize("change,message", [
    (lambda d: d["workload"]["schemes"][0].update(tp=3), "workload.schemes[0].tp: must divide the 8 GPUs of a node"),
    (lambda d: d["hardware"].update(gpu="a100-80gb-sxm"), "clusters[0].node: holds h100-sxm GPUs, but hardware.gpu"),
    (lambda d: d["clusters"][0].update(fabric="carrier-pigeon"), "clusters[0].fabric: must be one of"),
    (lambda d: d["workload"]["schemes"][0].update(tp=2, partitioner="kvr-s"), "workload.schemes[0].tp: runs with"),
])
def test_bad_multinode_input_is_one_named_error(change, message):
    d = doc()
    change(d)
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(d)
