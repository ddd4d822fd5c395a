"""Held-out checks of a measured profile: each grid point the profile flagged ``held_out`` predicted
by a cost model fitted without it, and the whole-layer and whole-forward checks against the parts
(docs/validation.md, "Profiles").

    python -m sim.validation.held_out PROFILE.json [...]
"""
from __future__ import annotations

import sys
from typing import Any, Mapping

from ..cost.profiled import LINEAR_PARTS, ProfileCost, ProfileError


def held_out_errors(profile: Mapping[str, Any]) -> list[tuple[str, str, float, float]]:
    """(component, point, measured s, predicted s) for every held-out grid point (the model never
    fits them); and the whole-layer checks against the sum of the parts."""
    # Each point is compared at the profile's reference speed; the parts and layers with the model as
    # fitted on the parts (they are timed alike), the whole forwards also with the forward calibration.
    fit = ProfileCost(profile, calibrated=False)
    out = []
    comps = profile["components"]
    for name in LINEAR_PARTS:
        for e in comps[name]:
            if e.get("held_out"):
                out.append((name, f"t={e['tokens']}", fit.seconds(e), getattr(fit, f"{name}_s")(e["tokens"])))
    for e in comps["attention"]:
        if e.get("held_out"):
            out.append(("attention", f"c={e['queries']} k={e['keys']}", fit.seconds(e),
                        fit.attention_s(e["queries"], e["keys"], 0)))
    for e in comps.get("layer", []):
        out.append(("layer (parts, floor)", f"t={e['tokens']} k={e['keys']}", fit.seconds(e),
                    fit.layer_s(e["tokens"], e["keys"])))
    calibrated = ProfileCost(profile)
    for e in comps.get("forward", []) if profile.get("device_type") == "cuda" else []:
        if e.get("held_out"):
            point = f"t={e['tokens']} k={e['keys']}"
            out.append(("forward, calibrated", point, fit.seconds(e), calibrated.forward_s(e["tokens"], e["keys"])))
            out.append(("forward, uncalibrated", point, fit.seconds(e), fit.forward_s(e["tokens"], e["keys"])))
    return out


def held_out_report(path: str) -> str:
    """The text ``python -m sim.validation.held_out PROFILE`` prints."""
    cost = ProfileCost.load(path)
    p = cost.profile
    lines = [f"profile {path}: {p['model']['name']} {p['dtype']} on {p['device']}, torch {p['torch_version']}, "
             f"{p['timestamp_utc']}, {p['repeat']} samples a point (median)",
             f"{'component':<22}{'point':<18}{'measured ms':>12}{'predicted ms':>14}{'error':>9}"]
    errors = {}
    for name, point, measured, predicted in held_out_errors(p):
        err = (predicted - measured) / measured
        errors.setdefault(name, []).append(abs(err))
        lines.append(f"{name:<22}{point:<18}{measured * 1e3:>12.3f}{predicted * 1e3:>14.3f}{err * 100:>8.1f}%")
    for name, errs in errors.items():
        lines.append(f"mean absolute error, {name}: {100 * sum(errs) / len(errs):.1f}% over {len(errs)} points")
    for e in p["components"].get("forward", []):
        if not e.get("held_out"):
            lines.append(f"forward factor at t={e['tokens']}: {cost.forward_factor(e['tokens']):.3f}")
    for e in p["components"].get("forward", []):
        if e.get("host_s") is not None:
            lines.append(f"host floor per layer, t={e['tokens']} k={e['keys']}: {e['host_s'] * 1e3:.3f} ms")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.validation.held_out PROFILE.json...``: how well each profile predicts its held-out points."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m sim.validation.held_out PROFILE.json [...]\n\n" + (main.__doc__ or ""))
        return 0 if argv else 2
    try:
        for path in argv:
            sys.stdout.write(held_out_report(path))
    except (ProfileError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
