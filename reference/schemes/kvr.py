"""kvr: KV-Runahead. Rank i prefills its chunk [S_{i-1}, S_i) with a ``ChainedKVCache``, which per
layer receives rank i-1's cumulative K, V, appends its own and sends S_i tokens on to rank i+1
asynchronously. The last rank ends with the full cache and the first token's logits.

Messages carry K and V token-major, (S, 2, B, nkv, hd): the receive lands in the first S_{i-1} tokens of
the layer's cache and the send goes from the whole of it, so no layer copies its cumulative cache
(``reference.kvcache.ResidentKVCache``). Reference: ``shared/docs/kv-runahead.md``;
docs/reference.md, "How the schemes hook in".
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import KVCache, ResidentKVCache
from reference.schemes.base import Prefill, chunk_bounds
from reference.transport import Transport, Work


class ChainedKVCache(ResidentKVCache):
    """KV-Runahead: the cumulative cache passed along the chain 0 -> 1 -> ... -> P-1.

    `prev_len` is S_{i-1}, the tokens before this rank's chunk (0 on rank 0). Per layer, rank i
    receives (S_{i-1}, 2, B, nkv, hd) from rank i-1 straight into the first S_{i-1} tokens of the
    layer's buffer, writes its own chunk after them and, unless it is the last rank, starts an
    asynchronous send of the whole buffer (S_i tokens) to rank i+1 without waiting for it: the send
    overlaps this rank's attention and later layers, and ``finish`` waits for all of them. The buffer
    is never written again, and attention reads K and V as views of it.
    """

    def __init__(self, num_layers: int, transport: Transport, prev_len: int):
        super().__init__(num_layers, past=prev_len)
        self.transport = transport
        self.pending: list[Work] = []

    def fill_past(self, layer_idx: int, past: torch.Tensor) -> None:
        self.transport.recv(past, self.transport.rank - 1)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().update(layer_idx, k, v)
        t = self.transport
        if t.rank < t.world_size - 1:
            self.pending.append(t.isend(self.held(layer_idx), t.rank + 1))
        return k, v

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
