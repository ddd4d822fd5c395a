"""Communication's cost to compute (communication: nccl): compute beside NCCL kernels runs
1 + compute_slowdown(their thread blocks) times slower, so a send can delay the chain that made it; the
table is the checked-in measurement's; the analytic eager attention against transformers' measured
attention (sim/validation/attention_impl.py)."""
import json
from unittest import mock

import pytest

from sim.cluster import ClusterSpec
from sim.cost import causal_pairs
from sim.cost.analytic import AnalyticCost
from sim.engine import Sim
from sim.hardware import GpuSpec
from sim.job import BUILTIN, Job
from sim.model import ModelSpec
from sim.simulate import simulate
from sim.validation import attention_impl

H200 = GpuSpec.preset("h200")


def two_gpu_sim(slowdown: float) -> Sim:
    job = Job(model=ModelSpec.preset("tiny-llama"), gpu=H200.replace(communication="nccl"), dtype="fp16",
              cluster=ClusterSpec.uniform("u", 2, 1e9, 0.0), scheme=BUILTIN["kvr-e"], context=8, num_gpus=2)
    with mock.patch("sim.engine.comm_cost.compute_slowdown", lambda blocks: slowdown * min(blocks, 1)):
        return Sim(job, 2)


@pytest.mark.parametrize("slowdown", [0.0, 0.5])
def test_compute_beside_a_send_runs_slower_only_while_the_send_lasts(slowdown):
    sim = two_gpu_sim(slowdown)
    choice, _ = sim.nccl.send(0, 1, 1e6)
    send_s = choice.latency_s + 1e6 / choice.bus_bytes_per_s  # about 1 ms at 1 GB/s
    work_s = 3e-3

    def rank0():
        sim.send(0, 1, 1e6, tag=0)
        yield from sim.compute(0, 0, ("mlp", work_s))
    proc = sim.env.process(rank0())
    sim.env.run(until=proc)
    # inside the send, work advances at 1 / (1 + slowdown): send_s of time does send_s / (1 + s) of work
    assert sim.env.now == pytest.approx(work_s + send_s * slowdown / (1 + slowdown), rel=1e-12)
    kinds = [s.op for s in sim.segments if s.kind == "compute"]
    assert kinds == (["mlp", "comm-contention"] if slowdown else ["mlp"])


def test_a_sends_cost_to_compute_delays_the_kvr_chain():
    # KVR-S: the searched chain keeps every rank busy, so sends overlap compute (KVR-E's last rank is
    # the laggard and finds its messages already there: there no send overlaps its compute)
    job = Job(model=ModelSpec.preset("llama-2-7b"), gpu=H200.replace(communication="nccl"), dtype="bf16",
              cluster=ClusterSpec.uniform("u", 4, 50e9, 0.0), scheme=BUILTIN["kvr-s"], context=8192, num_gpus=4)
    with mock.patch("sim.engine.comm_cost.compute_slowdown", lambda blocks: 0.0):
        free = simulate(job).ttft_s
    with mock.patch("sim.engine.comm_cost.compute_slowdown", lambda blocks: 0.2 * min(blocks, 1)):
        slowed = simulate(job)
    assert slowed.ttft_s > free * 1.001
    assert any(s.op == "comm-contention" for s in slowed.segments)


def test_the_links_model_costs_compute_nothing():
    job = Job(model=ModelSpec.preset("llama-2-7b"), gpu=H200, dtype="bf16",
              cluster=ClusterSpec.uniform("u", 4, 50e9, 0.0), scheme=BUILTIN["kvr-e"], context=8192, num_gpus=4)
    with mock.patch("sim.engine.comm_cost.compute_slowdown", lambda blocks: 0.2 * min(blocks, 1)):
        result = simulate(job)
    assert not any(s.op == "comm-contention" for s in result.segments)


def test_eager_attention_computes_every_pair_and_costs_more_than_flash():
    model = ModelSpec.preset("llama-2-7b")
    flash, eager = (AnalyticCost(model, H200.replace(attention_impl=impl), "fp16") for impl in ("flash", "eager"))
    q, k = 1024, 8192
    assert eager.attention_s(q, k, causal_pairs(q, k)) == eager.attention_s(q, k, q * k)  # masked work computed
    assert flash.attention_s(q, k, causal_pairs(q, k)) < flash.attention_s(q, k, q * k)  # skipped
    assert eager.attention_s(q, k, q * k) > 3 * flash.attention_s(q, k, q * k)


def test_the_attention_check_compares_every_measured_point(tmp_path):
    rows = [{"model": "llama-2-7b", "impl": impl, "queries": 1024, "keys": 4096, "median_s": s, "samples_s": [s]}
            for impl, s in (("eager", 1.4e-3), ("sdpa", 2.5e-4))]
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"schema": "hf-attention/1", "device": "NVIDIA H200", "dtype": "fp16", "rows": rows}))
    out = attention_impl.compare(attention_impl.load(str(path)))
    eager = AnalyticCost(ModelSpec.preset("llama-2-7b"), H200.replace(attention_impl="eager"), "fp16")
    assert out[0]["analytic_s"] == eager.attention_s(1024, 4096, 1024 * 4096)
    assert out[0]["error"] == pytest.approx(out[0]["analytic_s"] / 1.4e-3 - 1)
    assert set(attention_impl.summary(out)) == {("llama-2-7b", "eager"), ("llama-2-7b", "sdpa")}
    path.write_text("{}")
    with pytest.raises(attention_impl.AttentionCheckError, match="hf-attention/1"):
        attention_impl.load(str(path))


def test_the_slowdown_table_is_the_checked_in_measurement():
    """comm_cost.COMM_COMPUTE_SLOWDOWN: per thread-block count, the mean over both models and three layer sizes
    of slowdown / overlap of the resident kernel, as the H100 measurements in profiles/ give it."""
    import os
    from sim.engine import comm_cost
    root = os.path.join(os.path.dirname(__file__), "..", "..", "profiles", "gpu")
    rows = [r for m in ("llama-2-7b", "falcon-7b")
            for r in json.load(open(os.path.join(root, f"h100-comm-cost-{m}-bf16.json")))["rows"]]
    for ctas, value in zip(comm_cost.COMM_CTAS_MEASURED, comm_cost.COMM_COMPUTE_SLOWDOWN):
        points = [r["slowdown"] / r["overlap"] for r in rows if r["side"] == f"resident-{ctas}"]
        assert len(points) == 6 and value == pytest.approx(sum(points) / len(points), abs=5e-4)
    assert comm_cost.compute_slowdown(0) == 0.0 and comm_cost.compute_slowdown(2) == comm_cost.COMM_COMPUTE_SLOWDOWN[1]
    assert comm_cost.compute_slowdown(32) == comm_cost.COMM_COMPUTE_SLOWDOWN[-1]
    assert comm_cost.COMM_COMPUTE_SLOWDOWN[0] < comm_cost.compute_slowdown(3) < comm_cost.COMM_COMPUTE_SLOWDOWN[2]


def test_nccl_send_kernels_use_two_blocks_over_pcie_and_two_a_link_over_nvlink():
    from sim.engine.nccl import Comm, p2p_ctas
    assert p2p_ctas(Comm(ranks=2, bandwidth_bytes_per_s=10e9, transport="pci", arch="ampere")) == 2
    assert p2p_ctas(Comm(ranks=2, bandwidth_bytes_per_s=300e9, transport="nvlink", arch="ampere")) == 32  # 12 links
    assert p2p_ctas(Comm(ranks=2, bandwidth_bytes_per_s=50e9, transport="nvlink", arch="ampere")) == 4  # 2 links
