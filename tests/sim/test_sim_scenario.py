"""Loading scenarios: what good YAML turns into."""
import pytest
import yaml

from sim.cluster import BackgroundFlow, LinkSpec
from sim.scenario import ScenarioError, load, parse
from sim.scenario_clusters import NODES_SWITCH
from sim.job import BUILTIN, SchemeSpec
from sim.partition.plan import plan


def doc(**cluster):
    return {"models": ["tiny-llama"], "hardware": {"gpu": "h200", "dtype": "fp16", "peak_tflops": 500,
                                                   "launch_overhead_us": 0},
            "clusters": [{"name": "c", "gpus": 4, **cluster}],
            "workload": {"contexts": [100], "gpus": [2, 4], "schemes": ["tsp", "kvr-e"]}}


def test_uniform_and_throttled():
    s = parse(doc(kind="uniform", bandwidth_gb_per_s=300, latency_us=5))
    (c,) = s.clusters
    assert c.links == () and len(c.all_links()) == 12 and set(c.all_links()) == {LinkSpec(src=a, dst=b, bandwidth_bytes_per_s=300e9, latency_s=5e-6)
                                                 for a in range(4) for b in range(4) if a != b}
    assert (s.gpu.peak_flops_per_s, s.gpu.hbm_bytes_per_s, s.gpu.launch_overhead_s) == (500e12, 4.8e12, 0.0)
    t = parse(doc(kind="throttled")).clusters[0]
    assert {(l.bandwidth_bytes_per_s, l.latency_s) for l in t.all_links()} == {(10e9, 0.0)}
    assert s.schemes == (BUILTIN["tsp"], BUILTIN["kvr-e"])


def test_nodes_mesh_ends_and_later_links_replace_earlier_ones():
    c = parse(doc(kind="nonuniform", switches=["x"],
                  nodes={"gpus_per_node": 2, "intra": {"bandwidth_gb_per_s": 100},
                         "inter": {"bandwidth_gb_per_s": 10, "latency_us": 3}},
                  links=[{"ends": [0, 1], "bandwidth_gb_per_s": 50, "directed": True},
                         {"ends": [3, "x"], "bandwidth_gb_per_s": 1}],
                  background=[{"link": [0, NODES_SWITCH], "flows": 2, "start_us": 1, "on_us": 2, "off_us": 3}]
                  )).clusters[0]
    bw = {(l.src, l.dst): l.bandwidth_bytes_per_s for l in c.links}
    assert bw == {(0, 1): 50e9, (1, 0): 100e9, (2, 3): 100e9, (3, 2): 100e9,
                  **{(g, NODES_SWITCH): 10e9 for g in range(4)}, **{(NODES_SWITCH, g): 10e9 for g in range(4)},
                  (3, "x"): 1e9, ("x", 3): 1e9}
    assert c.switches == ("x", NODES_SWITCH)
    assert c.background == (BackgroundFlow(src=0, dst=NODES_SWITCH, flows=2, start_s=1e-6, on_s=2e-6, off_s=3e-6),)


def test_explicit_partitions():
    d = doc(kind="uniform", bandwidth_gb_per_s=1)
    d["workload"]["schemes"] = [{"name": "f", "kind": "kvr", "partition": [0.5, 0.3, 0.2, 0.0001 + -0.0001]}]
    with pytest.raises(ScenarioError, match=r"partition\[3\]: must be > 0, got 0.0"):
        parse(d)
    d["workload"]["schemes"] = [{"name": "f", "kind": "kvr", "partition": [0.6, 0.4]},
                                {"name": "t", "kind": "kvr", "partition": {100: [40, 30, 20, 10]}},
                                {"name": "m", "kind": "tsp", "attention": "masked"}]
    s = parse(d)
    assert s.schemes == (SchemeSpec(name="f", kind="kvr", fractions=(0.6, 0.4)),
                         SchemeSpec(name="t", kind="kvr", tokens=((100, (40, 30, 20, 10)),)),
                         SchemeSpec(name="m", kind="tsp", attention="masked"))
    assert [(j.scheme.name, j.num_gpus, list(plan(j).chunks)) for j in s.jobs()] == [
        ("f", 2, [60, 40]), ("t", 4, [40, 30, 20, 10]), ("m", 2, [50, 50]), ("m", 4, [25, 25, 25, 25])]


def test_load_names_the_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(doc(kind="uniform")))
    with pytest.raises(ScenarioError, match=r"x.yaml: clusters\[0\]: a uniform cluster needs bandwidth_gb_per_s"):
        load(path)
    path.write_text(yaml.safe_dump(doc(kind="uniform", bandwidth_gb_per_s=2)))
    assert load(path).name == "x"


def test_a_model_from_a_hugging_face_config(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 256}
    (tmp_path / "config.json").write_text(__import__("json").dumps(cfg))
    d = doc(kind="uniform", bandwidth_gb_per_s=1)
    d["models"] = [str(tmp_path / "config.json"), str(tmp_path)]
    a, b = parse(d).models
    assert a == b and (a.num_kv_heads, a.head_dim, a.num_layers) == (2, 16, 2)


def test_paths_in_a_scenario_are_relative_to_its_folder(tmp_path, monkeypatch):
    """models, hardware.profile, measured.results and measured.replays resolve from the scenario's folder,
    whatever the working directory."""
    import os

    scenario = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "scenarios", "validate-cpu.yaml")
    monkeypatch.chdir(tmp_path)
    s = load(scenario)
    root = os.path.dirname(os.path.dirname(scenario))
    assert [m.name for m in s.models] == ["cpu-llama-h512"]
    assert dict(s.profiles)["cpu-llama-h512"].model.hidden_size == 512
    files = s.measured.files()
    assert files and all(f.startswith(os.path.join(root, "results", "cpu")) for f in files)
    assert s.measured.replays == (os.path.join(root, "results", "cpu", "replay", "*.json"),)
