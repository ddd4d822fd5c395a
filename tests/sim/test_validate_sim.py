"""The CPU-cluster simulation of sim/engine/cpu_cluster.py in closed form: ranks sharing a host's cores, and
gloo's rendezvous for point-to-point messages; and the comparison's matching of measured results."""
import json
from dataclasses import dataclass

import pytest

from sim.cluster import ClusterSpec
from sim.hardware import GpuSpec
from sim.model import ModelSpec
from sim.report import rows
from sim.job import BUILTIN
from sim.job import Job
from sim.simulate import simulate
from sim.cost import CostModel
from sim.engine.cpu_cluster import cpu_cluster_sim
from sim.validation.measured import compare, load_measured, mape

SPEC = ModelSpec.preset("tiny-llama").replace(num_layers=3)
# The fields a results file must have besides those each test sets (sim/schemas/results.schema.json).
RESULT = {"schema_version": 1, "dtype": "fp32", "backend": "gloo", "ttft_s": [1.0], "first_token_id": 0}


@dataclass(frozen=True)
class Stub(CostModel):
    """pre_attention and post_attention take fixed seconds; everything else is free."""
    pre: float = 0.0
    post: float = 0.0

    def embed_s(self, tokens): return 0.0
    def pre_attention_s(self, tokens): return self.pre
    def kv_copy_s(self, tokens): return 0.0
    def attention_s(self, queries, keys, pairs): return 0.0
    def post_attention_s(self, tokens): return self.post
    def head_s(self): return 0.0


def job(scheme: str, cost: Stub, bandwidth: float = 1e18) -> Job:
    return Job(model=SPEC, gpu=GpuSpec.preset("h100-sxm"), dtype="fp32", scheme=BUILTIN[scheme], context=64,
               num_gpus=2, cluster=ClusterSpec.uniform("u", 2, bandwidth, 0.0), cost_model=cost)


def test_ranks_computing_at_once_share_the_cores():
    j = job("tsp", Stub(post=1.0))
    assert simulate(j).ttft_s == pytest.approx(3.0)  # one GPU (core) per rank: 1 s a layer
    assert simulate(j, sim_class=cpu_cluster_sim(2.0)).ttft_s == pytest.approx(3.0)
    assert simulate(j, sim_class=cpu_cluster_sim(1.0)).ttft_s == pytest.approx(6.0)  # both at half speed
    assert simulate(j, sim_class=cpu_cluster_sim(1.5)).ttft_s == pytest.approx(4.0)


def test_a_kvr_message_moves_once_the_receiver_posts_its_receive():
    # 32 tokens x 512 B x ... : the 1 s QKV then a message of exactly 1 s on the link.
    nbytes = 32 * SPEC.kv_bytes_per_token_per_layer("fp32")
    j = job("kvr-e", Stub(pre=1.0), bandwidth=nbytes)
    # Without rendezvous rank 0's sends run back to back from t = 1, 2, 3: the last arrives at 4.
    assert simulate(j).ttft_s == pytest.approx(4.0)
    # With it, message l starts when rank 1 has done its QKV of layer l and posted the receive:
    # rank 1 is at layer l's receive at 1 + 2l, so the message arrives at 2 + 2l; the last at 6.
    assert simulate(j, sim_class=cpu_cluster_sim(None, htb=False)).ttft_s == pytest.approx(6.0)


def test_measured_results_match_by_cluster_scheme_and_partition(tmp_path):
    j = job("kvr-e", Stub(pre=1.0))
    table = rows([(j, simulate(j), None, None)])
    for i, (ttft, link) in enumerate([(2.0, "cluster=u (shaped)"), (4.0, "cluster=u"), (9.0, "cluster=other")]):
        (tmp_path / f"r{i}.json").write_text(json.dumps({
            **RESULT, "model": SPEC.to_dict(), "scheme": "kvr", "world_size": 2, "context": 64, "partition": [32, 32],
            "link": link, "ttft_s": [ttft], "ttft_median_s": ttft}))
    measured = load_measured(sorted(str(p) for p in tmp_path.glob("*.json")))
    [c] = compare(table, measured)
    assert c.measured.ttft_s == 3.0 and sorted(c.measured.rounds_s) == [2.0, 4.0]
    assert c.simulated_s == table[0].result.ttft_s == pytest.approx(3.0)
    assert c.error == pytest.approx(0.0, abs=1e-12) and mape([c]) == pytest.approx(0.0, abs=1e-9)


