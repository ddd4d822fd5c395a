"""kvr: KV-Runahead. Rank i prefills its chunk [S_{i-1}, S_i) with a ``ChainedKVCache``, which per
layer receives rank i-1's cumulative K, V, appends its own and sends S_i tokens on to rank i+1
asynchronously. The last rank ends with the full cache and the first token's logits.

Messages carry K and V stacked: (2, B, nkv, S, hd). Reference: ``shared/docs/kv-runahead.md``;
docs/reference.md, "How the schemes hook in".
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import KVCache, cat_tokens
from reference.schemes.base import Prefill, chunk_bounds
from reference.transport import Transport, Work


class ChainedKVCache(KVCache):
    """KV-Runahead: the cumulative cache passed along the chain 0 -> 1 -> ... -> P-1.

    `prev_len` is S_{i-1}, the tokens before this rank's chunk (0 on rank 0). Rank i's update
    receives (2, B, nkv, S_{i-1}, hd) from rank i-1, appends its chunk and, unless it is the last
    rank, starts an asynchronous send of the S_i tokens to rank i+1 without waiting for it: the send
    overlaps this rank's attention and later layers, and ``finish`` waits for all of them.
    """

    def keeps_inputs(self, layer_idx: int) -> bool:
        return False  # k and v are stacked into a new tensor first

    def __init__(self, num_layers: int, transport: Transport, prev_len: int):
        super().__init__(num_layers)
        self.transport, self.prev_len = transport, prev_len
        self.pending: list[Work] = []

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.transport
        kv = torch.stack([k, v])
        if t.rank > 0:
            b, nkv, _, hd = k.shape
            prev = torch.empty((2, b, nkv, self.prev_len, hd), dtype=k.dtype, device=k.device)
            t.recv(prev, t.rank - 1)
            kv = cat_tokens([prev, kv])
        if t.rank < t.world_size - 1:
            self.pending.append(t.isend(kv, t.rank + 1))  # kv is never modified afterwards
        return self._append(layer_idx, kv[0], kv[1])

    def finish(self) -> KVCache:
        for work in self.pending:
            work.wait()
        self.pending.clear()
        return super().finish()


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C), chunks c_0..c_{P-1} -> this rank's chunk logits (B, V) and cache (S_i tokens)."""
    start, end = chunk_bounds(chunks, transport.rank)
    cache = ChainedKVCache(model.spec.num_layers, transport, prev_len=start)
    logits = model(input_ids[:, start:end], start, cache)
    return Prefill(logits, cache.finish())
