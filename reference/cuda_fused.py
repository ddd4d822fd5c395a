"""``cuda_fused``: run a chain of elementwise torch ops as one compiled kernel on CUDA tensors.

Used by ``reference.layers`` (norms, rotary, SiLU*up) and ``reference.chunk_attention`` (the
log-sum-exp merge). On CPUs the function runs as written.
"""
from __future__ import annotations

import functools
import math
import os
import threading
import types
import warnings
from typing import Callable

import torch


def _variant_key(args: tuple) -> tuple:
    """What a compiled graph specialises on besides sizes: each tensor's dtype, rank and device, which
    of its sizes are 1 (dynamic shapes specialise on them) and the order of its strides (a transposed
    view and a slice guard on different stride relations), and every other argument's value (a norm's
    eps)."""
    def tensor_key(a: torch.Tensor) -> tuple:
        sizes = a.shape
        wide = [d for d in range(a.dim()) if sizes[d] != 1]
        subsets = [tuple(d for j, d in enumerate(wide) if mask >> j & 1) for mask in range(1 << len(wide))]
        # each stride as the products of the tensor's own sizes it equals (what the graph's guards
        # relate it to), e.g. a transposed view's stride (0, 1) against a slice's ()
        strides = tuple(tuple(ds for ds in subsets if d not in ds and math.prod(sizes[x] for x in ds) == a.stride(d))
                        for d in wide)
        return a.dtype, a.dim(), a.device, tuple(n == 1 for n in sizes), strides
    return tuple(tensor_key(a) if isinstance(a, torch.Tensor) else (type(a), a) for a in args)


# Calls of compiled copies, one thread at a time: while one thread compiles (dynamo traces with FX, a
# process-wide flag), another thread's call of any compiled function fails ("Detected that you are
# using FX to symbolically trace a dynamo-optimized function"), as ranks run as threads on one GPU do.
_CALL_LOCK = threading.RLock()

# torch.compile's error when a code object has used up its recompilations (the name changed across
# releases); a fresh copy of the function starts with none used.
_LIMIT_ERRORS = ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")


def _fresh_copy(fn: Callable) -> Callable:
    """``fn`` with a code object of its own: torch.compile keeps its graphs, and counts recompilations
    against its limit, per code object."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return functools.update_wrapper(copy, fn)


class Variants:
    """Compiled copies of ``fn``, one per variant of its arguments (``_variant_key``). A call compiles
    the variant's copy the first time; if that copy has used up its recompilations (guards the key
    does not see), a fresh copy replaces it. Any other compiler error is raised. Calls hold
    ``_CALL_LOCK``, so threads never call one while another compiles."""

    def __init__(self, fn: Callable[..., torch.Tensor], **compile_options):
        # dynamic=None: torch.compile's automatic dynamic shapes. The first call compiles for its sizes;
        # a later call whose sizes differ recompiles once with only the sizes that changed (the tokens)
        # symbolic. Heads and head dims stay constants, so the kernel's index arithmetic is cheap and its
        # loads vectorise; with every size symbolic (dynamic=True) Llama-2-7B's rotary ran at about a
        # quarter of the H100's memory bandwidth (docs/benchmarks.md, "Rotary from the QKV output").
        self.fn, self.options, self.copies = fn, {"dynamic": None, "fullgraph": True, **compile_options}, {}

    def __call__(self, *args) -> torch.Tensor:
        key = _variant_key(args)
        for attempt in range(2):
            copy = self.copies.get(key)
            if copy is None:
                copy = self.copies[key] = torch.compile(_fresh_copy(self.fn), **self.options)
            try:
                with _CALL_LOCK:
                    return copy(*args)
            except Exception as e:  # noqa: BLE001 - a copy out of recompilations is replaced once
                if type(e).__name__ not in _LIMIT_ERRORS or attempt:
                    raise
                del self.copies[key]
        raise AssertionError("unreachable")


def cuda_fused(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` as written on CPUs; on CUDA tensors, compiled by torch.compile into one fused kernel.

    Memory-bound chains (a norm, the rotary rotation, SiLU times up) cost one pass over their
    tensors this way instead of one per eager op; at 16k tokens that is about a tenth of the prefill.
    ``KVR_COMPILE=0`` turns it off. A chunk of a new length recompiles once, with the token count
    symbolic from then on, so chunks of any length reuse that graph. Each variant (dtypes, ranks,
    devices, size-1 dimensions, strides, a norm's eps: ``_variant_key``) compiles its own copy of
    ``fn`` (``Variants``): one code object seeing many variants would recompile for each and, past
    torch.compile's recompile limit, fail (``FailOnRecompileLimitHit``) and run eagerly. Any compiler
    failure turns compilation off for ``fn`` with a warning, and it runs eagerly (still correct).
    """
    variants = Variants(fn)
    failed = False

    @functools.wraps(fn)
    def wrapper(*args):
        nonlocal failed
        if args[0].is_cuda and not failed and os.environ.get("KVR_COMPILE", "1") != "0":
            try:
                return variants(*args)
            except Exception as e:  # noqa: BLE001 - compiler or toolchain trouble: stay correct, eager
                failed = True
                warnings.warn(f"torch.compile of {fn.__name__} failed ({type(e).__name__}: {e}); "
                              "running it eagerly", RuntimeWarning, stacklevel=2)
        return fn(*args)
    return wrapper
