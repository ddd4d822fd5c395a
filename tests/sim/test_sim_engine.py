"""Closed forms of the engine: transfers, shared links, background traffic, the ring all-gather, and a
whole KV-Runahead timeline under a stub cost model."""
import dataclasses

import pytest
import simpy

from sim.cluster import BackgroundFlow, ClusterSpec, LinkSpec, duplex
from sim.hardware import GpuSpec
from sim.model import ModelSpec
from sim.engine.network import Network
from sim.job import BUILTIN, SchemeSpec
from stubs import StubCost
from sim.engine import Segment, Sim
from sim.job import Job
from sim.simulate import simulate

GB = 1e9


def run_transfers(cluster, moves_at):
    """Start each (time, src, dst, bytes) transfer; return the end times."""
    env = simpy.Environment()
    net = Network(env, cluster)
    ends = {}

    def one(i, at, src, dst, nbytes):
        yield env.timeout(at)
        yield from net.transfer([(src, dst, nbytes)])
        ends[i] = env.now

    procs = [env.process(one(i, *m)) for i, m in enumerate(moves_at)]
    env.run(until=env.all_of(procs))
    return [ends[i] for i in range(len(moves_at))]


def test_one_transfer_is_latency_plus_bytes_over_bandwidth():
    cluster = ClusterSpec.uniform("u", 2, 50 * GB, 7e-6)
    assert run_transfers(cluster, [(0.0, 0, 1, 3e8)]) == [pytest.approx(7e-6 + 3e8 / (50 * GB), rel=1e-12)]


def star(bandwidth, latency_s, background=()):
    """GPUs 0, 1, 2 on a switch `sw`: 0->2 and 1->2 share the link sw->2."""
    links = sum((duplex(g, "sw", bandwidth, latency_s) for g in range(3)), ())
    return ClusterSpec(name="star", num_gpus=3, links=links, switches=("sw",), background=background)


def test_two_transfers_sharing_a_link_each_take_twice_as_long():
    b, lat, n = 10 * GB, 1e-6, 1e8
    alone = run_transfers(star(b, lat), [(0.0, 0, 2, n)])
    both = run_transfers(star(b, lat), [(0.0, 0, 2, n), (0.0, 1, 2, n)])
    assert alone == [pytest.approx(2 * lat + n / b)]
    assert both == [pytest.approx(2 * lat + 2 * n / b)] * 2


def test_a_late_flow_shares_only_while_both_are_active():
    b, n = 10 * GB, 1e8  # alone, a transfer takes 10 ms
    a_end, b_end = run_transfers(star(b, 0.0), [(0.0, 0, 2, n), (0.004, 1, 2, n)])
    # A: 4 ms alone (40%), then 60% at half rate = 12 ms -> 16 ms. B: 12 ms at half (60%), then 4 ms.
    assert (a_end, b_end) == (pytest.approx(0.016), pytest.approx(0.020))


def test_max_min_fairness_gives_leftover_bandwidth_to_the_unconstrained_flow():
    # 0->1 crosses a 2 GB/s link; 2->1 shares the 10 GB/s link sw->1 with it and gets the other 8 GB/s.
    links = (*duplex(0, "sw", 2 * GB, 0.0), *duplex(1, "sw", 10 * GB, 0.0), *duplex(2, "sw", 10 * GB, 0.0))
    cluster = ClusterSpec(name="mm", num_gpus=3, links=links, switches=("sw",))
    assert run_transfers(cluster, [(0.0, 0, 1, 2e9), (0.0, 2, 1, 8e9)]) == [pytest.approx(1.0), pytest.approx(1.0)]


def test_constant_background_flow_halves_the_bandwidth():
    cluster = ClusterSpec.uniform("u", 2, 10 * GB, 0.0, background=(BackgroundFlow(src=0, dst=1),))
    assert run_transfers(cluster, [(0.0, 0, 1, 1e9)]) == [pytest.approx(0.2)]


def test_on_off_background_flow_competes_only_while_on():
    bg = BackgroundFlow(src=0, dst=1, flows=3, start_s=0.05, on_s=0.1, off_s=1.0)
    cluster = ClusterSpec.uniform("u", 2, 10 * GB, 0.0, background=(bg,))
    # 0.05 s alone (0.5 GB), 0.1 s at a quarter (0.25 GB), then alone: 0.25 GB in 0.025 s.
    assert run_transfers(cluster, [(0.0, 0, 1, 1e9)]) == [pytest.approx(0.175)]


