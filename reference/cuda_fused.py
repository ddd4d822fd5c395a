"""``cuda_fused``: run a chain of elementwise torch ops as one compiled kernel on CUDA tensors.

Used by ``reference.layers`` (norms, rotary, SiLU*up) and ``reference.chunk_attention`` (the
log-sum-exp merge). On CPUs the function runs as written.
"""
from __future__ import annotations

import functools
import os
import types
import warnings
from typing import Callable

import torch


def _variant_key(args: tuple) -> tuple:
    """What a compiled graph specialises on besides sizes: each tensor's dtype, rank and device, and
    every other argument's value (a norm's eps)."""
    return tuple((a.dtype, a.dim(), a.device) if isinstance(a, torch.Tensor) else (type(a), a) for a in args)


def _fresh_copy(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its graphs, and counts recompilations
    against its limit, per code object."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return functools.update_wrapper(copy, fn)


def cuda_fused(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` as written on CPUs; on CUDA tensors, compiled by torch.compile into one fused kernel.

    Memory-bound chains (a norm, the rotary rotation, SiLU times up) cost one pass over their
    tensors this way instead of one per eager op; at 16k tokens that is about a tenth of the prefill.
    ``KVR_COMPILE=0`` turns it off. The compiled graph is shape-dynamic, so chunks of any length
    reuse it. Each variant (dtypes, ranks, devices, a norm's eps: ``_variant_key``) compiles its own
    copy of ``fn`` once: one code object seeing many variants would recompile for each and, past
    torch.compile's recompile limit, fail (``FailOnRecompileLimitHit``) and run eagerly.
    """
    compiled: dict[tuple, Callable[..., torch.Tensor]] = {}
    failed = False

    @functools.wraps(fn)
    def wrapper(*args):
        nonlocal failed
        if args[0].is_cuda and not failed and os.environ.get("KVR_COMPILE", "1") != "0":
            key = _variant_key(args)
            variant = compiled.get(key)
            if variant is None:
                variant = compiled[key] = torch.compile(_fresh_copy(fn), dynamic=True, fullgraph=True)
            try:
                return variant(*args)
            except Exception as e:  # noqa: BLE001 - compiler or toolchain trouble: stay correct, eager
                failed = True
                warnings.warn(f"torch.compile of {fn.__name__} failed ({type(e).__name__}: {e}); "
                              "running it eagerly", RuntimeWarning, stacklevel=2)
        return fn(*args)
    return wrapper
