"""The ``hardware`` section of a scenario: the GPU (a preset and its overrides, or the device of measured
profiles), its memory, and the runtime around it (communication library, attention kernel); errors
name the YAML path (docs/scenarios.md, "hardware").
"""
from __future__ import annotations

from typing import Any

from .cost.profiled import ProfileCost, ProfileError
from .hardware import ATTENTION_IMPLS, COMMUNICATION, KV_CHAINS, GPU_PRESETS, GpuSpec, HardwareError, memory_of_device
from .model import DTYPE_BYTES, ModelSpec, ModelSpecError
from .scenario_clusters import GB, US_PER_S
from .yaml_fields import ScenarioError, listed, mapping, need, number, scenario_path, text

FIELDS = ("gpu", "profile", "dtype", "peak_tflops", "hbm_gb_per_s", "matmul_efficiency", "attention_efficiency",
          "memory_efficiency", "launch_overhead_us", "memory_gb", "check_memory", "communication", "attention", "kv_chain")


def section(value: Any) -> tuple[dict, str]:
    """The checked ``hardware`` mapping and its dtype."""
    hw = mapping(value, "hardware", optional=FIELDS)
    need("gpu" in hw or "profile" in hw, "hardware", "needs `gpu` (analytic costs) or `profile`", sorted(hw))
    dtype = hw.get("dtype", "fp16")
    need(dtype in DTYPE_BYTES, "hardware.dtype", f"must be one of {sorted(DTYPE_BYTES)}", dtype)
    return hw, dtype


def gpu(hw: dict, profiles) -> GpuSpec:
    """The scenario's GPU: the preset with its overrides (or the profiled device), its memory and runtime."""
    return _runtime(hw, _memory(hw, _preset(hw) if "gpu" in hw else _profile_gpu(profiles)), profiles)


def _preset(hw: dict) -> GpuSpec:
    name = text(hw["gpu"], "hardware.gpu")
    need(name in GPU_PRESETS, "hardware.gpu", f"must be one of {list(GPU_PRESETS)}", name)
    scale = {"peak_tflops": ("peak_flops_per_s", 1e12), "hbm_gb_per_s": ("hbm_bytes_per_s", GB),
             "launch_overhead_us": ("launch_overhead_s", 1 / US_PER_S), "matmul_efficiency": ("matmul_efficiency", 1),
             "attention_efficiency": ("attention_efficiency", 1), "memory_efficiency": ("memory_efficiency", 1)}
    changes = {}
    for key, (field, unit) in scale.items():
        if key in hw:
            low = 0 if key == "launch_overhead_us" else None
            value = number(hw[key], f"hardware.{key}", minimum=low)
            changes[field] = value / US_PER_S if key == "launch_overhead_us" else value * unit
    try:
        return GPU_PRESETS[name].replace(**changes)
    except HardwareError as e:
        raise ScenarioError(f"hardware: {e}") from None


def profiles(hw: dict, models: tuple[ModelSpec, ...], dtype: str,
              base_dir: str) -> tuple[tuple[str, ProfileCost], ...]:
    """``hardware.profile``: a profile path or a list of them; each scenario model needs one of its shapes."""
    if "profile" not in hw:
        return ()
    value = hw["profile"]
    paths = [value] if isinstance(value, str) else listed(value, "hardware.profile")
    costs = []
    for i, p in enumerate(paths):
        at = "hardware.profile" if isinstance(value, str) else f"hardware.profile[{i}]"
        try:
            cost = ProfileCost.load(scenario_path(text(p, at), base_dir))
            costs.append((cost, cost.model))
        except (ProfileError, ModelSpecError, KeyError) as e:
            raise ScenarioError(f"{at}: must be a profile JSON (python -m reference.measure.profile), got {p!r} ({e})") from None
        need(cost.dtype == dtype, f"{at}", f"was measured in {cost.dtype}, but hardware.dtype is {dtype}", p)
    out = []
    for i, model in enumerate(models):
        fits = [c for c, m in costs if m.replace(name=model.name) == model]
        need(bool(fits), f"models[{i}]", "has no profile of its shapes in hardware.profile", model.name)
        out.append((model.name, fits[0]))
    return tuple(out)


def _profile_gpu(profiles) -> GpuSpec:
    """A stand-in GpuSpec that names the profiled device (the profile answers every cost question) and
    has its memory where the device is a known GPU."""
    device = profiles[0][1].device
    return GpuSpec(name=f"profile: {device}", peak_flops_per_s=1.0, hbm_bytes_per_s=1.0,
                   memory_bytes=memory_of_device(device))


def _memory(hw: dict, gpu: GpuSpec) -> GpuSpec:
    """``hardware.memory_gb`` (the GPU's memory, 10^9 bytes) and ``hardware.check_memory`` (false: no
    memory check)."""
    check = hw.get("check_memory", True)
    need(isinstance(check, bool), "hardware.check_memory", "must be true or false", check)
    if "memory_gb" in hw:
        need(check, "hardware.memory_gb", "has no use with check_memory: false", hw["memory_gb"])
        return gpu.replace(memory_bytes=number(hw["memory_gb"], "hardware.memory_gb") * GB)
    return gpu if check else gpu.replace(memory_bytes=None)


DEFAULT_GPU_COMMUNICATION = "nccl"  # GPUs talk through NCCL; "links" is the ideal model, kept as an option


def _runtime(hw: dict, gpu: GpuSpec, profiles) -> GpuSpec:
    """``hardware.communication`` (``nccl``, the default on GPUs; ``links``, the default for a CPU
    profile, whose gloo ranks are not NCCL's) and ``hardware.attention`` (``flash``, the default, or
    ``eager``: analytic costs only, a profile measured its runtime's own attention) and
    ``hardware.kv_chain`` (``resident``, the default and today's runtime, or ``copy``: the runtime
    that made the measurements of 2026-12-06 and before, sim/hardware.py ``KV_CHAINS``)."""
    on_cpu = bool(profiles) and profiles[0][1].device.lower().startswith("cpu")
    comm = hw.get("communication", "links" if on_cpu else DEFAULT_GPU_COMMUNICATION)
    need(comm in COMMUNICATION, "hardware.communication", f"must be one of {list(COMMUNICATION)}", comm)
    attention = hw.get("attention", "flash")
    need(attention in ATTENTION_IMPLS, "hardware.attention", f"must be one of {list(ATTENTION_IMPLS)}", attention)
    need(attention == "flash" or not profiles, "hardware.attention", "applies to analytic costs (hardware.gpu) "
         "only: a profile measured its runtime's own attention", attention)
    chain = hw.get("kv_chain", "resident")
    need(chain in KV_CHAINS, "hardware.kv_chain", f"must be one of {list(KV_CHAINS)}", chain)
    return gpu.replace(communication=comm, attention_impl=attention, kv_chain=chain)
