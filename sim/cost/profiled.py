"""A cost model from a measured profile (``python -m reference.measure.profile``): the ``CostModel`` questions
answered by interpolating measured medians. Pure functions of the profile; no SimPy, no torch.

- Linear parts (``embed``, ``pre_attention``, ``post_attention``, ``kv_copy``) are piecewise linear in
  tokens between grid points; outside the grid, the nearest segment's line is extended.
- Attention of c queries against k keys (past p = k - c) is interpolated in the time per dense
  query-key product, ``y = seconds / (c * k)``, which varies slowly (a kernel that computes the dense
  block has y constant; a causal kernel that skips masked blocks has y between 1/2 and 1 of it):
  bilinear in (log c, log p) over the grid's rows with p > 0, linear in log c on the p = 0 row (the
  square causal call is a different kernel on both CPUs and GPUs, so it is never blended with the
  others). Outside the grid, y is held at the edge.
- ``head`` is the measured median.

Machine speed (CPU profiles): every grid point carries ``probe_s``, a fixed GEMM timed next to it, and
the profile its median ``speed_probe_s``. Each point is brought to that reference speed
(``median_s * speed_probe_s / probe_s``) before fitting, and ``scaled(f)`` answers for a machine ``f``
times slower (a measured run's probe over the profile's); docs/validation.md, "Machine speed".

Every question that falls outside the grid is counted in ``extrapolated`` (component -> count), which
the validation report prints. ``sim/validation/held_out.py`` predicts the grid points the profile
flagged as held out from a model built without them.

Profile schema: docs/validation.md. Reference: Vidur (Agrawal et al., MLSys 2024), which interpolates
profiled operator times the same way.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..model import ModelSpec
from ..schemas import SchemaError, validate
from . import CostModel, layer_extra_s

LINEAR_PARTS = ("embed", "pre_attention", "post_attention", "kv_copy")


class ProfileError(ValueError):
    """A profile file that cannot be read or does not fit its use."""


def _interp(xs: list[float], ys: list[float], x: float) -> tuple[float, bool]:
    """Piecewise-linear y(x) through sorted points; beyond them the end segment's line.
    Returns (y, extrapolated)."""
    if len(xs) == 1:
        return ys[0], x != xs[0]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0), not xs[0] <= x <= xs[-1]


def _clamped(xs: list[float], x: float) -> tuple[int, float, bool]:
    """Index i and weight w so that x ~ xs[i] * (1 - w) + xs[i + 1] * w, held at the ends."""
    if len(xs) == 1 or x <= xs[0]:
        return 0, 0.0, x < xs[0]
    if x >= xs[-1]:
        return len(xs) - 2, 1.0, x > xs[-1]
    i = bisect.bisect_right(xs, x) - 1
    return i, (x - xs[i]) / (xs[i + 1] - xs[i]), False


@dataclass(frozen=True, eq=False)
class ProfileCost(CostModel):
    """The CostModel protocol (sim/cost/) from a profile dict, fitted on the grid points that are not
    held out (those only test it)."""

    profile: Mapping[str, Any] = field(repr=False)
    path: str = ""
    speed_factor: float = 1.0  # seconds here = profile seconds (at its reference speed) x this
    extrapolated: Counter = field(default_factory=Counter, repr=False)
    calibrated: bool = True  # scale layers to the profile's whole forwards (``forward_factor``)
    host_factor: float = 1.0  # the host floor here = the profile's x this (``host_scaled``)

    def seconds(self, entry: Mapping[str, Any]) -> float:
        """A grid point's median at the profile's reference speed."""
        ref, probe = self.profile.get("speed_probe_s"), entry.get("probe_s")
        return entry["median_s"] * (ref / probe if ref and probe else 1.0)

    def scaled(self, factor: float) -> "ProfileCost":
        """The same profile on a machine ``factor`` times slower (its extrapolation count is shared)."""
        return dataclasses.replace(self, speed_factor=self.speed_factor * factor)

    def host_probe_s(self) -> float | None:
        """GPU profiles: the host's seconds per layer to issue the smallest forward without a past (the
        ``forward`` point a host probe repeats: ``reference.measure.timing.host_probe_s``), else None."""
        hosts = [e for e in self.profile.get("components", {}).get("forward", [])
                 if e.get("host_s") is not None and e["keys"] == e["tokens"]]
        return min(hosts, key=lambda e: e["tokens"])["host_s"] if hosts else None

    def host_scaled(self, probe_s: float | None) -> "ProfileCost":
        """The same profile with its host floor scaled to a host probe measured where the simulated
        work ran (``probe_s`` over the profile's own, ``host_probe_s``; unchanged where either is
        missing). The host of one machine type issues kernels 30-50% faster or slower from one
        process to the next (docs/validation.md, "The host's pace")."""
        ref = self.host_probe_s()
        if not ref or not probe_s:
            return self
        return dataclasses.replace(self, host_factor=self.host_factor * probe_s / ref)

    def __post_init__(self) -> None:
        comps = self.profile.get("components")
        if not isinstance(comps, Mapping):
            raise ProfileError(f"profile {self.path or '?'}: no components")
        use = lambda e: not e.get("held_out", False)  # noqa: E731
        lines = {}
        for name in LINEAR_PARTS:
            pts = sorted((e["tokens"], self.seconds(e)) for e in comps.get(name, []) if use(e))
            if not pts:
                raise ProfileError(f"profile {self.path or '?'}: component {name!r} has no grid points")
            lines[name] = ([float(t) for t, _ in pts], [s for _, s in pts])
        square, rect = {}, {}
        for e in comps.get("attention", []):
            if use(e):
                c, k = e["queries"], e["keys"]
                y = self.seconds(e) / (c * k)
                (square if c == k else rect)[(c, k - c)] = y
        if not square or not rect or not comps.get("head"):
            raise ProfileError(f"profile {self.path or '?'}: needs attention with and without a past, and head")
        cs = sorted({c for c, _ in rect})
        ps = sorted({p for _, p in rect})
        missing = [(c, p) for c in cs for p in ps if (c, p) not in rect]
        if missing:
            raise ProfileError(f"profile {self.path or '?'}: attention grid is not rectangular; missing "
                               f"(queries, past) {missing[:4]}")
        sq = sorted(square.items())
        # the floor by (with a past, above the flash threshold): a chunk with a past of at most
        # ``flash_max_chunk`` tokens issues one flash call, a larger one two cuDNN calls and a merge
        # (reference/fast_attention.py), so its floor steps up there, not gradually
        floor: dict[tuple[bool, bool], tuple[list[float], list[float]]] = {}
        forwards = comps.get("forward", []) if self.profile.get("device_type") == "cuda" else []
        if self.profile.get("device_type") == "cuda":
            hosts = [e for e in forwards if e.get("host_s") is not None]
            for past, above in ((False, False), (True, False), (True, True)):
                pts = sorted((e["tokens"], e["host_s"]) for e in hosts if (e["keys"] > e["tokens"]) == past
                             and self._above_flash(e["tokens"], past) == above)
                if pts:  # the lower envelope from above: the host's time to issue a layer does not
                    # fall as the chunk grows, so a point above a larger chunk's is a stalled sample
                    floor[past, above] = ([float(t) for t, _ in pts],
                                          [min(s for _, s in pts[i:]) for i in range(len(pts))])
            layers = [e for e in comps.get("layer", []) if use(e)]
            if not hosts and layers:  # schema 1-2: one floor, from the layers at the smallest chunk
                least = min(e["tokens"] for e in layers)
                smallest = [e for e in layers if e["tokens"] == least]
                for past in (False, True):
                    same = [e for e in smallest if (e["keys"] > e["tokens"]) == past] or smallest
                    floor[past, False] = ([float(least)], [statistics.median(self._host_seconds(e) for e in same)])
        object.__setattr__(self, "_floor", floor)
        object.__setattr__(self, "_factor", ([], []))
        object.__setattr__(self, "_lines", lines)
        object.__setattr__(self, "_square", ([math.log(c) for (c, _), _ in sq], [y for _, y in sq]))
        object.__setattr__(self, "_rect", ([math.log(c) for c in cs], [math.log(p) for p in ps], rect, cs, ps))
        fit = [e for e in forwards if use(e)]
        if self.calibrated and fit:
            raw = ProfileCost(self.profile, self.path, calibrated=False)
            pts = sorted((e["tokens"], (raw.seconds(e) - raw.embed_s(e["tokens"]))
                          / (raw.forward_s(e["tokens"], e["keys"]) - raw.embed_s(e["tokens"]))) for e in fit)
            # at least 1: the parts are timed back to back, a forward adds gaps but cannot remove work
            object.__setattr__(self, "_factor", ([math.log(t) for t, _ in pts], [max(f, 1.0) for _, f in pts]))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProfileCost":
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except OSError as e:
            raise ProfileError(f"cannot read profile {path} ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"profile {path}: not valid JSON ({e})") from None
        try:
            validate(doc, "profile", f"profile {path}")
        except SchemaError as e:
            raise ProfileError(str(e)) from None
        return cls(doc, path=path, calibrated=os.environ.get("SIM_FORWARD_CALIBRATION", "1") != "0")

    @property
    def model(self) -> ModelSpec:
        return ModelSpec.from_dict(self.profile["model"])

    @property
    def dtype(self) -> str:
        return self.profile["dtype"]

    @property
    def device(self) -> str:
        return self.profile.get("device", "?")

    # ----- the CostModel protocol -----------------------------------------------------------------
    def _linear(self, name: str, tokens: int) -> float:
        xs, ys = self._lines[name]
        y, out = _interp(xs, ys, float(tokens))
        if out:
            self.extrapolated[name] += 1
        return max(y, 0.0) * self.speed_factor

    def forward_factor(self, tokens: float) -> float:
        """How much longer a layer of a ``tokens``-token chunk takes inside a whole forward than its
        parts, padded to the host floor, add up to: the profile's forwards with a past (less the
        embedding) over the uncalibrated model's layers (at least 1), interpolated in log tokens and
        held at the ends; 1 without forward points or with ``calibrated=False``
        (``SIM_FORWARD_CALIBRATION=0``). Schemes add the difference to each layer (``sim.cost.layer_extras``). docs/validation.md, section 7."""
        xs, ys = self._factor
        if not xs:
            return 1.0
        return _interp(xs, ys, min(max(math.log(max(tokens, 1)), xs[0]), xs[-1]))[0]

    def embed_s(self, tokens: int) -> float:
        return self._linear("embed", tokens)

    def pre_attention_s(self, tokens: int) -> float:
        return self._linear("pre_attention", tokens)

    def post_attention_s(self, tokens: int) -> float:
        return self._linear("post_attention", tokens)

    def kv_copy_s(self, tokens: int) -> float:
        return self._linear("kv_copy", tokens)

    def attention_s(self, queries: int, keys: int, pairs: float) -> float:
        """Seconds of the runtime's chunk attention; ``pairs`` is implied by (queries, keys) for the
        causal kernel the runtime calls, so it is not used (tsp ``masked`` is not what the runtime runs)."""
        c, past = queries, keys - queries
        if past == 0:
            xs, ys = self._square
            i, w, out = _clamped(xs, math.log(c))
            y = ys[i] if len(xs) == 1 else ys[i] * (1 - w) + ys[i + 1] * w
        else:
            lc, lp, rect, cs, ps = self._rect
            i, wi, out_c = _clamped(lc, math.log(c))
            j, wj, out_p = _clamped(lp, math.log(past))
            at = lambda a, b: rect[(cs[min(a, len(cs) - 1)], ps[min(b, len(ps) - 1)])]  # noqa: E731
            y = ((1 - wi) * (1 - wj) * at(i, j) + wi * (1 - wj) * at(i + 1, j)
                 + (1 - wi) * wj * at(i, j + 1) + wi * wj * at(i + 1, j + 1))
            out = out_c or out_p
        if out:
            self.extrapolated["attention"] += 1
        return y * c * keys * self.speed_factor

    def head_s(self) -> float:
        return self.seconds(self.profile["components"]["head"][0]) * self.speed_factor

    def _host_seconds(self, entry: Mapping[str, Any]) -> float:
        """A layer entry's host time: ``host_s`` (the host's time to issue one layer, profiles from
        schema 2 on), else its measured time (older profiles)."""
        host = entry.get("host_s")
        return self.seconds(entry) if host is None else host * self.seconds(entry) / entry["median_s"]

    def _above_flash(self, tokens: float, past: bool) -> bool:
        """Whether a chunk of ``tokens`` with a past is above the profile's ``flash_max_chunk``, where
        the runtime's attention takes the cuDNN split (profiles that record the threshold)."""
        flash = self.profile.get("flash_max_chunk")
        return bool(past and flash and tokens > flash)

    def layer_floor_s(self, tokens: float | None = None, past: bool = False) -> float:
        """GPU profiles: the host's time to issue one layer of a ``tokens``-token chunk, without or with
        a past (the attention with a past and the cache's copy add host work): the pace of a
        host-bound layer, which is never faster whatever its parts add up to. Interpolated between the
        ``forward`` points' ``host_s`` (each no more than any larger chunk's; held at the ends), with a
        past apart below and above the profile's ``flash_max_chunk`` where it records one (the
        attention's host work steps up there); ``tokens=None``: at the smallest. 0 for CPU profiles,
        where host and compute are one. docs/validation.md, "Host-bound layers"."""
        above = tokens is not None and self._above_flash(tokens, past) and (past, True) in self._floor
        xs, ys = self._floor.get((past, above), ([], []))
        if not xs:
            return 0.0
        t = xs[0] if tokens is None else min(max(float(tokens), xs[0]), xs[-1])
        return _interp(xs, ys, t)[0] * self.speed_factor * self.host_factor

    # ----- checks ---------------------------------------------------------------------------------
    def layer_s(self, tokens: int, keys: int) -> float:
        """One decoder layer as the simulator runs it: its parts (the cache's copy where it has a past)
        padded to the host floor."""
        past = keys > tokens
        parts = (self.pre_attention_s(tokens) + self.attention_s(tokens, keys, 0) + self.post_attention_s(tokens)
                 + (self.kv_copy_s(keys) if past else 0.0))
        return parts + layer_extra_s(self, parts, tokens=tokens, past=past)

    def forward_s(self, tokens: int, keys: int) -> float:
        """A whole forward of a chunk (the ``forward`` points: embedding and every layer, no head)."""
        return self.embed_s(tokens) + self.model.num_layers * self.layer_s(tokens, keys)
