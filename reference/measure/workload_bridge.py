"""The workload probe at a CPU profile's speed: what ``reference.measure.timing.workload_probe_s`` (one
forward of the cluster's own model, 256 tokens, one thread) would have taken on the machine the
profile was measured on, written into the profile as ``workload_probe_s``.

    python -m reference.measure.workload_bridge PROFILE.json [--repeat 7]

Why: the simulator brings a profile to the speed of each measured round by a probe taken around the
round. The GEMM probe (``speed_probe_s``) tracks the machine's speed within a session but not across
days: on 2026-12-05/06 the cluster model's forward took 72 ms at a GEMM probe of 3.30 ms, on the
morning of 2026-12-06 86 ms at 3.11 ms (docs/validation.md, section 3). The workload probe is the
ranks' own mix of work, and every measured round records it; what was missing is its value at the
profile's speed. This measures it now, bridged by the profile's own points: it re-times the profile's
whole-``layer`` points with the profile's code (``profile.Parts.layer``), takes the workload probe
between them, and divides the workload probe by the median ratio of now to the profile (each profile
point brought to the profile's GEMM speed, as the simulator reads it). Nothing from any cluster run
enters. Run it on an idle machine; it takes a minute or two.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from datetime import datetime, timezone

from reference.measure.timing import MeasureError, make_timer, write_atomic


def bridge(profile: dict, repeat: int, say=print) -> dict:
    """The ``workload_probe`` record for ``profile`` (a CPU profile with ``layer`` points)."""
    import torch

    from reference.checkpoint import DTYPES, load_model
    from reference.measure.timing import workload_probe_s
    from reference.measure.profile import Parts

    if not isinstance(profile, dict) or not isinstance(profile.get("components"), dict):
        raise MeasureError("not a profile (reference.measure.profile): no components")
    if profile.get("device_type") != "cpu" or not profile.get("speed_probe_s"):
        raise MeasureError("the workload bridge is for CPU profiles (a speed_probe_s and layer points)")
    points = [e for e in profile["components"].get("layer", []) if e.get("probe_s")]
    if not points:
        raise MeasureError("the profile has no layer points with a probe")
    torch.set_num_threads(profile.get("threads") or 1)
    cpu, dtype = torch.device("cpu"), DTYPES[profile["dtype"]]
    spec, model, _ = load_model(profile["model_arg"], cpu, dtype, seed=0)
    parts = Parts(model.fuse_(), spec, cpu, dtype)
    timer = make_timer(cpu, 1, repeat)
    ratios, workloads = [], []
    with torch.no_grad():
        for e in points:
            then = e["median_s"] * profile["speed_probe_s"] / e["probe_s"]  # at the profile's speed
            now = statistics.median(timer(parts.layer(e["tokens"], e["keys"] - e["tokens"])))
            workloads.append(workload_probe_s(profile["model_arg"], profile["dtype"], repeat=repeat))
            ratios.append(now / then)
            say(f"layer {e['tokens']} tokens, {e['keys']} keys: now {now * 1e3:.2f} ms, profile "
                f"{then * 1e3:.2f} ms ({now / then:.3f}x); workload probe {workloads[-1] * 1e3:.1f} ms")
    ratio, workload = statistics.median(ratios), statistics.median(workloads)
    return {"workload_probe_s": workload / ratio,
            "workload_probe_bridge": {"measured_s": workload, "layer_ratio": ratio, "layer_ratios": ratios,
                                      "workload_samples_s": workloads, "repeat": repeat,
                                      "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                      "command": "python -m reference.measure.workload_bridge " + " ".join(sys.argv[1:])}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reference.measure.workload_bridge",
                                 description="Add the workload probe at a CPU profile's speed to the profile.")
    ap.add_argument("profile", help="CPU profile JSON (reference.measure.profile), updated in place")
    ap.add_argument("--repeat", type=int, default=7, help="timed calls per point (default 7)")
    args = ap.parse_args(argv)
    try:
        if args.repeat < 1:
            raise MeasureError("need --repeat >= 1")
        try:
            with open(args.profile, encoding="utf-8") as f:
                profile = json.load(f)
        except (OSError, ValueError) as e:
            raise MeasureError(f"{args.profile}: {e}") from None
        record = bridge(profile, args.repeat)
    except ValueError as e:
        print(f"python -m reference.measure.workload_bridge: error: {e}", file=sys.stderr)
        return 2
    profile.update(record)
    write_atomic(args.profile, profile)
    print(f"workload probe at the profile's speed: {record['workload_probe_s'] * 1e3:.1f} ms "
          f"(measured {record['workload_probe_bridge']['measured_s'] * 1e3:.1f} ms, the machine "
          f"{record['workload_probe_bridge']['layer_ratio']:.3f}x the profile's time); wrote {args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
