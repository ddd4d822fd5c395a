"""Links as a shared SimPy resource: concurrent transfers share each link's bandwidth max-min fairly.

A transfer waits its route's latency (the sum of its links' latencies, once), then its bytes flow. While
flows are active each gets its max-min fair rate over the links it crosses (progressive filling: the most
loaded link fixes the rate of its flows, the rest share what is left), so two transfers on one link each
take twice as long. Rates are recomputed when a flow starts or ends by one SimPy process, the link
manager, which sleeps until the next flow ends or until it is woken by a change.
Reference: Bertsekas and Gallager, Data Networks, max-min fairness.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import simpy

from .cluster import ClusterSpec, Link, routes

_DONE_REL = 1e-9  # a flow with this fraction of its bytes left has finished (float rounding)


class _Group:
    """Transfers started together; ``done`` fires when the last of them ends."""

    __slots__ = ("left", "done")

    def __init__(self, env: simpy.Environment, size: int):
        self.left, self.done = size, env.event()


class _Flow:
    __slots__ = ("links", "size", "remaining", "rate", "group", "end_s")

    def __init__(self, links: tuple[Link, ...], size: float, group: _Group | None):
        self.links, self.size, self.remaining = links, size, size
        self.rate = 0.0
        self.group = group  # None for background flows, which never end
        self.end_s = 0.0


class Network:
    """The links of a cluster during one simulation. ``bytes_carried`` counts the scheme's traffic per
    directed link (background traffic is not counted)."""

    def __init__(self, env: simpy.Environment, cluster: ClusterSpec):
        self.env = env
        self.routes = routes(cluster)
        self.capacity = {(l.src, l.dst): l.bandwidth_bytes_per_s for l in cluster.links}
        latency = {(l.src, l.dst): l.latency_s for l in cluster.links}
        self._route_latency_s = {pair: sum(latency[link] for link in route)
                                 for pair, route in self.routes.items()}
        self.bytes_carried: dict[Link, float] = defaultdict(float)
        self._flows: dict[_Flow, None] = {}  # insertion-ordered set: deterministic
        self._last_s = 0.0
        self._wake = env.event()
        env.process(self._manage())
        for bg in cluster.background:
            env.process(self._background(bg))

    def route_latency_s(self, src: int, dst: int) -> float:
        return self._route_latency_s[src, dst]

    def transfer(self, moves: list[tuple[int, int, float]]):
        """Process body: transfers that start now, each ``(src GPU, dst GPU, bytes)``; each waits its own
        route latency, then flows. Returns each one's end time, in order (the process ends with the last)."""
        group = _Group(self.env, len(moves))
        flows: list[_Flow | None] = [None] * len(moves)
        waited_s = 0.0
        for i in sorted(range(len(moves)), key=lambda i: self.route_latency_s(*moves[i][:2])):
            src, dst, nbytes = moves[i]
            latency_s = self.route_latency_s(src, dst)
            if latency_s > waited_s:
                yield self.env.timeout(latency_s - waited_s)
                waited_s = latency_s
            links = self.routes[src, dst]
            for link in links:
                self.bytes_carried[link] += nbytes
            flows[i] = _Flow(links, nbytes, group)
            self._add(flows[i])
        yield group.done
        return [f.end_s for f in flows]

    # ----- the link manager ----------------------------------------------------------------------
    def _add(self, flow: _Flow) -> None:
        self._settle()
        self._flows[flow] = None
        self._poke()

    def _remove(self, flow: _Flow) -> None:
        self._settle()
        del self._flows[flow]
        self._poke()

    def _poke(self) -> None:
        if not self._wake.triggered:
            self._wake.succeed()

    def _settle(self) -> None:
        """Advance every flow's remaining bytes to now at the rates it has had since the last change."""
        dt = self.env.now - self._last_s
        if dt > 0:
            for f in self._flows:
                f.remaining -= f.rate * dt
            self._last_s = self.env.now

    def _manage(self):
        while True:
            self._settle()
            for f in [f for f in self._flows if f.group is not None and f.remaining <= _DONE_REL * f.size]:
                del self._flows[f]
                f.end_s = self.env.now
                f.group.left -= 1
                if not f.group.left:
                    f.group.done.succeed()
            self._share()
            next_s = min((f.remaining / f.rate for f in self._flows if f.group is not None), default=None)
            self._wake = self.env.event()
            if next_s is None:
                yield self._wake
            else:
                yield self._wake | self.env.timeout(next_s)

    def _share(self) -> None:
        """Max-min fair rates by progressive filling."""
        left: dict[Link, float] = {}
        users: Counter[Link] = Counter()
        for f in self._flows:
            for link in f.links:
                left[link] = self.capacity[link]
                users[link] += 1
        if all(n == 1 for n in users.values()):  # no link shared: each flow gets its slowest link
            for f in self._flows:
                f.rate = min(self.capacity[link] for link in f.links)
            return
        todo = list(self._flows)
        while todo:
            bottleneck = min(users, key=lambda link: left[link] / users[link])
            rate = max(left[bottleneck], 0.0) / users[bottleneck]
            fixed = [f for f in todo if bottleneck in f.links]
            for f in fixed:
                f.rate = rate
                for link in f.links:
                    left[link] -= rate
                    users[link] -= 1
                    if not users[link]:
                        del users[link]
            todo = [f for f in todo if bottleneck not in f.links]

    def _background(self, bg):
        """Greedy competing flows on one link: never finish, switched on and off by this process."""
        flows = [_Flow(((bg.src, bg.dst),), float("inf"), None) for _ in range(bg.flows)]
        yield self.env.timeout(bg.start_s)
        while True:
            for f in flows:
                self._add(f)
            if bg.on_s is None:
                return
            yield self.env.timeout(bg.on_s)
            for f in flows:
                self._remove(f)
            yield self.env.timeout(bg.off_s)
