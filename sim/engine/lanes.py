"""Tensor-parallel lanes simulated once when they are copies of each other.

With tensor parallelism each rank is a group of ``tp`` GPUs, and a rank-to-rank message is ``tp``
flows, one a lane: GPU l of the sending group to GPU l of the receiving one (``Sim.flows``). On a
rail-optimised cluster (``sim/multinode.py``) lane l's flows cross only rail l's links, so the lanes
never meet: every lane sees the same flows on links of the same bandwidth and latency, and max-min
sharing (whose fair rates are unique) gives every lane the same rates at the same times. Then lane 0
alone, simulated with each message's 1/tp share, has the timings of all of them, with ``tp`` times
fewer flows; the bytes on the other lanes' links are lane 0's, mapped link to link.

``images`` decides it from the routes: for every ordered pair of ranks the lanes' routes must be
link-disjoint from every other lane's, hop for hop of equal bandwidth and latency, and each lane's
links must be a one-to-one image of lane 0's. Background flows and latency jitter (noise) are not
symmetric, so a noisy cluster is simulated lane by lane. tests/sim/test_lanes.py checks the shortcut
against the lane-by-lane simulation.
"""
from __future__ import annotations

from ..cluster import ClusterSpec, Link


def images(cluster: ClusterSpec, gpus: tuple[int, ...], tp: int) -> tuple[dict[Link, Link], ...] | None:
    """For lanes 1..tp-1 of the ranks whose groups start at ``gpus``, the map from lane 0's links to that
    lane's; None where the lanes are not disjoint copies (then every lane is simulated). Cached on the
    cluster."""
    key = (gpus, tp)
    if key not in cluster._lanes:
        cluster._lanes[key] = _images(cluster, gpus, tp)
    return cluster._lanes[key]


def _images(cluster: ClusterSpec, gpus: tuple[int, ...], tp: int) -> tuple[dict[Link, Link], ...] | None:
    if tp == 1 or len(gpus) < 2 or cluster.background or cluster.latency_jitter_s:
        return None
    forward: list[dict[Link, Link]] = [{} for _ in range(tp)]
    backward: list[dict[Link, Link]] = [{} for _ in range(tp)]
    lane_of: dict[Link, int] = {}
    for a in gpus:
        for b in gpus:
            if a == b:
                continue
            base = cluster.route(a, b)
            for lane in range(tp):
                route = cluster.route(a + lane, b + lane)
                if len(route) != len(base):
                    return None
                for mine, theirs in zip(base, route):
                    if lane_of.setdefault(theirs, lane) != lane:  # two lanes share a link
                        return None
                    if forward[lane].setdefault(mine, theirs) != theirs:
                        return None
                    if backward[lane].setdefault(theirs, mine) != mine:
                        return None
                    if lane and not _alike(cluster, mine, theirs):
                        return None
    return tuple(forward[1:])


def _alike(cluster: ClusterSpec, a: Link, b: Link) -> bool:
    x, y = cluster.link(*a), cluster.link(*b)
    return x.bandwidth_bytes_per_s == y.bandwidth_bytes_per_s and x.latency_s == y.latency_s


def spread(link_bytes: dict[Link, float], maps: tuple[dict[Link, Link], ...]) -> dict[Link, float]:
    """Lane 0's bytes per link, and the same on each other lane's image of the link."""
    out = dict(link_bytes)
    for mapping in maps:
        for link, nbytes in link_bytes.items():
            out[mapping[link]] = out.get(mapping[link], 0.0) + nbytes
    return out
