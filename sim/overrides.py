"""``--set key.path=value``: command-line overrides of a scenario's fields, applied to the parsed YAML
before it is validated (so an override is checked exactly as the file is).

A path names mapping keys with dots and list items with ``[i]``: ``workload.contexts=[4096, 8192]``,
``clusters[0].bandwidth_gb_per_s=100``, ``hardware.dtype=bf16``. The value is YAML. A path through a
key or item that does not exist is an error; the last key may be new (validation then says whether
the section has such a field).
"""
from __future__ import annotations

import copy
import re
from typing import Any

import yaml

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


class OverrideError(ValueError):
    """A ``--set`` that cannot apply: ``--set TEXT: why``."""


def parse_path(text: str, path: str) -> list[str | int]:
    """``a.b[2].c`` -> ["a", "b", 2, "c"]."""
    steps, at = [], 0
    for m in _STEP.finditer(path):
        if m.start() != at and path[at:m.start()] != ".":
            break
        steps.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        at = m.end()
    if not steps or at != len(path) or path.startswith("."):
        raise OverrideError(f"--set {text}: {path!r} is not a key path like workload.contexts or clusters[0].gpus")
    return steps


def apply(doc: Any, overrides: list[str]) -> Any:
    """A copy of ``doc`` with every ``KEY.PATH=VALUE`` applied in order."""
    doc = copy.deepcopy(doc)
    for text in overrides:
        path, sep, raw = text.partition("=")
        if not sep:
            raise OverrideError(f"--set {text}: must be KEY.PATH=VALUE")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise OverrideError(f"--set {text}: the value is not YAML ({' '.join(str(e).split())})") from None
        steps = parse_path(text, path.strip())
        node = doc
        for i, step in enumerate(steps[:-1]):
            node = _child(node, step, text, steps[: i + 1])
        last = steps[-1]
        if isinstance(last, int):
            _child(node, last, text, steps)  # the item must exist
        elif not isinstance(node, dict):
            raise OverrideError(f"--set {text}: {_name(steps[:-1])} is not a mapping")
        node[last] = value
    return doc


def _child(node: Any, step: str | int, text: str, steps: list) -> Any:
    if isinstance(step, int):
        if not isinstance(node, list) or not 0 <= step < len(node):
            size = f"a list of {len(node)}" if isinstance(node, list) else "not a list"
            raise OverrideError(f"--set {text}: {_name(steps)} does not exist ({_name(steps[:-1])} is {size})")
        return node[step]
    if not isinstance(node, dict) or step not in node:
        known = f" (known: {', '.join(map(str, node))})" if isinstance(node, dict) else ""
        raise OverrideError(f"--set {text}: {_name(steps)} does not exist{known}")
    return node[step]


def _name(steps: list) -> str:
    out = ""
    for s in steps:
        out += f"[{s}]" if isinstance(s, int) else (f".{s}" if out else s)
    return out or "(top level)"
