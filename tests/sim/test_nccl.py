"""NCCL's model (sim/engine/nccl.py) alone and in the engine (communication: nccl): its choices by
message size, the closed form of an all-gather against the simulated one, published bus bandwidths,
and communication: links left exactly as it was."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cluster import ClusterSpec
from sim.engine import Sim
from sim.engine import nccl
from sim.engine.nccl import Comm, NcclError, choose, p2p, predict, transport
from sim.hardware import GpuSpec
from sim.job import BUILTIN, Job
from sim.model import ModelSpec
from sim.multinode import links as multinode_links
from sim.simulate import simulate
from strategies import nccl_comms

GB, KIB, MIB = 1e9, 1024, 2**20
H100_NODE = Comm(ranks=8, bandwidth_bytes_per_s=450 * GB, transport="nvlink", arch="hopper")


def job(*, cluster, gpus, communication="nccl", gpu="h100-sxm", scheme="tsp", context=1024, model="llama-2-7b"):
    return Job(model=ModelSpec.preset(model), gpu=GpuSpec.preset(gpu).replace(communication=communication),
               dtype="fp16", cluster=cluster, scheme=BUILTIN[scheme], context=context, num_gpus=gpus)


def run_all_gathers(sim, chunk_bytes, tags=(0,)):
    done = [sim.all_gather(tag, chunk_bytes) for tag in tags for _ in range(len(sim.gpus))]
    sim.env.run(until=sim.env.all_of(done))
    return sim.env.now


def test_the_protocol_goes_from_ll_to_ll128_to_simple_as_messages_grow():
    picks = [choose(H100_NODE, "all-gather", 4**k * KIB).protocol for k in range(11)]  # 1 KiB .. 1 GiB
    assert picks == ["LL"] * 7 + ["LL128"] + ["Simple"] * 3
    assert [p2p(H100_NODE, n).protocol for n in (1 * KIB, 16 * KIB, 16 * KIB + 1, MIB)] == \
        ["LL", "LL", "Simple", "Simple"]


@settings(max_examples=60, deadline=None)
@given(nccl_comms(), st.sampled_from(nccl.COLLECTIVES))
def test_protocols_never_go_back_to_a_lighter_one_as_bytes_grow(comm, collective):
    order = {"LL": 0, "LL128": 1, "Simple": 2}
    ring = [predict(comm, collective, "ring", p, 2.0**k) for k in range(10, 31) for p in nccl.PROTOCOLS]
    picks = [min((c for c in ring[i:i + 3] if c is not None), key=lambda c: c.time_s).protocol
             for i in range(0, len(ring), 3)]
    assert [order[p] for p in picks] == sorted(order[p] for p in picks)


@settings(max_examples=80, deadline=None)
@given(nccl_comms(), st.sampled_from(nccl.COLLECTIVES), st.floats(1.0, 2.0**31), st.floats(1.0, 4.0))
def test_time_grows_with_bytes_and_is_never_below_bytes_over_bandwidth(comm, collective, nbytes, grow):
    small, large = choose(comm, collective, nbytes), choose(comm, collective, nbytes * grow)
    assert large.time_s >= small.time_s
    wire = nbytes * nccl.steps(comm, collective) / comm.ranks  # what a rank sends on its slowest hop
    assert small.time_s >= wire / comm.bandwidth_bytes_per_s
    assert p2p(comm, nbytes * grow).time_s >= p2p(comm, nbytes).time_s >= nbytes / comm.bandwidth_bytes_per_s


# Published large-message bus bandwidths (nccl-tests, 8 GPUs of one node, ring; docs/cost_model.md):
# DGX A100 ~240 GB/s (NVIDIA, github.com/NVIDIA/nccl/issues/1712), DGX H100 365-370 GB/s with
# NCCL_ALGO=RING (github.com/NVIDIA/nccl/issues/1455; NVIDIA, github.com/NVIDIA/nccl-tests/issues/212),
# HGX H200 the H100's NVLink 4 (no separate figure found), 2 nodes of NDR 46-48 GB/s a NIC
# (NVIDIA, github.com/NVIDIA/nccl-tests/issues/290).
PUBLISHED_BUSBW = [
    (Comm(ranks=8, bandwidth_bytes_per_s=300 * GB, arch="ampere"), "all-gather", 240),
    (Comm(ranks=8, bandwidth_bytes_per_s=300 * GB, arch="ampere"), "all-reduce", 240),
    (Comm(ranks=8, bandwidth_bytes_per_s=450 * GB, arch="hopper"), "all-gather", 370),
    (Comm(ranks=8, bandwidth_bytes_per_s=450 * GB, arch="hopper"), "all-reduce", 370),
    (Comm(ranks=16, nodes=2, bandwidth_bytes_per_s=50 * GB, arch="hopper"), "all-gather", 47),
]


@pytest.mark.parametrize("comm,collective,published_gb", PUBLISHED_BUSBW)
def test_large_message_bus_bandwidth_is_within_5_percent_of_nccl_tests(comm, collective, published_gb):
    nbytes = 8 * 2**30  # nccl-tests' busbw = algbw x steps / P, at its largest sizes
    c = choose(comm, collective, nbytes)
    busbw_gb = nbytes / c.time_s * nccl.steps(comm, collective) / comm.ranks / GB
    assert c.protocol == "Simple"
    assert busbw_gb == pytest.approx(published_gb, rel=0.05)


def test_the_engine_all_gather_of_a_1k_prompt_takes_what_nccl_predicts():
    """llama-2-7b, 1024 tokens on 8 H100 (NVLink 450 GB/s, 2 us): each rank's 128 tokens x 16 KiB of
    K/V per layer; the engine's all-gather takes the closed form of NCCL's choice."""
    cluster = ClusterSpec.uniform("nvlink", 8, 450 * GB, 2e-6)
    chunk = 128 * ModelSpec.preset("llama-2-7b").kv_bytes_per_token_per_layer("fp16")
    assert chunk == 2 * MIB
    nccl_s = run_all_gathers(Sim(job(cluster=cluster, gpus=8), 8), chunk)
    expected = choose(H100_NODE, "all-gather", 8 * chunk)
    assert (expected.algorithm, expected.protocol) == ("ring", "LL128")
    assert nccl_s == pytest.approx(expected.time_s, rel=1e-9)
    links_s = run_all_gathers(Sim(job(cluster=cluster, gpus=8, communication="links"), 8), chunk)
    assert links_s == pytest.approx(7 * (2e-6 + chunk / (450 * GB)), rel=1e-12)


def test_contention_still_slows_concurrent_all_gathers_under_nccl():
    cluster = ClusterSpec.uniform("nvlink", 4, 300 * GB, 2e-6)
    one = run_all_gathers(Sim(job(cluster=cluster, gpus=4), 4), 64 * MIB)
    two = run_all_gathers(Sim(job(cluster=cluster, gpus=4), 4), 64 * MIB, tags=(0, 1))
    latency_s = choose(Comm(ranks=4, bandwidth_bytes_per_s=300 * GB, arch="hopper"), "all-gather",
                       4 * 64 * MIB).latency_s
    assert two - latency_s == pytest.approx(2 * (one - latency_s), rel=1e-9)


def test_a_send_under_nccl_takes_the_p2p_model_and_the_links_carry_the_true_bytes():
    cluster = ClusterSpec.uniform("nvlink", 2, 450 * GB, 2e-6)
    sim = Sim(job(cluster=cluster, gpus=2), 2)
    sim.send(0, 1, 4 * MIB, tag=0)
    sim.env.run(until=sim.message(0, 1, 0))
    assert sim.env.now == pytest.approx(p2p(Comm(ranks=2, bandwidth_bytes_per_s=450 * GB), 4 * MIB).time_s,
                                        rel=1e-9)
    assert dict(sim.network.bytes_carried) == {(0, 1): 4 * MIB}
    assert sim.sent == [4 * MIB, 0.0]


def test_an_all_reduce_across_nodes_may_take_nccls_tree():
    n, switches, links = multinode_links(nodes=2, node="dgx-h100", fabric="ib-ndr")
    cluster = ClusterSpec(name="2x", num_gpus=n, switches=switches, links=links, gpus_per_node=8)
    sim = Sim(job(cluster=cluster, gpus=16), 16)
    choice, comm = sim.nccl.collective("all-reduce", tuple(range(16)), 4 * KIB)
    assert (comm.nodes, comm.transport, choice.algorithm) == (2, "nvlink", "tree")
    done = [sim.all_reduce(0, 4 * KIB) for _ in range(16)]
    sim.env.run(until=sim.env.all_of(done))
    assert sim.env.now == pytest.approx(choice.time_s, rel=1e-9)


def test_transport_of_a_pair():
    n, switches, links = multinode_links(nodes=2, node="dgx-a100", fabric="ib-hdr")
    fabric = ClusterSpec(name="2x", num_gpus=n, switches=switches, links=links, gpus_per_node=8)
    pcie = ClusterSpec.uniform("pcie", 2, 25 * GB, 5e-6)
    assert [transport(fabric, 0, 1), transport(fabric, 0, 8), transport(pcie, 0, 1)] == ["nvlink", "net", "pci"]


@pytest.mark.parametrize("scheme", ["tsp", "kvr-e", "single"])
def test_links_is_bit_for_bit_the_model_of_a_gpu_built_without_the_field(scheme):
    cluster = ClusterSpec.uniform("nvlink", 4, 300 * GB, 5e-6)
    bare = GpuSpec.preset("a100-80gb-sxm")
    assert bare.communication == "links"
    explicit = simulate(job(cluster=cluster, gpus=4, communication="links", gpu="a100-80gb-sxm",
                            scheme=scheme, model="tiny-llama", context=256))
    plain = simulate(Job(model=ModelSpec.preset("tiny-llama"), gpu=bare, dtype="fp16", cluster=cluster,
                         scheme=BUILTIN[scheme], context=256, num_gpus=4))
    assert (explicit.ttft_s, explicit.segments, explicit.link_bytes) == (plain.ttft_s, plain.segments,
                                                                          plain.link_bytes)
    under_nccl = simulate(job(cluster=cluster, gpus=4, gpu="a100-80gb-sxm", scheme=scheme, model="tiny-llama",
                              context=256))
    assert under_nccl.link_bytes == plain.link_bytes  # the true bytes, whatever the protocol


def test_bad_input_is_one_line_and_exit_2(capsys):
    assert nccl.main(["--gpus", "8", "--transport", "ib"]) == 2
    assert capsys.readouterr().err == ("python -m sim.engine.nccl: error: transport='ib' must be one of "
                                       "['nvlink', 'pci', 'net']\n")
    with pytest.raises(NcclError, match="nodes=3 must be an integer in"):
        Comm(ranks=2, nodes=3, bandwidth_bytes_per_s=GB)


def test_the_command_prints_a_row_per_size(capsys):
    assert nccl.main(["--gpus", "8", "--bandwidth-gb-per-s", "300", "--transport", "nvlink"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 + len(nccl.SIZES)
    assert out[2].split()[:2] == ["1024", "ring/LL"] and "ring/Simple" in out[-1]
