"""Links as a shared SimPy resource: concurrent transfers share each link's bandwidth max-min fairly.

A transfer waits its route's latency (the sum of its links' latencies, once), then its bytes flow. While
flows are active each gets its max-min fair rate over the links it crosses (progressive filling: the most
loaded link fixes the rate of its flows, the rest share what is left), so two transfers on one link each
take twice as long. Rates are recomputed when a flow starts or ends by the link manager, a callback
that steps when the next flow ends or when a change wakes it; flows that start or end at one instant
are one change, and the next bottleneck comes from a heap of the links' fair levels. A flow on links no
other flow uses changes nobody's rate: it starts at its cap without a step, and only its end is timed.
A background flow may be capped below its fair share (``rate_jitter``): progressive filling fixes it at
its cap once the fair level passes it. With ``latency_jitter_s`` every transfer waits an exponential extra of that mean, drawn from a
generator seeded by the cluster's ``latency_seed`` (docs/simulator.md, "Noise").
Reference: Bertsekas and Gallager, Data Networks, max-min fairness.
"""
from __future__ import annotations

import heapq
import random
from collections import defaultdict

import simpy

from ..cluster import ClusterSpec, Link

_DONE_REL = 1e-12  # a flow due within this fraction of the clock has finished (float rounding)


class _Group:
    """Transfers started together; ``then`` is called with their end times when the last of them ends."""

    __slots__ = ("left", "flows", "then")

    def __init__(self, size: int, then):
        self.left, self.flows, self.then = size, [None] * size, then


class _Flow:
    """Bytes moving along ``links``: ``remaining`` at time ``since_s``, at ``rate`` since then."""

    __slots__ = ("links", "cap", "remaining", "rate", "since_s", "finish_s", "group", "end_s", "capped")

    def __init__(self, links: tuple[Link, ...], cap: float, size: float, group: _Group | None):
        self.links, self.cap, self.remaining = links, cap, size
        self.capped = False  # cap below its links' bandwidth (a rate-jittered background flow)
        self.rate, self.since_s, self.finish_s = 0.0, 0.0, float("inf")
        self.group = group  # None for background flows, which never end
        self.end_s = 0.0

    def set_rate(self, rate: float, now_s: float) -> None:
        self.remaining -= self.rate * (now_s - self.since_s)
        self.rate, self.since_s = rate, now_s
        if self.group is not None:  # a rate of 0 (a link saturated by others) waits for the next change
            self.finish_s = now_s + self.remaining / rate if rate > 0 else float("inf")


class _Capacity(dict):
    """Link -> bandwidth in bytes/s, filled from the cluster on first use (a mesh is not spelled out)."""

    def __init__(self, cluster: ClusterSpec):
        super().__init__()
        self.cluster = cluster

    def __missing__(self, link: Link) -> float:
        value = self[link] = self.cluster.link(*link).bandwidth_bytes_per_s
        return value


