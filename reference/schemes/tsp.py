"""tsp: tensor/sequence-parallel prefill. Rank r prefills its even chunk [s_r, e_r) with a
``GatheredKVCache``: per layer one all-gather of every rank's K and V; its queries attend to keys
[0, e_r) under the causal mask. The rank of the last chunk holds all C tokens and the first token.

Messages carry K and V stacked: (2, B, nkv, c, hd). docs/reference.md, "How the schemes hook in".
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import KVCache, cat_tokens
from reference.schemes.base import Prefill, chunk_bounds
from reference.transport import Transport


class GatheredKVCache(KVCache):
    """TSP: per layer one all-gather of every rank's K and V (padded to the largest chunk).

    `chunks` are the token counts of all ranks. Rank r returns keys [0, e_r) where e_r is the end
    of its chunk: keys after e_r are fully masked for its queries, so leaving them out with a
    bottom-right causal mask gives the masked result without computing masked blocks.
    """

    def keeps_inputs(self, layer_idx: int) -> bool:
        return False  # k and v are stacked into a new tensor first

    def __init__(self, num_layers: int, transport: Transport, chunks: Sequence[int]):
        super().__init__(num_layers)
        assert len(chunks) == transport.world_size, (chunks, transport.world_size)
        self.transport, self.chunks = transport, list(chunks)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rank, longest = self.transport.rank, max(self.chunks)
        kv = torch.stack([k, v])  # (2, B, nkv, c_r, hd)
        pad = longest - kv.shape[-2]
        if pad:
            kv = cat_tokens([kv, kv.new_zeros(*kv.shape[:-2], pad, kv.shape[-1])])
        parts = self.transport.all_gather(kv)
        kv = cat_tokens([p[..., :c, :] for p, c in zip(parts[:rank + 1], self.chunks[:rank + 1])])
        return self._append(layer_idx, kv[0], kv[1])


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C), even chunks -> this rank's chunk logits (B, V) and cache (e_r tokens)."""
    start, end = chunk_bounds(chunks, transport.rank)
    cache = GatheredKVCache(model.spec.num_layers, transport, chunks)
    logits = model(input_ids[:, start:end], start, cache)
    return Prefill(logits, cache.finish())
