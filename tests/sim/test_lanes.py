"""Tensor-parallel lanes simulated once (sim/engine/lanes.py): where the lanes of the groups are
disjoint copies of each other (a rail-optimised fabric), lane 0 alone gives the same result as every
lane simulated; elsewhere every lane is simulated."""
from __future__ import annotations

import dataclasses
from unittest import mock

import pytest

from sim import multinode
from sim.cluster import BackgroundFlow, ClusterSpec
from sim.engine import lanes
from sim.hardware import GpuSpec
from sim.job import BUILTIN, Job
from sim.model import ModelSpec
from sim.partition.plan import plan
from sim.simulate import simulate

SPEC = dataclasses.replace(ModelSpec.preset("llama-2-7b"), num_layers=16)  # 32 heads: Ulysses on 16 groups; 16 pipeline stages


def cluster(nodes=4, nics="rail", node="dgx-h100", **extra) -> ClusterSpec:
    n, switches, links = multinode.links(nodes=nodes, node=node, fabric="ib-ndr", nics=nics, oversubscription=2.0)
    return ClusterSpec(name=f"mn-{nics}", num_gpus=n, links=links, switches=switches, gpus_per_node=n // nodes,
                       **extra)


def job(scheme: str, tp: int, c: ClusterSpec, communication: str, gpus: int = 32, context: int = 4096) -> Job:
    return Job(model=SPEC, gpu=GpuSpec.preset("h100-sxm").replace(communication=communication), dtype="bf16",
               scheme=dataclasses.replace(BUILTIN[scheme], name=f"{scheme}+tp{tp}", tp=tp), context=context,
               num_gpus=gpus, cluster=c)


def lane_by_lane(j: Job):
    with mock.patch.object(lanes, "images", lambda *args: None):
        return simulate(j)


@pytest.mark.parametrize("communication", ["links", "nccl"])
@pytest.mark.parametrize("scheme", ["ring", "ring-zigzag", "ulysses", "tsp", "kvr-e", "pipeline"])
@pytest.mark.parametrize("tp", [2, 4])
def test_one_lane_gives_what_every_lane_gives_on_a_rail_fabric(scheme, tp, communication):
    j = job(scheme, tp, cluster(), communication)
    p = plan(j)
    assert lanes.images(j.cluster, tuple(p.gpus), p.tp) is not None  # the shortcut is taken
    fast, full = simulate(j), lane_by_lane(j)
    assert fast.ttft_s == pytest.approx(full.ttft_s, rel=1e-9)
    assert fast.makespan_s == pytest.approx(full.makespan_s, rel=1e-9)
    assert [r.busy_s for r in fast.ranks] == pytest.approx([r.busy_s for r in full.ranks], rel=1e-9)
    assert fast.link_bytes.keys() == full.link_bytes.keys()
    assert [fast.link_bytes[k] for k in full.link_bytes] == pytest.approx(list(full.link_bytes.values()), rel=1e-12)
    assert len(fast.segments) == len(full.segments)


def test_lanes_that_share_links_are_simulated_one_by_one():
    shared = cluster(nics="shared")  # every lane of a node leaves through the node's one uplink
    assert lanes.images(shared, (0, 8, 16, 24), 8) is None
    rail = cluster()
    maps = lanes.images(rail, (0, 8, 16, 24), 8)
    assert maps is not None and len(maps) == 7
    assert maps[2][(0, "rail0")] == (3, "rail3") and maps[2][("rail0", 8)] == ("rail3", 11)
    # Groups of 4 in nodes of 8: lanes 0-3 of the two groups of a node cross the node's switch on
    # different GPU links, and each group's own rails: still copies.
    assert lanes.images(rail, tuple(range(0, 32, 4)), 4) is not None


def test_noise_breaks_the_symmetry():
    quiet = cluster()
    noisy = cluster(background=(BackgroundFlow(src=0, dst="rail0", flows=1),))
    jitter = cluster(latency_jitter_s=1e-6, latency_seed=3)
    gpus = (0, 8, 16, 24)
    assert lanes.images(quiet, gpus, 8) is not None
    assert lanes.images(noisy, gpus, 8) is None and lanes.images(jitter, gpus, 8) is None


def test_the_shortcut_on_the_noisy_cluster_would_be_wrong():
    """Why noise is excluded: a background flow on a link of lane 1 slows lane 1 only, and each
    message waits for its slowest lane, so lane 0 stands for no other lane."""
    quiet = cluster()
    j = job("ring", 4, quiet, "links")
    p = plan(j)
    busiest = max((link for link in simulate(j).link_bytes if isinstance(link[0], int)),
                  key=simulate(j).link_bytes.get)  # a GPU's own link out of lane 0's busiest route
    lane1 = lanes.images(quiet, tuple(p.gpus), p.tp)[0].get(busiest)
    assert lane1 is not None
    noisy = cluster(background=(BackgroundFlow(src=lane1[0], dst=lane1[1], flows=1),))
    full = simulate(dataclasses.replace(j, cluster=noisy))  # every lane (images says None)
    with mock.patch.object(lanes, "images", lambda c, g, tp: lanes._images(quiet, g, tp)):
        forced = simulate(dataclasses.replace(j, cluster=noisy))  # lane 0 alone, as if the cluster were quiet
    assert forced.ttft_s < full.ttft_s * (1 - 1e-3)