def test_routes_take_least_latency_then_fewest_hops():
    fast = 1e-6
    links = (*duplex(0, 1, GB, 10e-6), *duplex(0, 2, GB, fast), *duplex(2, 1, GB, fast),
             *duplex(1, 3, GB, fast), *duplex(0, "s", GB, fast), *duplex("s", 3, GB, fast),
             *duplex(2, 3, GB, 2 * fast))
    r = ClusterSpec(name="r", num_gpus=4, links=links, switches=("s",)).routes()
    assert r[0, 1] == ((0, 2), (2, 1))  # 2 us beats the direct 10 us
    assert r[0, 3] == ((0, "s"), ("s", 3))  # 2 us: one of three 2-us routes with two hops
    assert r[2, 3] == ((2, 3),)  # 2 us direct ties 2 -> 1 -> 3 at 2 us: fewer hops wins


def job(model="tiny-llama", scheme="kvr-e", context=64, gpus=4, cluster=None):
    return Job(model=ModelSpec.preset(model), gpu=GpuSpec.preset("a100-80gb-sxm"), dtype="fp16",
               cluster=cluster or ClusterSpec.uniform("u", 8, 300 * GB, 5e-6),
               scheme=BUILTIN[scheme] if isinstance(scheme, str) else scheme, context=context, num_gpus=gpus)


@pytest.mark.parametrize("p", [2, 3, 8])
def test_ring_all_gather_on_uniform_links(p):
    b, lat, chunk = 25 * GB, 3e-6, 4e6
    sim = Sim(job(cluster=ClusterSpec.uniform("u", p, b, lat), gpus=p), p)
    done = [sim.all_gather(0, chunk) for _ in range(p)]
    sim.env.run(until=sim.env.all_of(done))
    assert sim.env.now == pytest.approx((p - 1) * (lat + chunk / b), rel=1e-12)
    assert sim.sent == sim.received == [(p - 1) * chunk] * p


def test_ring_all_gather_step_waits_for_its_slowest_transfer():
    slow = LinkSpec(src=2, dst=0, bandwidth_bytes_per_s=GB, latency_s=0.0)
    fast = tuple(l for l in ClusterSpec.uniform("u", 3, 10 * GB, 0.0).all_links() if (l.src, l.dst) != (2, 0))
    sim = Sim(job(cluster=ClusterSpec(name="n", num_gpus=3, links=(*fast, slow)), gpus=3), 3)
    done = [sim.all_gather(0, 1e9) for _ in range(3)]
    sim.env.run(until=sim.env.all_of(done))
    assert sim.env.now == pytest.approx(2 * 1.0)  # two steps, each as slow as the 1 GB/s link




def test_kvr_timeline_runs_ahead_and_sends_without_waiting():
    """The copying chain (``kv_chain: copy``): rank 1 copies the received 3 tokens and its own 2."""
    spec = ModelSpec.preset("tiny-llama")  # 2 layers
    kvb = spec.kv_bytes_per_token_per_layer("fp16")
    cluster = ClusterSpec.uniform("u", 2, 3 * kvb, 0.5)  # rank 0's 3 tokens of KV take 1 s, +0.5 s latency
    scheme = SchemeSpec(name="kvr", kind="kvr", fractions=(0.6, 0.4))
    j = job(scheme=scheme, context=5, gpus=2, cluster=cluster)
    result = simulate(dataclasses.replace(j, gpu=j.gpu.replace(kv_chain="copy")), cost=StubCost())
    c = "compute"
    assert result.chunks == (3, 2)
    assert sorted(result.segments, key=lambda s: (s.rank, s.start_s, s.kind)) == [
        Segment(0, c, "embed", 0, 1), Segment(0, c, "qkv", 1, 4, 0),
        Segment(0, c, "attention", 4, 10, 0), Segment(0, "transfer", "send", 4, 5.5, 0, 1, 3 * kvb),
        Segment(0, c, "mlp", 10, 13, 0), Segment(0, c, "qkv", 13, 16, 1),
        Segment(0, c, "attention", 16, 22, 1), Segment(0, "transfer", "send", 16, 17.5, 1, 1, 3 * kvb),
        Segment(0, c, "mlp", 22, 25, 1),
        Segment(1, c, "embed", 0, 1), Segment(1, c, "qkv", 1, 3, 0),
        Segment(1, c, "kv-cat", 5.5, 6.0, 0),  # the message arrived at 5.5; its 3 tokens + own 2
        Segment(1, c, "attention", 6.0, 15.0, 0), Segment(1, c, "mlp", 15.0, 17.0, 0),
        Segment(1, c, "qkv", 17.0, 19.0, 1), Segment(1, c, "kv-cat", 19.0, 19.5, 1),
        Segment(1, c, "attention", 19.5, 28.5, 1), Segment(1, c, "mlp", 28.5, 30.5, 1),
        Segment(1, c, "head", 30.5, 31)]
    assert (result.ttft_s, result.makespan_s) == (31, 31)
    assert [(r.busy_s, r.idle_s, r.bytes_sent, r.bytes_received) for r in result.ranks] == [
        (25, 6, 6 * kvb, 0), (28.5, 2.5, 0, 6 * kvb)]
    assert result.link_bytes == {(0, 1): 6 * kvb}


