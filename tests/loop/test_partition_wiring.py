"""kvr-s, kvr-p and order in scenarios; the chain order; lookup tables through ``python -m sim.partition``;
the runtime's ``resolve_partition``."""
import json

import pytest
import yaml

from sim.partition import PartitionError
from sim.partition.__main__ import main
from sim.partition.order import chain_order, link_times, ring_order
from sim.hardware import GpuSpec
from sim.report import run
from sim.scenario import ScenarioError, load, parse


def doc(schemes, gpus=(2, 4), contexts=(100, 300), cluster=None):
    return {"models": ["tiny-llama"], "hardware": {"gpu": "h200", "dtype": "fp16"},
            "clusters": [cluster or {"name": "c", "kind": "uniform", "gpus": 4, "bandwidth_gb_per_s": 5}],
            "workload": {"contexts": list(contexts), "gpus": list(gpus), "schemes": schemes}}


NOISY = {"name": "noisy", "kind": "nonuniform", "gpus": 8, "links": [
    {"mesh": list(range(8)), "bandwidth_gb_per_s": 300, "latency_us": 10},
    {"ends": [1, 2], "bandwidth_gb_per_s": 50, "latency_us": 10},
    {"ends": [5, 6], "bandwidth_gb_per_s": 50, "latency_us": 10}],
    "background": [{"link": [0, 1], "flows": 2}, {"link": [3, 4], "flows": 3, "on_us": 2000, "off_us": 3000}]}


def test_kvr_s_kvr_p_and_order_run_in_a_sweep():
    s = parse(doc(["kvr-e", "kvr-s", {"name": "p", "kind": "kvr", "partitioner": "kvr-p", "order": "auto"},
                   {"name": "t", "kind": "tsp", "order": "auto"}]))
    assert s.schemes[2].table_contexts == (64, 128, 256, 512)  # powers of two around the contexts
    table = {(r.job.scheme.name, r.job.num_gpus, r.job.context): r for r in run(s, progress=False)}
    for (name, n, c), row in table.items():
        assert sum(row.result.chunks) == c and min(row.result.chunks) >= 1 and len(row.result.gpus) == n
        if name == "kvr-s":
            assert row.result.ttft_s <= table["kvr-e", n, c].result.ttft_s
    assert table["t", 4, 300].result.gpus == (0, 1, 2, 3)  # a uniform cluster keeps the given order


def test_scheme_errors():
    cases = [
        ({"name": "x", "kind": "single", "order": "auto"}, r"schemes\[0\].order: applies to kinds kvr and tsp only"),
        ({"name": "x", "kind": "kvr", "order": "best"}, r"schemes\[0\].order: must be one of \['given', 'auto'\]"),
        ({"name": "x", "kind": "kvr", "table": "t.json"}, r"schemes\[0\].table: applies to partitioner kvr-p only"),
        ({"name": "x", "kind": "kvr", "partitioner": "kvr-p", "table": "t.json", "table_contexts": [64]},
         r"give `table` or `table_contexts`, not both"),
        ({"name": "x", "kind": "kvr", "partitioner": "kvr-p", "table": "/nonexistent.json"},
         r"schemes\[0\].table: table /nonexistent.json: cannot read it"),
        ({"name": "x", "kind": "kvr", "partitioner": "kvr-z"}, r"partitioner: must be one of \['even', 'kvr-s', 'kvr-p'\]"),
    ]
    for scheme, message in cases:
        with pytest.raises(ScenarioError, match=message):
            parse(doc([scheme]))


def test_chain_order_avoids_slow_and_busy_links():
    from sim.scenario_clusters import parse_cluster

    cluster = parse_cluster(NOISY, "c")
    order = chain_order(cluster, [1] * 8, 1e6)
    time = link_times(cluster)
    assert sorted(order) == list(range(8))
    assert all(time(a, b, 1e6) < 1e6 / 250e9 + 2e-5 for a, b in zip(order, order[1:]))  # NVLink, idle
    assert chain_order(cluster, [5, 3], 1e6) == (0, 2)  # 0->1 is busy: the next GPU over
    ring = ring_order(cluster, 4, 1e6)
    assert all(time(a, b, 1e6) < 1e6 / 250e9 + 2e-5 for a, b in zip(ring, ring[1:] + ring[:1]))


