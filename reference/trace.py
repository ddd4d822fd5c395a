"""``--trace``: one instrumented prefill, per rank and layer its compute spans, its waits (receives,
collectives, ``Work.wait``) and its sends, written by rank 0 as a Chrome trace (Trace Event Format,
the shape of ``sim.plots.chrome_trace``, plus flow arrows from each send to the wait that got it).
Format: docs/reference.md, "Trace".
"""
from __future__ import annotations

import json
import time
from typing import Callable, Sequence

import torch

from reference.transport import Transport, Work


class Recorder:
    """One rank's events: dicts with ``kind`` (layer, wait, send), ``name``, ``layer``, ``start_s`` and
    ``end_s`` (seconds since ``start()``), ``cpu_s`` (the CPU seconds the calling thread, the one that
    computes, used in the span: less than the span where the rank waited or was descheduled), and for
    point-to-point ``peer`` (and ``bytes`` on sends). ``sync`` (the device's synchronise) runs at every
    boundary, so spans are device time."""

    def __init__(self, sync: Callable[[], None]):
        self.sync, self.events, self.layer, self.t0 = sync, [], None, 0.0
        self._cpu_at: dict[float, float] = {}  # span start -> the thread's CPU time then

    def start(self) -> None:
        self.sync()
        self.t0 = time.perf_counter()

    def now_s(self) -> float:
        self.sync()
        now = time.perf_counter() - self.t0
        self._cpu_at[now] = time.thread_time()
        return now

    def add(self, kind: str, name: str, start_s: float, **extra) -> None:
        end_s = self.now_s()
        cpu0 = self._cpu_at.pop(start_s, None)
        cpu = None if cpu0 is None else self._cpu_at[end_s] - cpu0
        self._cpu_at.pop(end_s, None)
        self.events.append({"kind": kind, "name": name, "layer": self.layer, "start_s": start_s,
                            "end_s": end_s, "cpu_s": cpu, **extra})

    def hook_layers(self, layers) -> list:
        """Forward hooks timing every layer; returns the handles to remove."""
        starts: list[float] = []

        def pre(mod, inp) -> None:  # a hook's return value would replace the layer's input or output
            self.layer = layers.index(mod)
            starts.append(self.now_s())

        def post(mod, inp, out) -> None:
            self.add("layer", f"layer L{self.layer}", starts.pop())
            self.layer = None

        return [h for layer in layers for h in (layer.register_forward_pre_hook(pre), layer.register_forward_hook(post))]


class _TimedWork:
    def __init__(self, work: Work, rec: Recorder, peer: int):
        self.work, self.rec, self.peer = work, rec, peer

    def wait(self) -> object:
        t = self.rec.now_s()
        out = self.work.wait()
        self.rec.add("wait", "send wait", t, peer=self.peer)
        return out


class TracedTransport:
    """A ``Transport`` that times every call of the one it wraps into a ``Recorder``."""

    def __init__(self, inner: Transport, rec: Recorder):
        self.inner, self.rec = inner, rec
        self.rank, self.world_size = inner.rank, inner.world_size

    def isend(self, tensor: torch.Tensor, dst: int) -> Work:
        t = self.rec.now_s()
        work = self.inner.isend(tensor, dst)
        self.rec.add("send", "send", t, peer=dst, bytes=tensor.numel() * tensor.element_size())
        return _TimedWork(work, self.rec, dst)

    def recv(self, tensor: torch.Tensor, src: int) -> None:
        t = self.rec.now_s()
        self.inner.recv(tensor, src)
        self.rec.add("wait", "recv", t, peer=src)

    def _timed(self, name: str, call: Callable[[], object]) -> object:
        t = self.rec.now_s()
        out = call()
        self.rec.add("wait", name, t)
        return out

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return self._timed("all-gather", lambda: self.inner.all_gather(tensor))

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self._timed("all-reduce", lambda: self.inner.all_reduce(tensor))

    def all_to_all(self, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
        self._timed("all-to-all", lambda: self.inner.all_to_all(send, recv))


def chrome_events(ranks: list[list[dict]], title: str) -> list[dict]:
    """Every rank's Recorder events as Trace Event Format events: a process per rank (pid rank + 1),
    threads compute (tid 0: layer spans, waits nested inside them) and sends (tid 1), microseconds;
    flow arrows ("s" on a send, "f" at the end of the receive that took it; the k-th send from s to d
    is the k-th receive on d from s)."""
    events: list[dict] = [{"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": title}}]
    recvs: dict[tuple[int, int], list[dict]] = {}
    for r, evs in enumerate(ranks):
        events.append({"ph": "M", "name": "process_name", "pid": r + 1, "tid": 0, "args": {"name": f"rank {r}"}})
        for tid, lane in ((0, "compute"), (1, "sends")):
            events.append({"ph": "M", "name": "thread_name", "pid": r + 1, "tid": tid, "args": {"name": lane}})
        for e in evs:
            if e["name"] == "recv":
                recvs.setdefault((e["peer"], r), []).append(e)
    spans: list[dict] = []
    flows: list[dict] = []
    sent: dict[tuple[int, int], int] = {}
    for r, evs in enumerate(ranks):
        for e in evs:
            args = {k: e[k] for k in ("layer", "peer", "bytes") if k in e}
            if e.get("cpu_s") is not None:
                args["cpu_s"] = e["cpu_s"]
            tid = 1 if e["kind"] == "send" else 0
            ts, dur = e["start_s"] * 1e6, (e["end_s"] - e["start_s"]) * 1e6
            spans.append({"ph": "X", "name": e["name"], "cat": e["kind"], "pid": r + 1, "tid": tid,
                           "ts": ts, "dur": dur, "args": args})
            if e["kind"] != "send":
                continue
            k = sent.get((r, e["peer"]), 0)
            sent[(r, e["peer"])] = k + 1
            got = recvs.get((r, e["peer"]), [])
            if k < len(got):  # a flow id per matched pair
                fid = len(flows) // 2
                flows.append({"ph": "s", "name": "kv", "cat": "flow", "id": fid, "pid": r + 1, "tid": 1, "ts": ts})
                flows.append({"ph": "f", "bp": "e", "name": "kv", "cat": "flow", "id": fid,
                              "pid": e["peer"] + 1, "tid": 0, "ts": got[k]["end_s"] * 1e6})
    return events + sorted(spans, key=lambda e: (e["pid"], e["ts"])) + flows


def trace_json(ranks: list[list[dict]], title: str) -> str:
    return json.dumps({"traceEvents": chrome_events(ranks, title), "displayTimeUnit": "ms"}) + "\n"
