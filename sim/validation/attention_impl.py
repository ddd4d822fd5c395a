"""The analytic attention costs against transformers' own attention measured on a GPU: eager (the
scores materialised, ``hardware.attention: eager``) and sdpa (against the flash-style cost).

    python -m sim.validation.attention_impl profiles/h200-hf-attention-fp16.json

The measurements are ``python -m reference.measure.hf_attention``'s (one GPU, fp16; docs/cost_model.md,
"Attention implementations"). For each model and implementation it prints, per (queries, keys) point,
the measured and the analytic time on the measured GPU's preset, the error, and the MAPE and worst
case; exit 1 if the file cannot be read. No torch.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..cost.analytic import AnalyticCost
from ..cost import causal_pairs
from ..hardware import DEVICE_NAMES, GPU_PRESETS
from ..model import ModelSpec

# transformers' implementation -> the simulator's attention model it is compared with
IMPL_MODEL = {"eager": "eager", "sdpa": "flash"}


class AttentionCheckError(ValueError):
    """A measurement file that is not an hf-attention result."""


def load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise AttentionCheckError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != "hf-attention/1" or not isinstance(doc.get("rows"), list):
        raise AttentionCheckError(f"{path}: not a result of python -m reference.measure.hf_attention "
                                  "(schema hf-attention/1)")
    return doc


def preset_of(device: str) -> str:
    for key, preset in DEVICE_NAMES.items():
        if key in device:
            return preset
    raise AttentionCheckError(f"device {device!r} has no GPU preset ({', '.join(DEVICE_NAMES)})")


def compare(doc: dict) -> list[dict]:
    """One row per measured point: model, impl, queries, keys, measured and analytic seconds, error."""
    gpu = GPU_PRESETS[preset_of(doc["device"])]
    out = []
    for row in doc["rows"]:
        model = ModelSpec.preset(row["model"])
        cost = AnalyticCost(model, gpu.replace(attention_impl=IMPL_MODEL[row["impl"]]), doc["dtype"])
        q, k = row["queries"], row["keys"]
        analytic_s = cost.attention_s(q, k, causal_pairs(q, k))
        out.append({**{key: row[key] for key in ("model", "impl", "queries", "keys")},
                    "measured_s": row["median_s"], "analytic_s": analytic_s,
                    "error": analytic_s / row["median_s"] - 1})
    return out


def summary(rows: list[dict]) -> dict[tuple[str, str], tuple[float, dict]]:
    """(model, impl) -> (MAPE, the worst row)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["impl"]), []).append(r)
    return {key: (sum(abs(r["error"]) for r in g) / len(g), max(g, key=lambda r: abs(r["error"])))
            for key, g in groups.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.validation.attention_impl", description=__doc__.split("\n\n")[0])
    p.add_argument("measurements", help="JSON of python -m reference.measure.hf_attention")
    args = p.parse_args(argv)
    try:
        doc = load(args.measurements)
        rows = compare(doc)
    except AttentionCheckError as e:
        print(f"python -m sim.validation.attention_impl: error: {e}", file=sys.stderr)
        return 2
    print(f"{doc['device']}, {doc['dtype']}, transformers {doc.get('transformers_version')}: measured attention "
          f"against the analytic model on the {preset_of(doc['device'])} preset")
    print(f"{'model':12} {'impl':6} {'queries':>8} {'keys':>7} {'measured ms':>12} {'analytic ms':>12} {'error':>8}")
    for r in rows:
        print(f"{r['model']:12} {r['impl'] + '/' + IMPL_MODEL[r['impl']][:5]:6} {r['queries']:8d} {r['keys']:7d} "
              f"{r['measured_s'] * 1e3:12.3f} {r['analytic_s'] * 1e3:12.3f} {r['error'] * 100:+7.1f}%")
    for (model, impl), (mape, worst) in summary(rows).items():
        print(f"{model} {impl} (analytic {IMPL_MODEL[impl]}): MAPE {mape * 100:.1f}%, worst {worst['error'] * 100:+.1f}% "
              f"at {worst['queries']} x {worst['keys']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