def test_build_check_and_use_a_table(tmp_path, capsys):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(doc(["kvr-e"], contexts=(64, 256))))
    out = tmp_path / "t.json"
    assert main(["build-table", str(scenario), "--out", str(out), "--no-progress"]) == 0
    t = json.loads(out.read_text())
    assert t["schema"] == "kvr-partition-table/1" and len(t["entries"]) == 4
    assert {(e["gpus"], e["context"]) for e in t["entries"]} == {(2, 64), (2, 256), (4, 64), (4, 256)}
    assert main(["check-table", str(out), str(scenario), "--contexts", "128,200", "--tolerance", "100"]) == 0
    assert "worst: kvr-p is" in capsys.readouterr().out
    d = doc(["kvr-e", {"name": "p", "kind": "kvr", "partitioner": "kvr-p", "table": str(out)}], contexts=(64, 100))
    rows = {(r.job.scheme.name, r.job.num_gpus, r.job.context): r.result for r in run(parse(d), progress=False)}
    assert rows["p", 4, 64].chunks == tuple(next(e["chunks"] for e in t["entries"] if (e["gpus"], e["context"]) == (4, 64)))
    d["clusters"][0]["name"] = "other"
    with pytest.raises(ScenarioError, match=r"schemes\[1\].table: table .*t.json: no entry for model=tiny-llama .*cluster=other"):
        parse(d)
    d["clusters"][0].update(name="c", bandwidth_gb_per_s=6)
    with pytest.raises(ScenarioError, match=r"was built for another cluster 'c' of the same name; rebuild it"):
        parse(d)


def test_cli_errors(tmp_path, capsys):
    assert main(["build-table", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "t.json")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(doc(["kvr-e"])))
    assert main(["search", str(scenario), "--gpus", "8", "--context", "100"]) == 2
    assert "8 GPUs and 100 tokens do not fit cluster 'c'" in capsys.readouterr().err
    with pytest.raises(PartitionError):
        load(scenario) and __import__("sim.partition.table", fromlist=["load"]).load(str(scenario))


def test_resolve_partition_for_the_runtime():
    from sim.partition.runtime import resolve_partition

    assert resolve_partition("even", 10, 3)[:2] == ((4, 3, 3), (0, 1, 2))
    table = "scenarios/tables/uniform.json"
    entry = next(e for e in json.load(open(table))["entries"]
                 if (e["model"], e["gpus"], e["context"]) == ("llama-2-7b", 4, 4096))
    predicted = resolve_partition("predicted", 4096, 4, model="llama-2-7b", scenario="scenarios/uniform.yaml",
                                  table=table)
    assert predicted.chunks == tuple(entry["chunks"])
    searched = resolve_partition("searched", 300, 2, model="tiny-llama", scenario="scenarios/uniform.yaml")
    assert sum(searched.chunks) == 300 and searched.gpus == (0, 1)
    for kwargs, message in [({}, "needs the model and a scenario file"),
                            ({"model": "llama-2-7b", "scenario": "scenarios/uniform.yaml"}, "needs a lookup table"),
                            ({"model": "llama-2-7b", "scenario": "scenarios/uniform.yaml", "table": table,
                              "dtype": "bf16"}, "no entry for model=llama-2-7b gpu=a100-80gb-sxm dtype=bf16")]:
        with pytest.raises(PartitionError, match=message):
            resolve_partition("predicted", 4096, 4, **kwargs)


