"""Host-staged clusters (GPUs without peer-to-peer) and noise as a random process: seeded draws of
competing flows with random on/off periods, rate and latency jitter, summarised over the draws."""
import dataclasses
import random

import pytest
import yaml
from hypothesis import given, settings

from sim.cluster import BackgroundFlow, ClusterSpec, NoiseSpec
from sim.engine import Sim
from sim.noise import Spread, draw, flow_seed, links_for, quiet
from sim.partition.plan import plan
from sim.report import _run_one, rows, write_files
from sim.scenario import ScenarioError, parse
from sim.scenario_clusters import HOST_STAGED_DEFAULTS, parse_cluster
from strategies import noise_specs
from test_sim_engine import GB, job, run_transfers

HOST = {"name": "host", "kind": "host-staged", "gpus": 8}


def all_gather_s(cluster, p=8, chunk=1e8):
    sim = Sim(job(cluster=cluster, gpus=p), p)
    done = [sim.all_gather(0, chunk) for _ in range(p)]
    sim.env.run(until=sim.env.all_of(done))
    return sim.env.now


# ----- host-staged ------------------------------------------------------------------------------------
def test_host_staged_routes_every_transfer_through_its_switches_and_sockets():
    c = parse_cluster(HOST, "clusters[0]")
    assert c.route(0, 1) == ((0, "pcie0"), ("pcie0", "host0"), ("host0", "pcie0-down"), ("pcie0-down", 1))
    assert c.route(1, 7) == ((1, "pcie0"), ("pcie0", "host0"), ("host0", "host1"), ("host1", "pcie3-down"),
                             ("pcie3-down", 7))
    assert all(isinstance(n, int) or n.startswith(("pcie", "host")) for n in c.graph().nodes)
    assert sum(l.latency_s for l in map(lambda e: c.link(*e), c.route(0, 5))) == pytest.approx(5.7e-6)


def test_one_staged_transfer_alone_reaches_bandwidth_gb_per_s():
    c = parse_cluster({**HOST, "latency_us": 0}, "clusters[0]")
    assert run_transfers(c, [(0.0, 0, 7, 1e9)]) == [pytest.approx(1e9 / (HOST_STAGED_DEFAULTS["bandwidth_gb_per_s"] * GB))]


def test_two_flows_under_one_switch_share_its_uplink():
    c = parse_cluster({**HOST, "latency_us": 0, "switch_uplink_gb_per_s": 15}, "clusters[0]")
    # GPUs 0 and 1 share pcie0 -> host0 at 15 GB/s: each gets 7.5, not its 10.
    assert run_transfers(c, [(0.0, 0, 4, 1.5e9), (0.0, 1, 6, 1.5e9)]) == [pytest.approx(0.2)] * 2


def test_a_ring_all_gather_is_slower_staged_than_on_the_throttled_mesh_when_the_uplink_is_narrow():
    mesh = ClusterSpec.uniform("throttled", 8, 10 * GB, 0.0)
    wide = parse_cluster({**HOST, "latency_us": 0}, "clusters[0]")  # 24.8 GB/s: two 10 GB/s flows fit
    narrow = parse_cluster({**HOST, "latency_us": 0, "switch_uplink_gb_per_s": 15}, "clusters[0]")
    assert all_gather_s(wide) == pytest.approx(all_gather_s(mesh))
    assert all_gather_s(narrow) == pytest.approx(all_gather_s(mesh) * 20 / 15)


@pytest.mark.parametrize("change,message", [
    ({"gpus_per_switch": 3}, "clusters[0].gpus_per_switch: must divide gpus=8, got 3"),
    ({"sockets": 5}, "clusters[0].sockets: must be at most the 4 PCIe switches, got 5"),
    ({"switch_uplink_gb_per_s": 0}, "clusters[0].switch_uplink_gb_per_s: must be > 0, got 0"),
    ({"socket_link_gb_per_s": "fast"}, "clusters[0].socket_link_gb_per_s: must be a finite number, got 'fast'"),
    ({"latency_us": -1}, "clusters[0].latency_us: must be >= 0, got -1"),
    ({"links": []}, "clusters[0].links: unknown key"),
])
def test_bad_host_staged_fields_are_one_line(change, message):
    with pytest.raises(ScenarioError) as e:
        parse_cluster({**HOST, **change}, "clusters[0]")
    assert message in str(e.value) and "\n" not in str(e.value)


