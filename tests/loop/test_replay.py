"""Per-rank replays (reference/measure/replay.py) and their comparison with the simulator
(sim/validation/replay.py): a tiny model at a tiny context runs every rank, and every rank gets a
finite error."""
import json
import math

import pytest

from reference.measure.replay import main as replay_main
from sim.scenario import load
from sim.validation import replay

SCENARIO = """\
name: replay-tiny
models: [tiny-llama]
hardware: {gpu: h100-sxm, dtype: fp32}
clusters:
  - {name: u, kind: uniform, gpus: 2, bandwidth_gb_per_s: 1}
workload:
  contexts: [48]
  gpus: [2]
  schemes: [tsp, kvr-e, {name: kvr-x, kind: kvr, partition: [0.75, 0.25]}]
measured:
  results: []
  replays: [replay.json]
"""


def test_replay_runs_every_rank_and_compares_with_a_finite_error(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "replay.json"
    assert replay_main([str(path), "--out", str(out), "--warmup", "0", "--repeat", "1"]) == 0
    doc = json.loads(out.read_text())
    got = [(e["scheme"], e["rank"], e["chunk"], e["past"]) for e in doc["replays"]]
    assert got == [("tsp", 0, 24, 0), ("tsp", 1, 24, 24), ("kvr-e", 0, 24, 0), ("kvr-e", 1, 24, 24),
                   ("kvr-x", 0, 36, 0), ("kvr-x", 1, 12, 36)]
    assert all(e["median_s"] > 0 and e["probe_s"] > 0 for e in doc["replays"])
    scenario = load(path)
    assert scenario.measured.replays == (str(out),)
    rows = replay.compare(scenario, replay.load(list(scenario.measured.replays)))
    assert [(r.scheme, r.rank, r.chunk, r.past) for r in rows] == got
    assert all(r.simulated_s > 0 and math.isfinite(r.error) for r in rows)
    table = replay.text(rows)
    assert "MAPE per-rank replays:" in table and "kvr-x" in table


def test_simulated_busy_time_is_compute_only():
    from sim.cluster import ClusterSpec
    from sim.hardware import GpuSpec
    from sim.model import ModelSpec
    from sim.job import BUILTIN, Job

    spec = ModelSpec.preset("tiny-llama")
    slow = ClusterSpec.uniform("slow", 2, 1e3, 0.0)  # transfers take seconds: busy time must not see them
    fast = ClusterSpec.uniform("fast", 2, 1e18, 0.0)
    for scheme in ("tsp", "kvr-e"):
        busy = [replay.simulated_busy_s(Job(model=spec, gpu=GpuSpec.preset("h100-sxm"), dtype="fp32",
                                            cluster=c, scheme=BUILTIN[scheme], context=64, num_gpus=2),
                                        (32, 32), None) for c in (slow, fast)]
        assert busy[0] == pytest.approx(busy[1]) and max(busy[0]) < 1e-2


def test_unreadable_replay_file_is_a_replay_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(replay.ReplayError, match="bad.json"):
        replay.load([str(bad)])


def test_replay_rounds_take_the_median_of_each_ranks_rounds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SCENARIO)
    out = tmp_path / "replay.json"
    assert replay_main([str(path), "--out", str(out), "--warmup", "0", "--repeat", "2", "--rounds", "3",
                        "--schemes", "kvr-x"]) == 0
    doc = json.loads(out.read_text())
    assert doc["rounds"] == 3 and [(e["rank"], e["chunk"]) for e in doc["replays"]] == [(0, 36), (1, 12)]
    for e in doc["replays"]:
        assert len(e["rounds_median_s"]) == 3 and len(e["samples_s"]) == 6
        assert e["median_s"] == sorted(e["rounds_median_s"])[1]
    assert replay_main([str(path), "--out", str(out), "--rounds", "0"]) == 2


CONTENDERS = SCENARIO.replace("schemes: [tsp, kvr-e, {name: kvr-x, kind: kvr, partition: [0.75, 0.25]}]",
                              "schemes: [ring, ring-zigzag, ulysses, tp, pipeline]")


