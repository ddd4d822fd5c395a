"""single: one process prefills the whole prompt into a local KV-cache."""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import KVCache
from reference.schemes.base import Prefill


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int] = (), transport=None) -> Prefill:
    """input_ids (B, C) -> logits (B, V) of position C-1 and the cache of all C tokens."""
    cache = KVCache(model.spec.num_layers)
    logits = model(input_ids, 0, cache)
    return Prefill(logits, cache)
