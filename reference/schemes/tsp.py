"""tsp: tensor/sequence-parallel prefill. Rank r prefills its even chunk [s_r, e_r) with a
GatheredKVCache: per layer one all-gather of every rank's K and V; its queries attend to keys
[0, e_r) under the causal mask. The rank of the last chunk holds all C tokens and the first token."""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import GatheredKVCache
from reference.schemes import Prefill, chunk_bounds
from reference.transport import Transport


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C), even chunks -> this rank's chunk logits (B, V) and cache (e_r tokens)."""
    start, end = chunk_bounds(chunks, transport.rank)
    cache = GatheredKVCache(model.spec.num_layers, transport, chunks)
    logits = model(input_ids[:, start:end], start, cache)
    return Prefill(logits, cache.finish())
