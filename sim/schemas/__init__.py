"""JSON Schemas of the files the two halves exchange, shipped with the package, and their check.

| schema | written by | read by |
|---|---|---|
| ``results`` | ``reference.launch`` | ``sim.validation.measured`` |
| ``profile`` | ``reference.measure.profile`` | ``sim.cost.profiled`` |
| ``replay`` | ``reference.measure.replay`` | ``sim.validation.replay`` |
| ``kvr-table`` | ``python -m sim.partition build-table`` | ``sim.partition.table`` |
| ``report`` | ``python -m sim --out`` | users, the docs' tables |
| ``trace`` | ``reference.launch --trace`` | ``sim.validation.measured.measured_trace`` |

``validate(doc, name, source)`` raises ``SchemaError`` (one line: the file, the field's path, what is
wrong). ``python -m sim.schemas`` prints each schema's field table (docs/schemas.md is generated from
it). The checking is the ``jsonschema`` library's (docs/design.md, "Libraries").
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any

NAMES = ("results", "profile", "replay", "kvr-table", "report", "trace")
_FOLDER = os.path.dirname(os.path.abspath(__file__))


class SchemaError(ValueError):
    """A file that does not match its schema: ``FILE: FIELD: why``."""


@functools.cache
def schema(name: str) -> dict:
    with open(os.path.join(_FOLDER, f"{name}.schema.json"), encoding="utf-8") as f:
        return json.load(f)


@functools.cache
def _validator(name: str):
    import jsonschema

    return jsonschema.Draft202012Validator(schema(name))


def validate(doc: Any, name: str, source: str) -> None:
    """Check ``doc`` (parsed JSON) against schema ``name``; the first error, by its field's path."""
    errors = sorted(_validator(name).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        e = errors[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path).lstrip(".") or "(top level)"
        message = " ".join(e.message.split())
        if len(message) > 200:
            message = message[:200] + "..."
        raise SchemaError(f"{source}: {field}: {message} (the {name} schema, sim/schemas/{name}.schema.json)")


def markdown(name: str) -> str:
    """The field table of schema ``name``: top-level fields, then those of its list items."""
    s = schema(name)
    lines = [f"### `{name}` ({s['title']})", "", s.get("description", ""), "",
             "| field | type | required | meaning |", "|---|---|---|---|"]

    def rows(props: dict, required: list, prefix: str) -> None:
        for key, p in props.items():
            kind = p.get("type", "enum" if "enum" in p else "const" if "const" in p else "")
            kind = " or ".join(kind) if isinstance(kind, list) else kind
            if "enum" in p:
                kind = " / ".join(f"`{v}`" for v in p["enum"])
            lines.append(f"| `{prefix}{key}` | {kind} | {'yes' if key in required else ''} | {p.get('description', '')} |")
            items = p.get("items", {})
            if isinstance(items, dict) and items.get("properties"):
                rows(items["properties"], items.get("required", []), f"{prefix}{key}[].")
    rows(s["properties"], s.get("required", []), "")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.schemas``: every schema's field table, as docs/schemas.md holds them."""
    print("\n".join(markdown(n) for n in NAMES), end="")
    return 0
