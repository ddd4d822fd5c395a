"""CUDA graphs of every decoder layer's ``pre`` and ``post`` halves, per chunk shape.

Why: below about 2k tokens a 7B model's layer is host-bound: the GPU finishes a small chunk's kernels
faster than Python issues them (measured in docs/benchmarks.md, "CUDA graphs for small chunks", and
docs/validation.md, section 7). A captured graph is one launch, so a layer's host work shrinks to two
graph launches, the cache hook and the attention.

What is captured, for one chunk shape (B, T) and dtype: each layer's ``pre`` (x, cos, sin -> q, k, v,
extra) and ``post`` (x, attention output y, extra -> next x), chained in place: layer l+1's ``pre``
reads layer l's ``post`` output, so a forward copies in only the embedding, cos and sin, and each
layer's attention output. The KV-cache hook and the attention run eagerly between the two graphs:
their shapes depend on the past, and the parallel schemes communicate in the hook. The scheme caches
copy k and v before keeping or sending them; where a plain cache would keep them (its first update of
a layer), ``run`` hands it copies, since the next replay overwrites the graphs' outputs.

Memory: the graphs of one shape hold every layer's outputs (about five (B, T, H) activations a layer,
docs/benchmarks.md); those of the ``KEEP`` most recently used shapes are kept.
Weights are read in place, so a model whose parameters are replaced (``fuse_``, ``.to``) recaptures.

``KVR_CUDA_GRAPHS``: the most tokens (B * T) a chunk may have to run as graphs (default 2048; 0 turns
graphs off). Above it a layer's GPU work hides its host work, and the eager path is as fast.

References: PyTorch ``torch.cuda.graph`` (warm-up on a side stream, shared memory pools replayed in
capture order); gpt-fast and vLLM capture decode steps the same way.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

import torch


KEEP = 2
DEFAULT_MAX_TOKENS = 2048
# Held while capturing. Ranks that run as threads of one process (the GPU tests) must also hold it
# while they draw from the default CUDA generator (building a model): a capture in another thread
# forbids that ("Offset increment outside graph capture").
CAPTURE_LOCK = threading.Lock()


def max_tokens() -> int:
    """``KVR_CUDA_GRAPHS`` as a token count (default 2048; 0: never)."""
    text = os.environ.get("KVR_CUDA_GRAPHS", str(DEFAULT_MAX_TOKENS))
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"KVR_CUDA_GRAPHS={text!r} is not a number of tokens") from None


def applies(x: torch.Tensor) -> bool:
    """Whether a forward over activations x (B, T, H) runs its layers as CUDA graphs."""
    return (x.is_cuda and not torch.is_grad_enabled()
            and x.shape[0] * x.shape[1] <= max_tokens())


def capture(fn: Callable[..., object], args: tuple, pool) -> tuple[torch.cuda.CUDAGraph, object]:
    """``fn(*args)`` captured in a CUDA graph; returns the graph and its (static) outputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture: compiles kernels, picks GEMM algorithms
        fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = fn(*args)
    return graph, out


class LayerGraphs:
    """The ``pre`` and ``post`` graphs of ``layers`` (all of ``model``'s by default) at x's shape."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 layers=None):
        spec = model.spec
        b, t, _ = x.shape
        self.layers = list(model.layers if layers is None else layers)
        self.fingerprint = _fingerprint(model)
        self.x, self.cos, self.sin = x.clone(), cos.clone(), sin.clone()
        self.y = torch.zeros(b, spec.num_heads, t, spec.head_dim, dtype=x.dtype, device=x.device)
        self.pre_graphs, self.pre_out, self.post_graphs = [], [], []
        pool = torch.cuda.graph_pool_handle()
        h = self.x
        with CAPTURE_LOCK:
            for layer in self.layers:
                graph, out = capture(layer.pre, (h, self.cos, self.sin), pool)
                self.pre_graphs.append(graph)
                self.pre_out.append(tuple(out))
                graph, h = capture(layer.post, (h, self.y, *out[3:]), pool)
                self.post_graphs.append(graph)
        self.out = h

    def load(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Copy a forward's inputs into the first layer's static inputs."""
        self.x.copy_(x)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def pre(self, i: int) -> tuple[torch.Tensor, ...]:
        """Replay layer i's ``pre``; its outputs (q, k, v, *extra), overwritten by the next replay."""
        self.pre_graphs[i].replay()
        return self.pre_out[i]

    def post(self, i: int, y: torch.Tensor) -> None:
        """Replay layer i's ``post`` on attention output y (copied in)."""
        self.y.copy_(y)
        self.post_graphs[i].replay()

    def run(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache) -> torch.Tensor:
        """The layers' forward (as ``DecoderBlock.forward`` in turn); the last layer's output, a
        static tensor overwritten by the next run."""
        self.load(x, cos, sin)
        for i, layer in enumerate(self.layers):
            q, k, v = self.pre(i)[:3]
            if cache.keeps_inputs(layer.layer_idx):  # the next replay overwrites k and v
                k, v = k.clone(), v.clone()
            self.post(i, cache.attend(layer.layer_idx, q, k, v))
        return self.out


def _fingerprint(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in model.parameters())


def forget_graphs(model: torch.nn.Module) -> None:
    """Drop ``model``'s captured graphs (after its weights were replaced)."""
    model.__dict__.pop("_cuda_graphs", None)


def layer_graphs(model: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, layers: range | None = None) -> LayerGraphs | None:
    """The graphs for a forward of ``model``'s ``layers`` (default all; a pipeline stage's own) over
    x (B, T, H), captured on first use; None where the eager path runs (not CUDA, autograd on, or
    more than ``max_tokens()`` tokens)."""
    if not applies(x):
        return None
    cache: OrderedDict = model.__dict__.setdefault("_cuda_graphs", OrderedDict())
    span = None if layers is None else (layers.start, layers.stop, layers.step)
    key = (tuple(x.shape), x.dtype, x.device, span)
    graphs = cache.get(key)
    if graphs is not None and graphs.fingerprint != _fingerprint(model):
        del cache[key]
        graphs = None
    if graphs is None:
        while len(cache) >= KEEP:
            cache.popitem(last=False)
        graphs = cache[key] = LayerGraphs(model, x, cos, sin,
                                          layers=None if layers is None else [model.layers[i] for i in layers])
    cache.move_to_end(key)
    return graphs