def test_the_hosts_measured_costs_enter_the_resimulation_and_a_bad_fit_is_one_line(tmp_path):
    """``measured.host``: a busy-cpu fit's cost a message is charged in the re-simulation (ranks that
    share their cores compute slower beside a costly message than beside a free one); without a file,
    the engine's constants; a file that is not a fit is one ``MeasuredError`` line naming it."""
    from sim.engine.cpu_cluster import NET_CPU_S_PER_BYTE, NET_CPU_S_PER_MESSAGE
    from sim.validation.measured import HostTerms, MeasuredError, host_terms, resimulate

    @dataclass(frozen=True)
    class Scaled(Stub):
        def scaled(self, factor):
            return Stub(self.pre * factor, self.post * factor)
    j = job("kvr-e", Scaled(pre=1.0, post=1.0))
    [row] = rows([(j, simulate(j), None, None)])
    free, costly = HostTerms(0.0, 0.0, "free"), HostTerms(0.0, 0.5, "costly")
    ttft_free, _ = resimulate(row, 1.0, 1.0, free)  # 2 ranks on 2 cores
    ttft_costly, _ = resimulate(row, 1.0, 1.0, costly)
    assert ttft_costly > ttft_free + 0.1
    assert host_terms(None) == HostTerms(NET_CPU_S_PER_BYTE, NET_CPU_S_PER_MESSAGE, HostTerms().source)
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"schema": "busy-cpu-fit/1", "per_byte_s": 2e-9, "per_message_s": 5e-4}))
    assert host_terms(str(fit)) == HostTerms(2e-9, 5e-4, str(fit))
    fit.write_text(json.dumps({"schema": "busy-cpu-probe/1", "cpu_s_per_byte": 2e-9}))
    with pytest.raises(MeasuredError, match=r"fit.json: measured.host is not a busy-cpu fit"):
        host_terms(str(fit))
    fit.write_text("{")
    with pytest.raises(MeasuredError, match=r"measured.host cannot be read as JSON"):
        host_terms(str(fit))


def test_a_rank_leaves_the_gloo_all_gather_after_its_own_receive():
    from sim.cluster import LinkSpec

    chunk = 32 * SPEC.kv_bytes_per_token_per_layer("fp32")
    links = (LinkSpec(src=0, dst=1, bandwidth_bytes_per_s=1e18, latency_s=0.0),
             LinkSpec(src=1, dst=0, bandwidth_bytes_per_s=chunk / 2, latency_s=0.0))  # 2 s a chunk
    j = job("tsp", Stub(post=1.0))
    j = Job(**{**j.__dict__, "cluster": ClusterSpec(name="n", num_gpus=2, links=links)})
    assert simulate(j).ttft_s == pytest.approx(9.0)  # every layer: both wait for the 2 s transfer
    # Rank 1 (the last) gets rank 0's chunk as soon as both have entered; rank 0 waits 2 s for its own:
    # rank 1 computes 0-1, 3-4, 6-7 (each gather starts when the late rank 0 enters).
    assert simulate(j, sim_class=cpu_cluster_sim(None, htb=False)).ttft_s == pytest.approx(7.0)


def test_a_gloo_send_holds_its_rank_until_the_socket_buffer_holds_the_rest(monkeypatch):
    """A gloo send returns once all but the socket buffer's bytes are delivered: with a buffer of a
    quarter chunk, rank 1's send over the 2 s link returns 1.5 s after it starts, and rank 1 leaves
    the all-gather then, not when its own (instant) receive is done."""
    import sim.engine.cpu_cluster
    from sim.cluster import LinkSpec

    chunk = 32 * SPEC.kv_bytes_per_token_per_layer("fp32")
    links = (LinkSpec(src=0, dst=1, bandwidth_bytes_per_s=1e18, latency_s=0.0),
             LinkSpec(src=1, dst=0, bandwidth_bytes_per_s=chunk / 2, latency_s=0.0))
    j = job("tsp", Stub(post=1.0))
    j = Job(**{**j.__dict__, "cluster": ClusterSpec(name="n", num_gpus=2, links=links)})
    monkeypatch.setattr(sim.engine.cpu_cluster, "SOCKET_BUFFER_BYTES", chunk / 4)
    # Rank 1 leaves the gathers at 1.5, 4.5, 7.5 (each starts when rank 0 enters: 0, 3, 6) and
    # computes a second after each: 8.5; with the whole chunk buffered it was 7.0 (test above).
    assert simulate(j, sim_class=cpu_cluster_sim(None, htb=False)).ttft_s == pytest.approx(8.5)
    monkeypatch.setattr(sim.engine.cpu_cluster, "SOCKET_BUFFER_BYTES", 2 * chunk)
    assert simulate(j, sim_class=cpu_cluster_sim(None, htb=False)).ttft_s == pytest.approx(7.0)


