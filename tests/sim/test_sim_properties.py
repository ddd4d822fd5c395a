"""Properties over random models, clusters and partitions (strategies in tests/strategies.py).

The monotonicity properties hold on full meshes with one latency (every route is the direct link) and
constant background traffic: there, no two transfers of a scheme share a link except behind one another
on a pair's FIFO channel, so an earlier or smaller transfer can never delay another. (With shared
multi-hop routes or on/off background traffic, max-min fair sharing can make an earlier transfer finish
later: a real network's anomaly, not the simulator's.) TSP's context grows in steps of P tokens: the
runtime pads shorter chunks to the longest with a copy, so a context that P divides can be a copy
faster than one token less.
"""
import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.hardware import GpuSpec
from sim.job import BUILTIN, SchemeSpec
from sim.job import Job
from sim.simulate import simulate
from strategies import mesh_clusters, partitions, sim_models

A100 = GpuSpec.preset("a100-80gb-sxm")
TOL = 1 + 1e-12


@st.composite
def jobs(draw, background=True):
    n = draw(st.integers(1, 6))
    cluster = draw(mesh_clusters(n, background=background))
    context = draw(st.integers(max(n, 2), 4096))
    kind = draw(st.sampled_from(["single", "tsp", "tsp-masked", "kvr-e", "kvr"]))
    if kind == "kvr":
        chunks = draw(partitions(context, n))
        scheme = SchemeSpec(name="kvr", kind="kvr", tokens=((context, tuple(chunks)),))
    else:
        scheme = BUILTIN[kind]
    return Job(model=draw(sim_models()), gpu=A100, dtype=draw(st.sampled_from(["fp16", "fp32"])),
               cluster=cluster, scheme=scheme, context=context, num_gpus=1 if kind == "single" else n)


@settings(max_examples=40)
@given(jobs(), st.integers(1, 512))
def test_ttft_never_falls_as_the_context_grows(job, more):
    if job.scheme.tokens:  # an explicit partition: grow the last chunk
        (context, chunks), = job.scheme.tokens
        bigger = dataclasses.replace(job.scheme, tokens=((context + more, (*chunks[:-1], chunks[-1] + more)),))
        longer = dataclasses.replace(job, scheme=bigger, context=context + more)
    else:
        step = job.num_gpus if job.scheme.kind == "tsp" else 1  # keep the padded ranks the same
        longer = dataclasses.replace(job, context=job.context + more * step)
    assert simulate(longer).ttft_s >= simulate(job).ttft_s / TOL


@settings(max_examples=40)
@given(jobs(), st.data())
def test_ttft_never_rises_when_a_link_gets_faster(job, data):
    links = list(job.cluster.all_links())  # a mesh spelled out, so any one link can change
    if not links:
        return
    i = data.draw(st.integers(0, len(links) - 1))
    factor = data.draw(st.floats(1.0, 100.0))
    links[i] = dataclasses.replace(links[i], bandwidth_bytes_per_s=links[i].bandwidth_bytes_per_s * factor)
    faster = dataclasses.replace(job, cluster=dataclasses.replace(job.cluster, links=tuple(links), mesh=None))
    assert simulate(faster).ttft_s <= simulate(job).ttft_s * TOL


@settings(max_examples=40)
@given(jobs(), st.sampled_from(["peak_flops_per_s", "hbm_bytes_per_s", "matmul_efficiency",
                                "attention_efficiency", "memory_efficiency", "launch_overhead_s"]),
       st.floats(1.0, 10.0))
def test_ttft_never_rises_when_the_gpus_get_faster(job, field, factor):
    value = getattr(job.gpu, field)
    better = value / factor if field == "launch_overhead_s" else min(value * factor, 1.0) if "eff" in field \
        else value * factor
    faster = dataclasses.replace(job, gpu=job.gpu.replace(**{field: better}))
    assert simulate(faster).ttft_s <= simulate(job).ttft_s * TOL


@settings(max_examples=40)
@given(jobs())
def test_bytes_sent_equal_bytes_received_and_the_schemes_traffic(job):
    result = simulate(job)
    sent = sum(r.bytes_sent for r in result.ranks)
    assert sent == sum(r.bytes_received for r in result.ranks)
    assert sent == sum(result.link_bytes.values())  # direct routes: one link per transfer
    kvb = job.model.kv_bytes_per_token_per_layer(job.dtype) * job.model.num_layers
    p, chunks = len(result.chunks), result.chunks
    if job.scheme.kind == "kvr":
        assert sent == sum(sum(chunks[: i + 1]) * kvb for i in range(p - 1))
        assert [r.bytes_received for r in result.ranks] == [0] + [sum(chunks[:i]) * kvb for i in range(1, p)]
    elif job.scheme.kind == "tsp":
        assert sent == p * (p - 1) * max(chunks) * kvb
    else:
        assert sent == 0


@settings(max_examples=20)
@given(jobs())
def test_simulation_is_deterministic(job):
    a, b = simulate(job), simulate(job)
    assert a == b and a.segments == b.segments and a.link_bytes == b.link_bytes
