"""kvr: KV-Runahead. Rank i prefills its chunk [S_{i-1}, S_i) with a ChainedKVCache, which per layer
receives rank i-1's cumulative K, V, appends its own and sends S_i tokens on to rank i+1
asynchronously. The last rank ends with the full cache and the first token's logits."""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import ChainedKVCache
from reference.schemes import Prefill, chunk_bounds
from reference.transport import Transport


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C), chunks c_0..c_{P-1} -> this rank's chunk logits (B, V) and cache (S_i tokens)."""
    start, end = chunk_bounds(chunks, transport.rank)
    cache = ChainedKVCache(model.spec.num_layers, transport, prev_len=start)
    logits = model(input_ids[:, start:end], start, cache)
    return Prefill(logits, cache.finish())