# ----- the network's jitter -----------------------------------------------------------------------------
def test_a_rate_jittered_flow_leaves_the_rest_of_the_link_to_a_transfer():
    bg = BackgroundFlow(src=0, dst=1, seed=3, rate_jitter=1.0)
    fraction = next(bg.rates())
    c = ClusterSpec.uniform("u", 2, 10 * GB, 0.0, background=(bg,))
    # capped below half the link, the flow leaves the transfer 1 - fraction of it (else half)
    share = max(1 - fraction, 0.5)
    assert run_transfers(c, [(0.0, 0, 1, 1e9)]) == [pytest.approx(0.1 / share)]
    assert fraction == 1.0 - random.Random("rate:3").random()


def test_latency_jitter_adds_a_seeded_extra_to_each_transfer():
    c = ClusterSpec.uniform("u", 2, 10 * GB, 5e-6, latency_jitter_s=4e-6, latency_seed=11)
    extra = random.Random(11).expovariate(1 / 4e-6)
    assert run_transfers(c, [(0.0, 0, 1, 1e9)]) == [pytest.approx(5e-6 + extra + 0.1)]


# ----- noise: draws, seeds and summaries ----------------------------------------------------------------
NOISY = NoiseSpec(seeds=4, flows=1, on_s=20e-6, off_s=40e-6, rate_jitter=0.5, latency_jitter_s=5e-6)


def noisy_job(noise=NOISY, scheme="tsp", gpus=4, context=1024):
    cluster = parse_cluster({**HOST, "latency_us": 0}, "clusters[0]")
    return job(scheme=scheme, cluster=dataclasses.replace(cluster, noise=noise), gpus=gpus, context=context)


def test_links_used_are_the_links_that_carry_the_jobs_traffic():
    j = noisy_job(scheme="kvr-e", gpus=2)
    planned = plan(dataclasses.replace(j, cluster=quiet(j.cluster)))
    links = links_for(j, planned)
    # a two-rank chain sends from GPU 0 to GPU 1 only: up through switch 0 to the host and down again
    assert links == ((0, "pcie0"), ("pcie0", "host0"), ("host0", "pcie0-down"), ("pcie0-down", 1))
    drawn = draw(j.cluster, 2, links)
    assert [(bg.src, bg.dst) for bg in drawn.background] == list(links)
    assert [bg.seed for bg in drawn.background] == [flow_seed(2, link) for link in links]
    assert drawn.noise is None and drawn.latency_seed == flow_seed(2, "latency")
    listed = dataclasses.replace(j.cluster, noise=dataclasses.replace(NOISY, links=((1, "pcie0"),)))
    assert links_for(dataclasses.replace(j, cluster=listed), planned) == ()  # listed links need no quiet run
    assert [(bg.src, bg.dst) for bg in draw(listed, 0, ()).background] == [(1, "pcie0")]


def test_same_seed_same_ttft_different_seeds_differ_and_the_mean_is_reported():
    j = noisy_job()
    _, result, _, spread = _run_one(j)
    assert _run_one(j)[3] == spread  # draw i is the same every time
    assert len(set(spread.ttfts_s)) == NOISY.seeds  # and the draws differ
    assert result.ttft_s == pytest.approx(sum(spread.ttfts_s) / NOISY.seeds) == spread.mean_s
    assert spread.p50_s <= spread.p99_s <= max(spread.ttfts_s)
    quiet = _run_one(dataclasses.replace(j, cluster=dataclasses.replace(j.cluster, noise=None)))[1]
    assert min(spread.ttfts_s) > quiet.ttft_s  # competing traffic and extra latency only slow it


@settings(max_examples=10)
@given(noise=noise_specs())
def test_noise_draws_are_reproducible_and_p50_is_at_most_p99(noise):
    j = noisy_job(noise, scheme="kvr-e", context=512)
    first, again = _run_one(j), _run_one(j)
    assert first[3] == again[3] and first[3].p50_s <= first[3].p99_s