def test_contention_comes_from_the_workload_probe_where_a_result_has_one(tmp_path):
    """The shared-core term's contention is the ranks' own work in P processes over one
    (``workload_probe_s``) where the harness measured it, else the GEMM probe's ratio."""
    base = {**RESULT, "model": SPEC.to_dict(), "scheme": "kvr", "world_size": 2, "context": 64,
            "partition": [32, 32], "speed_probe_s": [1.0, 1.0], "contended_probe_s": [2.0, 2.2]}
    (tmp_path / "gemm.json").write_text(json.dumps({**base, "link": "cluster=a", "ttft_median_s": 1.0}))
    (tmp_path / "work.json").write_text(json.dumps({
        **base, "link": "cluster=b", "ttft_median_s": 1.0,
        "workload_probe_s": [0.2, 0.2], "contended_workload_probe_s": [0.25, 0.27]}))
    measured = load_measured([str(tmp_path / "gemm.json"), str(tmp_path / "work.json")])
    by_cluster = {key[1]: m for key, m in measured.items()}
    assert by_cluster["a"].contention == (pytest.approx(2.1),)
    assert by_cluster["b"].contention == (pytest.approx(1.3),)


def test_a_message_costs_the_host_cpu_that_the_ranks_compute_on():
    """One core, a 1 s compute op on rank 0 and, at the same moment, a message whose bytes cost the host
    1 core-second: they share the core half-half, so the op ends at 2 s (alone: 1 s)."""
    j = job("tsp", Stub())
    for c, expected in ((0.0, 1.0), (1e-6, 2.0)):
        sim = cpu_cluster_sim(1.0, c)(j, 2)

        def op():
            sim.net_work(1e6)
            yield from sim.compute(0, 0, ("mlp", 1.0))
        sim.env.process(op())
        sim.env.run()
        assert sim.segments[-1].end_s == pytest.approx(expected)


def test_a_message_costs_the_host_cpu_of_its_own_besides_its_bytes():
    """One core, a 1 s compute op on rank 0 beside a 1 MB message: 0.5 core-second a message and none a
    byte, the op ends at 1.5 s; with 0.5 us a byte as well, at 2 s; an empty message costs nothing."""
    j = job("tsp", Stub())
    for per_byte, nbytes, expected in ((0.0, 1e6, 1.5), (0.5e-6, 1e6, 2.0), (0.5e-6, 0, 1.0)):
        sim = cpu_cluster_sim(1.0, per_byte, net_cpu_s_per_message=0.5)(j, 2)

        def op():
            sim.net_work(nbytes)
            yield from sim.compute(0, 0, ("mlp", 1.0))
        sim.env.process(op())
        sim.env.run()
        assert sim.segments[-1].end_s == pytest.approx(expected)


def test_a_collectives_bytes_cost_the_host_cpu_as_a_sends_do():
    """One core, a 1 s compute op on rank 0 while ranks 0 and 1 send (a point-to-point message) or
    all-reduce (2 ranks: 2 steps of half the buffer each way, 2 x the buffer moved in all) at once,
    each costing the host 1 core-second: the op shares the core and ends at 2 s; with no CPU a byte,
    at 1 s."""
    j = job("tsp", Stub())
    for c, expected in ((0.0, 1.0), (1e-6, 2.0)):
        for how in ("send", "all-reduce"):
            sim = cpu_cluster_sim(1.0, c, htb=False)(j, 2)
            if how == "send":
                sim.message(0, 1, "m")  # rank 1 has posted its receive
                sim.send(0, 1, 1e6, "m")
            else:
                for _ in range(2):
                    sim.all_reduce("r", 0.5e6)
            sim.env.process(sim.compute(0, 0, ("mlp", 1.0)))
            sim.env.run()
            op = next(seg for seg in sim.segments if seg.kind == "compute")
            assert op.end_s == pytest.approx(expected, rel=1e-3), how


def test_a_message_reaches_a_rank_later_while_every_core_computes():
    """One core; a message of 1 s on the wire to rank 1: it is acted on at 1 s on an idle host, at
    1.25 s while rank 0 holds the core computing (busy_wake_s = 0.25)."""
    nbytes = 32 * SPEC.kv_bytes_per_token_per_layer("fp32")
    for compute_s, expected in ((0.0, 1.0), (2.0, 1.25)):
        sim = cpu_cluster_sim(1.0, 0.0, 0.25, htb=False)(job("kvr-e", Stub(), bandwidth=nbytes), 2)
        arrived = sim.message(0, 1, "m")  # rank 1 has posted its receive
        sim.send(0, 1, nbytes, "m")
        if compute_s:
            sim.env.process(sim.compute(0, 0, ("mlp", compute_s)))
        sim.env.run(until=arrived)
        assert sim.env.now == pytest.approx(expected)


