"""Greedy decoding from a prefilled KV-cache (on the rank that holds the whole prompt)."""
from __future__ import annotations

import torch

from reference.kvcache import KVCache


@torch.no_grad()
def greedy(model: torch.nn.Module, logits: torch.Tensor, cache: KVCache, num_tokens: int) -> list[int]:
    """`num_tokens` greedy tokens: the first is argmax(logits) (B=1, V); each next one is decoded
    with the cache, which grows by one token a step."""
    out: list[int] = []
    for _ in range(num_tokens):
        token = int(logits[0].argmax())
        out.append(token)
        if len(out) == num_tokens:
            break
        pos = cache.seq_len
        logits = model(torch.tensor([[token]], device=logits.device), pos, cache)
    return out
