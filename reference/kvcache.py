"""The plain KV-cache, and the copy every cache hook makes of K and V.

A model layer calls ``cache.attend(layer_idx, q, k, v)`` with its own tokens' Q, K and V; by default
that is ``cache.update(layer_idx, k, v)`` (the keys to attend to) and the causal attention of q to
them. Schemes that split the attention itself (ring, ulysses) override ``attend``. ``KVCache`` appends locally and keeps the first k and v it gets
(``keeps_inputs``). The parallel schemes subclass it where they communicate: ``ChainedKVCache`` in
``reference/schemes/kvr.py``, ``GatheredKVCache`` in ``reference/schemes/tsp.py``; so the model code
stays single-device. Reference: ``shared/docs/kv-runahead.md``; docs/reference.md, "How the schemes
hook in".

Shapes: B batch, nkv KV heads, T own new tokens, S tokens held, hd head dim. K and V are
(B, nkv, S, hd).
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.layers import attention


def cat_tokens(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts, dim=-2)`` of (..., S_i, hd) tensors with equal leading dims, at copy speed.

    PyTorch's CUDA cat runs at copy speed only for contiguous inputs of at most 4 dims; a stacked K
    and V (2, B, nkv, S, hd), or one non-contiguous input (a layer's new K, a view into its fused QKV
    output), takes slower paths (docs/benchmarks.md, "Concatenating K and V"). So every part is made
    contiguous (a copy only for the small new chunk or a padded slice) and concatenated as a 3-D view
    (2 * B * nkv, S, hd)."""
    *lead, _, hd = parts[0].shape
    flat = [p.contiguous().view(-1, p.shape[-2], hd) for p in parts]
    return torch.cat(flat, dim=-2).view(*lead, -1, hd)


class KVCache:
    """Per-layer K and V of the tokens seen so far, on this process."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers

    @property
    def seq_len(self) -> int:
        """Tokens held (by layer 0)."""
        return 0 if self.k[0] is None else self.k[0].shape[-2]

    def keeps_inputs(self, layer_idx: int) -> bool:
        """Whether ``update(layer_idx, k, v)`` would keep the caller's k and v themselves (not a copy):
        a plain cache's first update of a layer does. A caller that overwrites its tensors later
        (``reference/cuda_graphs.py``) passes copies then."""
        return self.k[layer_idx] is None

    def _append(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k[layer_idx] is not None:
            k = cat_tokens([self.k[layer_idx], k])
            v = cat_tokens([self.v[layer_idx], v])
        self.k[layer_idx], self.v[layer_idx] = k, v
        return k, v

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k, v (B, nkv, T, hd); return all of the layer's (B, nkv, S, hd)."""
        return self._append(layer_idx, k, v)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, nh, T, hd) and this step's k, v (B, nkv, T, hd) -> attention output (B, nh, T, hd)
        of the T queries to the keys ``update`` returns, causal at the bottom right."""
        k, v = self.update(layer_idx, k, v)                             # (B, nkv, S, hd)
        return attention(q, k, v)

    def finish(self) -> "KVCache":
        """After prefill: wait for outstanding communication; return a cache that decodes locally."""
        local = KVCache(len(self.k))
        local.k, local.v = list(self.k), list(self.v)
        return local
