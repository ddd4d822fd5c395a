"""GPU presets: peak dense FLOP/s, HBM bandwidth, memory and the efficiency parameters of the
analytic cost model.

The presets are data with their sources: ``sim/data/gpus.csv`` (NVIDIA A100 SXM4 80 GB, H100 SXM5 and
H200 SXM data sheets; memory as nvidia-smi reports it). The efficiencies are the fraction of peak a
well-tuned kernel reaches; they are round figures, documented in docs/cost_model.md, which a
measured profile replaces.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass
from dataclasses import field as dataclass_field


COMMUNICATION = ("links", "nccl")
# How a KV-Runahead rank holds the cumulative cache (docs/cost_model.md, "The KV chain"): ``resident``
# (the runtime since 2026-12-06: the receive lands in the layer's cache, the rank writes only its own
# tokens) or ``copy`` (the runtime before: received into a buffer of its own and concatenated with the
# chunk's K/V, a copy of the whole cumulative cache a layer; what the measurements up to then ran).
KV_CHAINS = ("resident", "copy")
ATTENTION_IMPLS = ("flash", "eager")


class HardwareError(ValueError):
    """An unknown GPU preset or an impossible hardware parameter."""


@dataclass(frozen=True, kw_only=True)
class GpuSpec:
    """One GPU as the cost model sees it. Rates in FLOP/s and bytes/s, times in seconds."""

    name: str
    peak_flops_per_s: float  # dense fp16/bf16 tensor-core peak
    hbm_bytes_per_s: float
    matmul_efficiency: float = 0.70  # GEMMs (projections, MLP, LM head)
    attention_efficiency: float = 0.50  # fused (flash) attention
    memory_efficiency: float = 0.80  # achieved fraction of HBM bandwidth, every op
    launch_overhead_s: float = 5e-6  # per kernel launch
    # Device memory; None: unknown, the memory check is skipped. Not in the repr, which fingerprints
    # the hardware a KVR-P table was searched for (sim/partition/table.py): memory changes no time.
    memory_bytes: float | None = dataclass_field(default=None, repr=False)
    # The runtime around the GPU (docs/cost_model.md): how its communication library moves bytes
    # (``links``: each transfer its route's latency and full link rate, every ring step too; ``nccl``:
    # NCCL's algorithms, protocols and channels, sim/engine/nccl.py), and its attention kernel
    # (``flash``: fused, masked blocks skipped; ``eager``: materialised scores, fp32 softmax, masked
    # work computed). Not in the repr: ``runtime_key`` adds them to a KVR-P table's fingerprint
    # where they differ from the defaults, so tables built before they existed stay valid.
    communication: str = dataclass_field(default="links", repr=False)
    attention_impl: str = dataclass_field(default="flash", repr=False)
    kv_chain: str = dataclass_field(default="resident", repr=False)

    def __post_init__(self) -> None:
        for field in ("peak_flops_per_s", "hbm_bytes_per_s"):
            if not getattr(self, field) > 0:
                raise HardwareError(f"gpu {self.name!r}: {field}={getattr(self, field)!r} must be > 0")
        for field in ("matmul_efficiency", "attention_efficiency", "memory_efficiency"):
            v = getattr(self, field)
            if not 0 < v <= 1:
                raise HardwareError(f"gpu {self.name!r}: {field}={v!r} must be in (0, 1]")
        if not self.launch_overhead_s >= 0:
            raise HardwareError(f"gpu {self.name!r}: launch_overhead_s={self.launch_overhead_s!r} must be >= 0")
        if self.memory_bytes is not None and not self.memory_bytes > 0:
            raise HardwareError(f"gpu {self.name!r}: memory_bytes={self.memory_bytes!r} must be > 0")
        if self.communication not in COMMUNICATION:
            raise HardwareError(f"gpu {self.name!r}: communication={self.communication!r} must be one of "
                                f"{list(COMMUNICATION)}")
        if self.kv_chain not in KV_CHAINS:
            raise HardwareError(f"gpu {self.name!r}: kv_chain={self.kv_chain!r} must be one of {list(KV_CHAINS)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise HardwareError(f"gpu {self.name!r}: attention_impl={self.attention_impl!r} must be one of "
                                f"{list(ATTENTION_IMPLS)}")

    def runtime_key(self) -> tuple[str, ...]:
        """The runtime fields that differ from the defaults, as ``field=value`` strings (for digests).
        ``kv_chain`` is compared with ``copy``, what every table built before the field existed ran."""
        return tuple(f"{k}={v}" for k, v, d in (("communication", self.communication, "links"),
                                                 ("attention_impl", self.attention_impl, "flash"),
                                                 ("kv_chain", self.kv_chain, "copy")) if v != d)

    def replace(self, **changes: object) -> "GpuSpec":
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str) -> "GpuSpec":
        try:
            return GPU_PRESETS[name]
        except KeyError:
            raise HardwareError(f"unknown GPU preset {name!r}; known: {', '.join(GPU_PRESETS)}") from None


MIB = 2**20
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def read_table(name: str) -> list[dict[str, str]]:
    """The rows of ``sim/data/NAME.csv`` (every preset table has a ``source`` column)."""
    with open(os.path.join(DATA, f"{name}.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r.get("source") for r in rows), f"sim/data/{name}.csv: every row needs a source"
    return rows


GPU_PRESETS: dict[str, GpuSpec] = {r["name"]: GpuSpec(
    name=r["name"], peak_flops_per_s=float(r["peak_dense_bf16_tflops"]) * 1e12,
    hbm_bytes_per_s=float(r["hbm_gb_per_s"]) * 1e9, memory_bytes=int(r["memory_mib"]) * MIB)
    for r in read_table("gpus")}

# A profile names its device as torch does (``torch.cuda.get_device_name``): the preset whose memory it has.
DEVICE_NAMES = {"A100": "a100-80gb-sxm", "H100": "h100-sxm", "H200": "h200"}


def memory_of_device(device: str) -> float | None:
    """The memory of a profiled device by its name, or None (a CPU, an unknown GPU)."""
    for key, preset in DEVICE_NAMES.items():
        if key in device and ("80GB" in device or key != "A100"):
            return GPU_PRESETS[preset].memory_bytes
    return None
