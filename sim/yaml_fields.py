"""Typed readers of a parsed YAML document: each checks one value and, when it is wrong, raises
``ScenarioError`` naming the YAML path, the rule and the value received
(``clusters[0].bandwidth_gb_per_s: must be > 0, got 0``)."""
from __future__ import annotations

import math
import os
from typing import Any


class ScenarioError(ValueError):
    """Bad scenario input: ``<file>: <yaml path>: <rule>, got <value>``."""


def need(ok: bool, at: str, rule: str, value: Any) -> None:
    if not ok:
        raise ScenarioError(f"{at}: {rule}, got {value!r}")


def mapping(value: Any, at: str, required: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> dict:
    need(isinstance(value, dict), at, "must be a mapping", value)
    for key in value:
        need(key in required or key in optional, f"{at}.{key}" if at != "(top level)" else str(key),
              f"unknown key (known: {', '.join(required + optional)})", value[key])
    for key in required:
        need(key in value, at, f"missing required key {key!r}", sorted(value, key=str))
    return value


def listed(value: Any, at: str, *, empty: bool = False) -> list:
    need(isinstance(value, list), at, "must be a list", value)
    need(empty or bool(value), at, "must not be empty", value)
    return value


def text(value: Any, at: str) -> str:
    need(isinstance(value, str) and bool(value), at, "must be a non-empty string", value)
    return value


def integer(value: Any, at: str, minimum: int = 1) -> int:
    need(isinstance(value, int) and not isinstance(value, bool), at, "must be an integer", value)
    need(value >= minimum, at, f"must be >= {minimum}", value)
    return value


def number(value: Any, at: str, minimum: float | None = None) -> float:
    need(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), at,
          "must be a finite number", value)
    if minimum is None:
        need(value > 0, at, "must be > 0", value)
    else:
        need(value >= minimum, at, f"must be >= {minimum}", value)
    return float(value)


def scenario_path(value: str, base_dir: str) -> str:
    """A path written in a scenario, taken relative to the scenario file's folder (absolute stays)."""
    return os.path.normpath(os.path.join(base_dir, value))
