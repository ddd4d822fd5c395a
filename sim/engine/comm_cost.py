"""Communication's cost to compute: how much slower a GPU computes while NCCL kernels hold some of its
SMs, by their thread blocks (``nccl.p2p_ctas``, ``nccl.collective_ctas``). Pure functions; the engine
(``Sim.compute``) and the kvr chain's closed form apply it. docs/cost_model.md, "Communication's cost to
compute".
"""
from __future__ import annotations

import functools
import math

# How much slower a decoder layer runs while a kernel of this many thread blocks (512 threads each, as
# NCCL's) is resident beside it on the GPU's SMs, measured on one H100 (2026-12-06): the mean over
# llama-2-7b and falcon-7b layers of 1024, 2048 and 4096 tokens of (slowdown / the fraction of the
# layers' time the kernel was resident), profiles/gpu/h100-comm-cost-{llama-2-7b,falcon-7b}-bf16.json
# (``python -m reference.measure.comm_cost``; tests/sim/test_comm_cost.py recomputes these from them).
# The per-point values spread widely (2 blocks: 0.19-0.49): docs/cost_model.md.
COMM_CTAS_MEASURED = (1, 2, 4, 8)
COMM_COMPUTE_SLOWDOWN = (0.177, 0.331, 0.473, 0.456)


@functools.lru_cache(maxsize=None)
def compute_slowdown(ctas: int) -> float:
    """The slowdown of compute beside ``ctas`` resident NCCL thread blocks: the measured table,
    interpolated in log2(ctas), held at its last value beyond 8 (more blocks were measured on one
    model only and cost more: the figure is a floor there)."""
    if ctas <= 0:
        return 0.0
    xs = [math.log2(k) for k in COMM_CTAS_MEASURED]
    x = min(max(math.log2(ctas), xs[0]), xs[-1])
    for (x0, y0), (x1, y1) in zip(zip(xs, COMM_COMPUTE_SLOWDOWN), zip(xs[1:], COMM_COMPUTE_SLOWDOWN[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return COMM_COMPUTE_SLOWDOWN[-1]
