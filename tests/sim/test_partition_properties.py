"""Properties of the partitioners (sim/partition/): the search, the closed form it scores with, KVR-P's
rounding and interpolation, and the chain order. Strategies are in tests/strategies.py."""
import dataclasses
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cluster import BackgroundFlow, ClusterSpec
from sim.cost import kv_chain_of
from sim.hardware import GpuSpec
from sim.model import ModelSpec
from sim.partition import even, round_fractions
from sim.partition.plan import plan
from sim.partition.chain import chain_ttft_s, exact_for
from sim.partition.search import balanced, layer_compute_s, search_job, simulator_oracle
from sim.partition.table import interpolate, predict
from sim.job import BUILTIN, SchemeSpec
from sim.job import Job
from sim.simulate import simulate
from strategies import mesh_clusters, partitions, sim_models

A100 = GpuSpec.preset("a100-80gb-sxm")
KVR_S = SchemeSpec(name="kvr-s", kind="kvr", partitioner="kvr-s")


@st.composite
def kvr_s_jobs(draw, background=True, max_gpus=4, max_context=4096):
    n = draw(st.integers(2, max_gpus))
    order = draw(st.sampled_from(["given", "auto"]))
    return Job(model=draw(sim_models()), gpu=A100, dtype="fp16", cluster=draw(mesh_clusters(n, background)),
               scheme=dataclasses.replace(KVR_S, order=order), context=draw(st.integers(n, max_context)),
               num_gpus=n)


@settings(max_examples=25)
@given(kvr_s_jobs())
def test_search_is_never_slower_than_even_or_any_coarse_point(job):
    result, gpus = search_job(job)
    assert sum(result.chunks) == job.context and min(result.chunks) >= 1 and len(result.chunks) == job.num_gpus
    simulated = simulator_oracle(job, gpus)
    assert simulated(result.chunks) == result.ttft_s  # the simulator's word, not the closed form's
    assert result.ttft_s <= simulate(dataclasses.replace(job, scheme=BUILTIN["kvr-e"], gpu_order=gpus)).ttft_s
    for chunks, _ in result.coarse:
        assert result.ttft_s <= simulated(chunks) * (1 + 1e-9)  # coarse points were scored by the closed form
    assert plan(job)[:2] == (result.chunks, gpus)


@settings(max_examples=40)
@given(st.data())
def test_closed_form_equals_the_simulator(data):
    n = data.draw(st.integers(1, 5))
    cluster = data.draw(mesh_clusters(n, background=False))
    context = data.draw(st.integers(n, 8192))
    chunks = tuple(data.draw(partitions(context, n)))
    gpus = tuple(data.draw(st.permutations(range(n))))
    # the ideal links, or NCCL's p2p model with compute slowed beside its kernels (by a drawn amount)
    communication = data.draw(st.sampled_from(["links", "nccl"]))
    slowdown = data.draw(st.sampled_from([0.0, 0.3, 1.0])) if communication == "nccl" else 0.0
    job = Job(model=data.draw(sim_models()), gpu=A100.replace(communication=communication),
              dtype=data.draw(st.sampled_from(["fp16", "fp32"])), cluster=cluster, scheme=KVR_S, context=context,
              num_gpus=n)
    assert exact_for(job, gpus)
    with mock.patch("sim.engine.comm_cost.compute_slowdown", lambda blocks: slowdown * blocks / 8):
        fast, slow = chain_ttft_s(job, chunks, gpus), simulator_oracle(job, gpus)(chunks)
    assert abs(fast / slow - 1) <= 1e-9


def test_closed_form_is_not_used_on_busy_or_shared_links():
    cluster = ClusterSpec.uniform("u", 3, 1e11, 1e-6, background=(BackgroundFlow(src=1, dst=2),))
    job = Job(model=ModelSpec.preset("tiny-llama"), gpu=A100, dtype="fp16", cluster=cluster, scheme=KVR_S, context=99,
              num_gpus=3)
    assert not exact_for(job, (0, 1, 2)) and exact_for(job, (0, 2, 1)) and exact_for(job, (2, 1, 0))


@settings(max_examples=30)
@given(st.data())
def test_balanced_ranks_take_equal_time_per_layer(data):
    n = data.draw(st.integers(1, 8))
    context = data.draw(st.integers(64 * n, 32768))
    job = Job(model=data.draw(sim_models()), gpu=A100, dtype="fp16", cluster=ClusterSpec.uniform("u", n, 1e11, 0),
              scheme=KVR_S, context=context, num_gpus=n)
    fractions = balanced(context, n, job.cost(), kv_chain_of(job))
    assert abs(sum(fractions) - 1) < 1e-12 and min(fractions) > 0
    before, times = 0.0, []
    for rank, f in enumerate(fractions):
        if f * context > 1.5:  # a rank held at its 1-token minimum is faster than the rest
            times.append(layer_compute_s(job.cost(), rank, f * context, before, kv_chain_of(job)))
        before += f * context
    assert max(times) <= min(times) * (1 + 1e-6)