def test_timeline_of_a_predicted_partition_needs_its_table_entry(capsys):
    from sim.cli import main as sim_main

    assert sim_main(["scenarios/uniform.yaml", "--out", "/nonexistent/x", "--timeline", "kvr-p,3,5000"]) == 2
    assert "--timeline: table scenarios/tables/uniform.json: no entry for model=llama-2-7b" in capsys.readouterr().err


def test_a_bad_gpu_order_is_refused():
    import dataclasses

    from sim.job import BUILTIN, Job
    from sim.partition.plan import plan

    s = parse(doc(["kvr-e"]))
    job = Job(model=s.models[0], gpu=s.gpu, dtype="fp16", cluster=s.clusters[0], scheme=BUILTIN["kvr-e"], context=100,
              num_gpus=2, gpu_order=(1, 1))
    with pytest.raises(PartitionError, match=r"gpu_order \[1, 1\] must be 2 distinct GPUs of cluster 'c' \(0..3\)"):
        plan(job)
    assert plan(dataclasses.replace(job, gpu_order=(3, 1)))[:2] == ((50, 50), (3, 1))


def test_tsp_ring_follows_the_gpu_order():
    import dataclasses

    from sim.cluster import ClusterSpec, LinkSpec
    from sim.model import ModelSpec
    from sim.job import BUILTIN, Job
    from sim.simulate import simulate

    links = tuple(LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=1e9 if {a, b} == {1, 2} else 1e11, latency_s=0.0)
                  for a in range(4) for b in range(4) if a != b)
    job = Job(model=ModelSpec.preset("tiny-llama"), gpu=GpuSpec.preset("h200"), dtype="fp16",
              cluster=ClusterSpec(name="slow-1-2", num_gpus=4, links=links), scheme=BUILTIN["tsp"], context=4096,
              num_gpus=4)
    given, ordered = simulate(job), simulate(dataclasses.replace(job, gpu_order=(0, 1, 3, 2)))
    assert given.link_bytes[1, 2] > 0 and (1, 2) not in ordered.link_bytes and (2, 1) not in ordered.link_bytes
    assert set(ordered.link_bytes) == {(0, 1), (1, 3), (3, 2), (2, 0)} and ordered.gpus == (0, 1, 3, 2)
    assert ordered.ttft_s < given.ttft_s
    auto = dataclasses.replace(job, scheme=dataclasses.replace(BUILTIN["tsp"], order="auto"))
    assert (1, 2) not in simulate(auto).link_bytes


def test_launch_takes_searched_and_predicted_partitions(monkeypatch):
    from reference.launch import _parser, validate

    monkeypatch.setenv("MASTER_ADDR", "localhost")
    table = "scenarios/tables/uniform.json"
    entry = next(e for e in json.load(open(table))["entries"]
                 if (e["model"], e["gpus"], e["context"]) == ("llama-2-7b", 4, 4096))
    base = ["--model", "llama-2-7b", "--scheme", "kvr", "--context", "4096", "--dtype", "fp16",
            "--partition-scenario", "scenarios/uniform.yaml"]
    _, chunks = validate(_parser().parse_args(base + ["--partition", "predicted", "--table", table]), 4)
    assert chunks == entry["chunks"]
    args = _parser().parse_args(["--model", "tiny-llama", "--scheme", "kvr", "--context", "300", "--partition",
                                 "searched", "--partition-scenario", "scenarios/uniform.yaml"])
    _, chunks = validate(args, 2)
    assert sum(chunks) == 300 and len(chunks) == 2
    for argv, message in [
        (base + ["--partition", "predicted"], "--partition predicted needs --partition-scenario FILE and --table FILE"),
        (base[:-2] + ["--partition", "searched"], "--partition searched needs --partition-scenario FILE"),
        (["--model", "llama-2-7b", "--scheme", "tsp", "--context", "64", "--partition", "searched"],
         "--partition searched is for scheme kvr; 'tsp' uses the even split"),
        (base + ["--partition", "searched", "--partition-cluster", "x"], "cluster must be one of \\['nvlink-300'\\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate(_parser().parse_args(argv), 4)