def test_kvr_timeline_with_the_chain_in_place_copies_nothing():
    """The resident chain (the default): the same timeline as above less rank 1's two kv-cat copies
    (0.5 s each); rank 0's layer-1 message (sent at 16, arriving at 17.5) is there before rank 1's
    QKV ends at 18.5, so rank 1 never waits after the first layer."""
    spec = ModelSpec.preset("tiny-llama")
    kvb = spec.kv_bytes_per_token_per_layer("fp16")
    cluster = ClusterSpec.uniform("u", 2, 3 * kvb, 0.5)
    scheme = SchemeSpec(name="kvr", kind="kvr", fractions=(0.6, 0.4))
    result = simulate(job(scheme=scheme, context=5, gpus=2, cluster=cluster), cost=StubCost())
    c = "compute"
    assert [s for s in sorted(result.segments, key=lambda s: (s.rank, s.start_s, s.kind)) if s.rank == 1] == [
        Segment(1, c, "embed", 0, 1), Segment(1, c, "qkv", 1, 3, 0),
        Segment(1, c, "attention", 5.5, 14.5, 0), Segment(1, c, "mlp", 14.5, 16.5, 0),
        Segment(1, c, "qkv", 16.5, 18.5, 1), Segment(1, c, "attention", 18.5, 27.5, 1),
        Segment(1, c, "mlp", 27.5, 29.5, 1), Segment(1, c, "head", 29.5, 30)]
    assert result.ttft_s == 30
    assert [(r.busy_s, r.idle_s) for r in result.ranks] == [(25, 5), (27.5, 2.5)]


def test_tsp_timeline_waits_for_every_rank_at_each_all_gather():
    spec = ModelSpec.preset("tiny-llama")
    kvb = spec.kv_bytes_per_token_per_layer("fp16")
    cluster = ClusterSpec.uniform("u", 2, 3 * kvb, 0.0)  # the padded chunk of 3 tokens takes 1 s
    result = simulate(job(scheme="tsp", context=5, gpus=2, cluster=cluster), cost=StubCost())
    # Rank 0: 3 tokens, 6 pairs; rank 1: 2 tokens (padded to 3: 0.3 s), keys [0, 5): 9 pairs.
    # Layer 0: qkv ends 4 / 3.3, gather 4..5, kv-cat 0.3 / 0.5, attention ends 11.3 / 14.5, MLP ends
    # 14.3 / 16.5; layer 1: qkv ends 17.3 / 18.8 with the pad, gather 18.8..19.8, kv-cat ends 20.3,
    # attention 29.3, MLP 31.3, head 31.8.
    assert result.chunks == (3, 2)
    assert result.ttft_s == pytest.approx(31.8)
    gathers = [(s.rank, s.start_s, s.end_s) for s in result.segments if s.kind == "transfer"]
    # One flat list: pytest.approx compares flat sequences only (pytest >= 8.4 rejects nested ones).
    assert [x for g in sorted(gathers) for x in g] == pytest.approx(
        [0, 4, 5, 0, 18.8, 19.8, 1, 4, 5, 1, 18.8, 19.8])
    layer1 = [s for s in result.segments if (s.rank, s.layer, s.kind) == (1, 1, "compute")]
    assert [s.op for s in layer1] == ["qkv", "kv-pad", "kv-cat", "attention", "mlp"]
    assert [t for s in layer1 for t in (s.start_s, s.end_s)] == pytest.approx(
        [16.5, 18.5, 18.5, 18.8, 19.8, 20.3, 20.3, 29.3, 29.3, 31.3])