def test_the_contenders_replay_through_their_own_prefill(tmp_path):
    """Every rank of ring, ring-zigzag, ulysses and pipeline, and tp's rank 0, run alone over a
    SoloTransport; each is matched to the simulator's busy time for that rank."""
    path = tmp_path / "s.yaml"
    path.write_text(CONTENDERS)
    out = tmp_path / "replay.json"
    assert replay_main([str(path), "--out", str(out), "--warmup", "0", "--repeat", "1", "--models", "tiny-llama"]) == 0
    doc = json.loads(out.read_text())
    got = [(e["scheme"], e["rank"]) for e in doc["replays"]]
    assert got == [("ring", 0), ("ring", 1), ("ring-zigzag", 0), ("ring-zigzag", 1), ("ulysses", 0),
                   ("ulysses", 1), ("tp", 0), ("pipeline", 0), ("pipeline", 1)]
    rows = replay.compare(load(path), replay.load([str(out)]))
    assert [(r.scheme, r.rank) for r in rows] == got
    assert all(r.simulated_s > 0 and r.measured_s > 0 and math.isfinite(r.error) for r in rows)


def test_an_unknown_model_is_a_named_error(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(CONTENDERS)
    assert replay_main([str(path), "--out", str(tmp_path / "r.json"), "--models", "llama-9"]) == 2
    assert "--models: llama-9 not in" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_a_solo_rank_computes_what_its_rank_computes_in_the_world():
    """SoloTransport runs the scheme's own code: rank 0 of a ring has no received block in its own
    output (it attends to its own block only), so its logits equal those of rank 0 in a real
    2-rank run; a later rank's differ (its received blocks are zeros)."""
    import torch

    from reference.checkpoint import random_model
    from reference.schemes import prefill
    from reference.transport import SoloTransport, run_in_threads
    from sim.model import ModelSpec

    spec = ModelSpec.preset("tiny-llama")
    model = random_model(spec, seed=1)
    ids = torch.randint(0, spec.vocab_size, (1, 32), generator=torch.Generator().manual_seed(2))
    world = run_in_threads(2, lambda t: prefill("ring", model, ids, [16, 16], t).logits)
    solo = [prefill("ring", model, ids, [16, 16], SoloTransport(r, 2)).logits for r in range(2)]
    assert torch.equal(solo[0], world[0])
    assert not torch.allclose(solo[1], world[1])


@pytest.mark.parametrize("kind", ["ring", "ring-zigzag", "ulysses", "tp", "pipeline"])
def test_a_replayed_rank_runs_the_prompt_of_its_context_whatever_its_chunks_sum_to(kind, monkeypatch):
    """tp's and pipeline's ranks each run all C tokens, so the plan's chunks for them are [C] * P; a
    replay once made its prompt sum(chunks) = P * C tokens long and timed P times the work (a tp rank
    at P = 8 took 3 s on the CPU cluster model where its work is 0.1 s)."""
    import torch

    import reference.schemes
    from reference.checkpoint import random_model
    from reference.measure.timing import scheme_rank_run
    from reference.schemes.base import Prefill
    from sim.model import ModelSpec

    spec = ModelSpec.preset("tiny-llama")
    chunks = reference.schemes.layout_chunks(kind, context=48, world_size=4)
    seen = []
    monkeypatch.setattr(reference.schemes, "prefill",
                        lambda scheme, model, ids, *a, **k: seen.append((scheme, ids.shape[1])) or
                        Prefill(None, None))
    run = scheme_rank_run(random_model(spec, seed=0), spec, kind=kind, context=48, chunks=chunks, rank=1,
                          device=torch.device("cpu"), pieces=8)
    assert run() is None
    assert seen == [(kind, 48)]


@pytest.mark.parametrize("past", [0, 20])
def test_a_rank_against_a_resident_past_computes_what_it_does_against_a_copied_one(past):
    """``rank_run``'s two KV chains (the runtime's KV-Runahead rank since and before 2026-12-06) run the
    same chunk against the same past: one writes the chunk's K/V after the past in the layer's buffer,
    the other concatenates; the hidden states are the same, and the resident buffers hold past + chunk
    tokens, the chunk's K after the past's."""
    import torch

    from reference.checkpoint import random_model
    from reference.measure.timing import rank_run
    from sim.model import ModelSpec

    spec = ModelSpec.preset("tiny-llama")
    model = random_model(spec, seed=3)
    cpu = torch.device("cpu")
    runs = {chain: rank_run(model, spec, device=cpu, dtype=torch.float32, chunk=12, past=past, last=False,
                            seed=4, kv_chain=chain) for chain in ("copy", "resident")}
    copied, resident = runs["copy"](), runs["resident"]()
    assert resident.shape == (1, 12, spec.hidden_size)
    torch.testing.assert_close(resident, copied, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs["resident"](), resident, rtol=0, atol=0)  # a second run: the same
    with pytest.raises(ValueError, match="kv_chain 'paged'"):
        rank_run(model, spec, device=cpu, dtype=torch.float32, chunk=12, past=past, last=False, kv_chain="paged")