def test_a_shaped_link_lets_its_burst_through_at_once_and_refills_at_its_rate():
    """htb's token bucket on a 20 MB/s link (burst 64 KiB of wire bytes): a 1 MB message starting on an
    idle link has its first 64 KiB x 1448/1514 payload bytes pass at once; one right after it gets
    nothing, and after an idle second the bucket is full again (``HtbBuckets``)."""
    from sim.engine.cpu_cluster import WIRE_OVER_PAYLOAD, htb_burst_bytes

    rate = 20e6
    assert htb_burst_bytes(rate * WIRE_OVER_PAYLOAD) == 64 * 1024
    assert htb_burst_bytes(300e6) == 300_000  # 1 ms of a fast class
    sim = cpu_cluster_sim(None)(job("kvr-e", Stub(), bandwidth=rate), 2)
    burst = 64 * 1024 / WIRE_OVER_PAYLOAD
    assert sim.at_once(0, 1, 1e6) == pytest.approx(burst)
    assert sim.at_once(0, 1, 1e6) == 0.0
    assert sim.at_once(1, 0, 1e4) == 1e4  # the other direction is a class of its own
    sim.env.run(until=1e6 / rate * 2 + 1.0)  # both messages' bytes have left; idle for a second since
    assert sim.at_once(0, 1, 1e6) == pytest.approx(burst)
    assert cpu_cluster_sim(None, htb=False)(job("kvr-e", Stub(), bandwidth=rate), 2).at_once(0, 1, 1e6) == 0.0


def test_a_host_of_many_processes_delays_every_step_by_the_measured_host_step():
    """With P processes on the shared cores every message and collective step is acted on
    ``host_step_s(P)`` later: nothing at 2, the probe's figures at 4 and 8, linear between."""
    from sim.engine.cpu_cluster import HOST_STEP_S, host_step_s

    assert host_step_s(2) == 0.0 and host_step_s(1) == 0.0
    assert host_step_s(4) == HOST_STEP_S[4] and host_step_s(8) == HOST_STEP_S[8] > HOST_STEP_S[4] > 0.001
    assert host_step_s(6) == pytest.approx((HOST_STEP_S[4] + HOST_STEP_S[8]) / 2)
    assert host_step_s(16) == HOST_STEP_S[8]
    # A 4-rank all-reduce (tensor parallel's) of free bytes: its 6 ring steps cost 6 host steps, where
    # the shared host is modelled (cores given).
    from sim.engine.collectives import RingAllReduce
    j = Job(**{**job("tsp", Stub()).__dict__, "num_gpus": 4, "cluster": ClusterSpec.uniform("u", 4, 1e18, 0.0)})
    for cores, expected in ((None, 0.0), (4.0, 6 * HOST_STEP_S[4])):
        sim = cpu_cluster_sim(cores)(j, 4)
        reduce = RingAllReduce(sim, 4, 400.0, tag=0)
        for _ in range(4):
            done = reduce.join()
        sim.env.run(until=done)
        assert sim.env.now == pytest.approx(expected)


def test_a_round_is_brought_to_the_profiles_speed_by_the_workload_probe_where_both_have_one():
    """The speed factor of a round is its workload probe over the profile's (``workload_probe_s``,
    reference/measure/workload_bridge.py) where both have one; else its GEMM probe over the profile's;
    else 1. (The GEMM probe's relation to the ranks' work changed by 20% from one day to the next.)"""
    import dataclasses

    from sim.cost.profiled import ProfileCost
    from sim.validation.measured import Measured, _speed_factors

    class Profiled(ProfileCost):
        def __init__(self, profile):  # only the probes matter here
            object.__setattr__(self, "profile", profile)

    m = Measured(ttft_s=1.0, rounds_s=(1.0, 1.0, 1.0), files=("a", "b", "c"), probes_s=(2.0, 3.0, None),
                 workloads_s=(0.12, None, None))
    both = Profiled({"speed_probe_s": 1.0, "workload_probe_s": 0.1})
    assert _speed_factors(dataclasses.replace(job("kvr-e", Stub()), cost_model=both), m) == pytest.approx((1.2, 3.0, 1.0))
    gemm_only = Profiled({"speed_probe_s": 1.0})
    assert _speed_factors(dataclasses.replace(job("kvr-e", Stub()), cost_model=gemm_only), m) == pytest.approx((2.0, 3.0, 1.0))