def test_kvr_s_is_planned_on_the_quiet_cluster_and_run_under_every_draw():
    j = noisy_job(scheme="kvr-s")
    quiet = dataclasses.replace(j, cluster=dataclasses.replace(j.cluster, noise=None))
    assert _run_one(j)[1].chunks == _run_one(quiet)[1].chunks


def test_spread_files_and_ttft_csv_keep_their_columns(tmp_path):
    doc = {"name": "n", "models": ["tiny-llama"], "hardware": {"gpu": "a100-80gb-sxm"},
           "clusters": [{**HOST, "gpus": 4, "noise": {"seeds": 3, "on_us": 20, "off_us": 40, "rate_jitter": 0.5}},
                        {"name": "quiet", "kind": "throttled", "gpus": 4}],
           "workload": {"contexts": [256], "gpus": [4], "schemes": ["tsp"]}}
    scenario = parse(doc)
    table = rows(_run_one(j) for j in scenario.jobs())

    class Stage:
        def path(self, name):
            return str(tmp_path / name)

    write_files(scenario, table, Stage())
    ttft = (tmp_path / "ttft.csv").read_text().splitlines()
    spread = (tmp_path / "ttft_spread.csv").read_text().splitlines()
    assert ttft[0] == "model,cluster,scheme,gpus,context,ttft_s,speedup_vs_tsp,chunks,fits,memory_need_bytes"
    assert spread[0] == "model,cluster,scheme,gpus,context,seeds,mean_ttft_s,p50_ttft_s,p99_ttft_s"
    noisy = next(r for r in table if r.spread is not None)
    assert spread[1:] == [f"tiny-llama,host,tsp,4,256,3,{noisy.spread.mean_s!r},{noisy.spread.p50_s!r},"
                          f"{noisy.spread.p99_s!r}"]
    assert ttft[1].split(",")[:6] == ["tiny-llama", "host", "tsp", "4", "256", repr(noisy.spread.mean_s)]


def test_spread_of_draws():
    s = Spread.of([3.0, 1.0, 2.0])
    assert (s.mean_s, s.p50_s, s.seeds) == (2.0, 2.0, 3) and s.p99_s == pytest.approx(2.98)


NOISE_AT = "clusters[0].noise"


@pytest.mark.parametrize("noise,message", [
    ({}, f"{NOISE_AT}: missing required key 'seeds'"),
    ({"seeds": 0}, f"{NOISE_AT}.seeds: must be >= 1, got 0"),
    ({"seeds": 2, "links": "all"}, f"{NOISE_AT}.links: must be 'used' or a list of [from, to] pairs, got 'all'"),
    ({"seeds": 2, "links": [[0, 9]]}, f"{NOISE_AT}.links[0][1]: must be a GPU index 0..7 or a listed switch, got 9"),
    ({"seeds": 2, "links": [[0, 1]]}, "clusters[0]: cluster 'host': noise on 0->1, which is not a link"),
    ({"seeds": 2, "on_us": 10}, f"{NOISE_AT}: on_us and off_us go together"),
    ({"seeds": 2, "rate_jitter": 1.5}, f"{NOISE_AT}.rate_jitter: must be in [0, 1], got 1.5"),
    ({"seeds": 2, "latency_jitter_us": -1}, f"{NOISE_AT}.latency_jitter_us: must be >= 0, got -1"),
    ({"seeds": 2, "colour": 1}, f"{NOISE_AT}.colour: unknown key"),
])
def test_bad_noise_fields_are_one_line(noise, message):
    with pytest.raises(ScenarioError) as e:
        parse_cluster({**HOST, "noise": noise}, "clusters[0]")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_noise_round_trips_through_yaml():
    text = "{name: u, kind: uniform, gpus: 2, bandwidth_gb_per_s: 1, noise: {seeds: 2, links: [[0, 1]], flows: 0}}"
    c = parse_cluster(yaml.safe_load(text), "clusters[0]")
    assert c.noise == NoiseSpec(seeds=2, links=((0, 1),), flows=0)