class Network:
    """The links of a cluster during one simulation. ``bytes_carried`` counts the scheme's traffic per
    directed link (background traffic is not counted)."""

    def __init__(self, env: simpy.Environment, cluster: ClusterSpec):
        self.env = env
        self.cluster = cluster
        self.capacity = _Capacity(cluster)  # bytes/s of each directed link, looked up as used
        self._pairs: dict[tuple[int, int], tuple[tuple[Link, ...], float, float]] = {}
        self.bytes_carried: dict[Link, float] = defaultdict(float)
        self._flows: dict[_Flow, None] = {}  # insertion-ordered set: deterministic
        self._on: dict[Link, dict[_Flow, None]] = {}  # the active flows on each link, in the order they started
        self._shared = 0  # links with two or more active flows
        self._capped = 0  # active flows with a cap of their own
        self._jitter = random.Random(cluster.latency_seed) if cluster.latency_jitter_s else None
        self._changed = False
        self._stepping = False  # a step of the manager is due (or running): more changes join it
        self._alarms: list[float] = []  # times of the manager's pending timers (a heap)
        for bg in cluster.background:
            env.process(self._background(bg))

    def _pair(self, src: int, dst: int) -> tuple[tuple[Link, ...], float, float]:
        """(route, its latency, its slowest link's bandwidth) from GPU src to GPU dst."""
        pair = self._pairs.get((src, dst))
        if pair is None:
            route = self.cluster.route(src, dst)
            links = [self.cluster.link(*link) for link in route]
            pair = (route, sum(l.latency_s for l in links), min(l.bandwidth_bytes_per_s for l in links))
            self._pairs[src, dst] = pair
        return pair

    def route_latency_s(self, src: int, dst: int) -> float:
        return self._pair(src, dst)[1]

    def transfer(self, moves: list[tuple[int, int, float]], *, latency: bool = True,
                 efficiency: float | list[float] = 1.0):
        """Process body: ``start`` the moves and wait for them; returns each one's end time, in order."""
        done = self.env.event()
        self.start(moves, done.succeed, latency=latency, efficiency=efficiency)
        return (yield done)

    def start(self, moves: list[tuple[int, int, float]], then, *, latency: bool = True,
              efficiency: float | list[float] = 1.0) -> None:
        """Transfers that start now, each ``(src GPU, dst GPU, bytes)``; each waits its own route latency
        (unless ``latency`` is false: the rest of a message already under way), then flows. ``efficiency``
        (one for all, or one a move): the fraction of the link rate a protocol turns into data (NCCL's,
        ``nccl.py``): a flow moves bytes / efficiency, the links are charged the bytes. When the last
        ends, ``then`` is called with each one's end time, in order (a callback: no SimPy process)."""
        if not moves:
            then([])
            return
        group = _Group(len(moves), then)
        if len(moves) == 1 and not latency:  # one flow that starts now (a send's, under NCCL's model)
            self._add([self._flow(group, 0, self._pair(moves[0][0], moves[0][1]), moves[0][2], efficiency)])
            return
        pairs = [self._pair(src, dst) for src, dst, _ in moves]
        due_s = [pair[1] + (self._extra_latency_s() if latency else 0.0) for pair in pairs]
        batches: list[tuple[float, list[_Flow]]] = []  # flows that start at the same instant join together
        for i in sorted(range(len(moves)), key=due_s.__getitem__):
            self._flow(group, i, pairs[i], moves[i][2], efficiency)
            wait_s = due_s[i] if latency else 0.0
            if not batches or wait_s > batches[-1][0]:
                batches.append((wait_s, []))
            batches[-1][1].append(group.flows[i])
        self._start_batches(batches, 0.0)

    def _flow(self, group: _Group, i: int, pair: tuple, nbytes: float, efficiency: float | list[float]) -> _Flow:
        """Move i of ``group`` as a flow along ``pair``'s route; its links are charged the bytes."""
        links, _, cap = pair
        for link in links:
            self.bytes_carried[link] += nbytes
        share = efficiency[i] if isinstance(efficiency, list) else efficiency
        flow = group.flows[i] = _Flow(links, cap, nbytes / share, group)
        return flow

    def _start_batches(self, batches: list[tuple[float, list[_Flow]]], waited_s: float) -> None:
        """Add the first batch now if it is due (``waited_s`` into the transfer), else at its time; the
        rest after it, each timer counting from the one before (as the latencies add up)."""
        for k, (wait_s, flows) in enumerate(batches):
            if wait_s > waited_s:
                self.env.timeout(wait_s - waited_s).callbacks.append(
                    lambda _event, rest=batches[k:], at_s=wait_s: self._start_batches(rest, at_s))
                return
            self._add(flows)

    def _extra_latency_s(self) -> float:
        """A transfer's random extra latency (0 without latency jitter)."""
        if self._jitter is None:
            return 0.0
        return self._jitter.expovariate(1 / self.cluster.latency_jitter_s)

    # ----- the link manager ----------------------------------------------------------------------
    def _add(self, flows: list[_Flow]) -> None:
        """``flows`` start now: one change of rates for all of them. A flow on links that no other flow
        uses changes no other flow's rate: it runs at its cap at once and only its end is timed."""
        if not flows:
            return
        on, now_s, changed = self._on, self.env.now, False
        for flow in flows:
            self._flows[flow] = None
            self._capped += flow.capped
            solo = True
            for link in flow.links:
                users = on.get(link)
                if users is None:
                    users = on[link] = {}
                users[flow] = None
                if len(users) == 2:
                    self._shared += 1
                if len(users) > 1:
                    solo = False
            if solo:
                flow.set_rate(flow.cap, now_s)
                self._arm(flow.finish_s, now_s)
            else:
                changed = True
        if changed:
            self._poke()

    def _remove(self, flows: list[_Flow]) -> None:
        """``flows`` stop now: one change of rates for all of them (none where no other flow shared
        their links)."""
        if not flows:
            return
        for flow in flows:
            del self._flows[flow]
            self._capped -= flow.capped
            for link in flow.links:
                users = self._on[link]
                del users[flow]
                if len(users) == 1:
                    self._shared -= 1
                if users:
                    self._changed = True
        self._wake_up()

    def _poke(self) -> None:
        """A flow started or stopped: rates must be shared anew."""
        self._changed = True
        self._wake_up()

    def _wake_up(self, _timer: simpy.Event | None = None) -> None:
        """The manager steps at this instant (once, however many changes come before it does)."""
        if not self._stepping:
            self._stepping = True
            self.env.timeout(0).callbacks.append(self._step)

    def _arm(self, at_s: float, now_s: float) -> None:
        """Make sure the manager steps at ``at_s`` (a flow's end) or before."""
        if at_s < float("inf") and (not self._alarms or at_s < self._alarms[0]):
            heapq.heappush(self._alarms, at_s)
            self.env.timeout(max(at_s - now_s, 0.0)).callbacks.append(self._alarm)

    def _alarm(self, event: simpy.Event) -> None:
        """A flow's end is due: the manager steps now, unless a step at this instant is already due."""
        if not self._stepping:
            self._stepping = True
            self._step(event)

    def _step(self, _event: simpy.Event) -> None:
        """End the flows that are due, share the links anew if that or a start changed anything, and
        time the next end (a callback: no SimPy process)."""
        now_s = self.env.now
        due_s = now_s + _DONE_REL * now_s
        alarms = self._alarms
        while alarms and alarms[0] <= due_s:
            heapq.heappop(alarms)
        ended = [f for f in self._flows if f.finish_s <= due_s]
        self._remove(ended)
        for f in ended:
            f.end_s = now_s
            f.group.left -= 1
            if not f.group.left:  # may start flows: they join the share below
                f.group.then([g.end_s for g in f.group.flows])
        if self._changed:
            self._changed = False
            self._share(now_s)
        if self._flows:  # earlier timers may still fire: they find nothing due
            self._arm(min(f.finish_s for f in self._flows), now_s)
        self._stepping = False

    def _share(self, now_s: float) -> None:
        """Max-min fair rates. With no link shared every flow runs at its route's slowest link."""
        if not self._shared:
            for f in self._flows:
                if f.rate != f.cap:
                    f.set_rate(f.cap, now_s)
            return
        # A flow alone on every link it crosses runs at its cap; the rest share by progressive filling.
        on = self._on
        shared = []
        for f in self._flows:
            if all(len(on[link]) == 1 for link in f.links):
                if f.rate != f.cap:
                    f.set_rate(f.cap, now_s)
            else:
                shared.append(f)
        # The links of the shared flows, numbered as first met: of equally loaded links the first is the
        # bottleneck. Every flow on one of them is shared, so ``on`` lists them in the order they started.
        first = {link: i for i, link in enumerate(dict.fromkeys(link for f in shared for link in f.links))}
        users = {link: len(on[link]) for link in first}
        left = {link: self.capacity[link] for link in first}
        # The fair level of each link in a heap; an entry whose level is no longer the link's is stale.
        levels = [(left[link] / users[link], i, link) for link, i in first.items()]
        heapq.heapify(levels)
        done: set[_Flow] = set()
        capped = [f for f in shared if f.capped] if self._capped else []
        remaining = len(shared)
        while remaining:  # progressive filling: the most loaded link fixes its flows' rate
            while True:
                level, _, bottleneck = levels[0]
                if bottleneck in users and left[bottleneck] / users[bottleneck] == level:
                    break
                heapq.heappop(levels)
            rate = max(left[bottleneck], 0.0) / users[bottleneck]
            fixed = [f for f in on[bottleneck] if f not in done]
            low = [f for f in capped if f not in done and f.cap < rate]
            if low:  # a flow capped below the fair level takes its cap; the others share the rest
                rate = min(f.cap for f in low)
                fixed = [f for f in low if f.cap == rate]
            changed: dict[Link, None] = {}
            for f in fixed:
                done.add(f)
                f.set_rate(rate, now_s)
                for link in f.links:
                    left[link] -= rate
                    users[link] -= 1
                    if users[link]:
                        changed[link] = None
                    else:
                        del users[link]
            for link in changed:
                if link in users:
                    heapq.heappush(levels, (left[link] / users[link], first[link], link))
            remaining -= len(fixed)

    def _background(self, bg):
        """Greedy competing flows on one link: never finish, switched on and off by this process."""
        link = (bg.src, bg.dst)
        flows = [_Flow((link,), self.capacity[link], float("inf"), None) for _ in range(bg.flows)]
        rates = bg.rates()
        yield self.env.timeout(bg.start_s)
        if bg.on_s is None:
            self._cap(flows, next(rates))
            self._add(flows)
            return
        for on_s, off_s in bg.periods():
            self._cap(flows, next(rates))
            self._add(flows)
            yield self.env.timeout(on_s)
            self._remove(flows)
            yield self.env.timeout(off_s)

    def _cap(self, flows: list[_Flow], fraction: float) -> None:
        """Cap background flows (not active now) at ``fraction`` of their link for their next on-period."""
        for f in flows:
            f.cap = fraction * self.capacity[f.links[0]]
            f.capped = fraction < 1.0
