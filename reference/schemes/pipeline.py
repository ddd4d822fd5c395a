"""pipeline: chunked pipeline parallelism for long prefill (SGLang's and vLLM's). The layers are
split into P contiguous stages (the even split, earlier stages one more: the simulator's
``stage_layers``); the prompt is cut into pieces (default 4P, even) that flow through the stages:
stage s takes piece k's hidden states from stage s-1 (stage 0 embeds it), runs its layers with its
own KV-cache of the earlier pieces, and sends the result to stage s+1 without waiting. The last
stage applies the final norm and LM head to the last piece: it emits the first token. Every stage
keeps its layers' K/V of all C tokens (the other layers' entries stay None): preallocated, each piece
written in place, so no piece copies the earlier ones (``reference.kvcache.ResidentKVCache``, since
2026-12-06). A piece of at most ``KVR_CUDA_GRAPHS`` tokens runs the stage's layers as CUDA graphs
(``reference.cuda_graphs``).

Messages: hidden states (B, c_k, H). Reference: sim/schemes/pipeline.py; docs/reference.md.
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.cuda_graphs import applies
from reference.kvcache import ResidentKVCache
from reference.schemes import check_supported
from reference.schemes.base import Prefill, chunk_bounds
from reference.transport import Transport
from sim.partition import even
from sim.schemes.pipeline import stage_layers


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport, *,
            pieces: int = 0) -> Prefill:
    """input_ids (B, C) -> on the last stage the last position's logits (B, V), elsewhere None; the
    cache of this stage's layers (C tokens). `pieces`: how many pieces (0: 4P; at most C)."""
    spec, (b, context), r, p = model.spec, input_ids.shape, transport.rank, transport.world_size
    check_supported("pipeline", spec, context=context, world_size=p)
    split = even(context, min(pieces or 4 * p, context))
    layers = stage_layers(spec.num_layers, p, r)
    cache, sends, x = ResidentKVCache(spec.num_layers, capacity=context), [], None  # pieces land in place
    for k, c in enumerate(split):
        start, end = chunk_bounds(split, k)
        if r == 0:
            x = model.tok_embeddings(input_ids[:, start:end])           # (B, c_k, H)
        else:
            x = torch.empty(b, c, spec.hidden_size, dtype=model.tok_embeddings.weight.dtype,
                            device=input_ids.device)
            transport.recv(x, r - 1)
        x = model.run_layers(x, start, cache, layers=layers)
        if r < p - 1:
            if applies(x):  # a CUDA graph's output, which the next piece's run overwrites
                x = x.clone()
            sends.append(transport.isend(x, r + 1))                     # x is never modified afterwards
    for work in sends:
        work.wait()
    return Prefill(model.head(x) if r == p - 1 else None, cache.finish())