@given(st.data())
def test_round_fractions_sums_to_the_context_with_no_empty_chunk(data):
    n = data.draw(st.integers(1, 16))
    context = data.draw(st.integers(n, 100_000))
    fractions = data.draw(st.lists(st.floats(1e-6, 1.0), min_size=n, max_size=n))
    chunks = round_fractions(context, fractions)
    assert sum(chunks) == context and min(chunks) >= 1
    exact = [f / sum(fractions) * context for f in fractions]
    if all(x >= 1 for x in exact):  # plain largest remainder: every chunk within a token of its share
        assert all(abs(c - x) < 1 for c, x in zip(chunks, exact))


@st.composite
def tables(draw):
    """Table entries of one job key: P ranks, 2-5 contexts, random fractions."""
    n = draw(st.integers(1, 8))
    contexts = sorted(draw(st.sets(st.integers(max(n, 2), 65536), min_size=1, max_size=5)))
    entries = []
    for c in contexts:
        chunks = draw(partitions(c, n))
        entries.append({"context": c, "fractions": [x / c for x in chunks], "chunks": chunks,
                        "order": list(range(n))})
    return entries


@given(tables(), st.data())
def test_kvr_p_interpolates_rounds_and_clamps(entries, data):
    n, contexts = len(entries[0]["chunks"]), [e["context"] for e in entries]
    for e in entries:  # at a table context: the searched chunks themselves
        assert list(predict(entries, e["context"]).chunks) == e["chunks"]
    context = data.draw(st.integers(n, 70000))
    chunks = predict(entries, context).chunks
    assert sum(chunks) == context and min(chunks) >= 1 and len(chunks) == n
    if context < contexts[0] or context > contexts[-1]:  # outside the range: the nearest entry's fractions
        nearest = entries[0] if context < contexts[0] else entries[-1]
        assert list(chunks) == round_fractions(context, nearest["fractions"])
    elif context not in contexts:  # between two entries: each fraction between its neighbours'
        hi = next(i for i, c in enumerate(contexts) if c > context)
        fractions, _ = interpolate(entries, context)
        for rank, f in enumerate(fractions):
            ends = [entries[j]["fractions"][rank] for j in (hi - 1, hi)]
            assert min(ends) - 1e-12 <= f <= max(ends) + 1e-12
        if min(fractions) * context >= 1:  # and each chunk within a token of its share
            assert all(abs(c - f * context) < 1 for c, f in zip(chunks, fractions))


def test_even_is_kvr_e():
    assert even(10, 3) == [4, 3, 3]


@settings(max_examples=25)
@given(st.data())
def test_two_gpu_search_is_within_a_percent_of_every_split(data):
    """On 2 GPUs every split point can be scored: the search's answer is about as good as the best of them
    (not always exactly: the search is local, and the roofline's kinks can leave a second valley; 300
    examples found a 1-layer model where it ends 0.1 % above the best split)."""
    context = data.draw(st.integers(2, 3000))
    job = Job(model=data.draw(sim_models()), gpu=A100, dtype="fp16", cluster=data.draw(mesh_clusters(2, False)),
              scheme=KVR_S, context=context, num_gpus=2)
    result, gpus = search_job(job)
    best = min(chain_ttft_s(job, (s, context - s), gpus) for s in range(1, context))
    assert result.ttft_s <= best * (1 + 1e-2)


@settings(max_examples=20)
@given(st.data())
def test_closed_form_equals_the_simulator_where_shared_links_fit(data):
    """Host-staged GPUs: chain routes share PCIe uplinks; where their rates fit together the closed form
    is used and equals SimPy; where an uplink is narrower than the flows it carries, it is not used."""
    from sim.scenario_clusters import parse_cluster
    uplink = data.draw(st.sampled_from([12.0, 24.8]))
    cluster = parse_cluster({"name": "h", "kind": "host-staged", "gpus": 4, "bandwidth_gb_per_s": 10,
                             "switch_uplink_gb_per_s": uplink}, "clusters[0]")
    context = data.draw(st.integers(4, 4096))
    chunks = tuple(data.draw(partitions(context, 4)))
    communication = data.draw(st.sampled_from(["links", "nccl"]))
    job = Job(model=data.draw(sim_models()), gpu=A100.replace(communication=communication), dtype="fp16",
              cluster=cluster, scheme=KVR_S, context=context, num_gpus=4)
    gpus = (0, 1, 2, 3)
    assert exact_for(job, gpus) == (uplink >= 20)  # GPU 0 -> 1 and 1 -> 2 both climb switch 0's uplink
    if uplink >= 20:
        fast, slow = chain_ttft_s(job, chunks, gpus), simulator_oracle(job, gpus)(chunks)
        assert abs(fast / slow - 1) <= 1e-9
