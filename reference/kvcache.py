"""The plain KV-cache, and the copy every cache hook makes of K and V.

A model layer calls ``cache.attend(layer_idx, q, k, v)`` with its own tokens' Q, K and V; by default
that is ``cache.update(layer_idx, k, v)`` (the keys to attend to) and the causal attention of q to
them. Schemes that split the attention itself (ring, ulysses) override ``attend``. ``KVCache`` appends locally and keeps the first k and v it gets
(``keeps_inputs``). The parallel schemes subclass it where they communicate: ``ChainedKVCache`` in
``reference/schemes/kvr.py``, ``GatheredKVCache`` in ``reference/schemes/tsp.py``; so the model code
stays single-device. Reference: ``shared/docs/kv-runahead.md``; docs/reference.md, "How the schemes
hook in".

Shapes: B batch, nkv KV heads, T own new tokens, S tokens held, hd head dim. K and V are
(B, nkv, S, hd); a ``ResidentKVCache`` holds them as views of one token-major buffer.
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


def token_major(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V (B, nkv, S, hd) as views of a token-major buffer (S, 2, B, nkv, hd)."""
    return kv[:, 0].permute(1, 2, 0, 3), kv[:, 1].permute(1, 2, 0, 3)


class ResidentKVCache(KVCache):
    """K/V that stay where they land: per layer one token-major buffer (N, 2, B, nkv, hd) whose first
    ``past`` tokens are filled by someone else (``fill_past``: a KV-Runahead receive, or a replay's
    preset) and each update writes its tokens after the last (a copy of those T tokens only); attention
    reads K and V as strided views of the tokens held. Nothing held is ever copied again, and every
    prefix of a buffer is contiguous, so a receive can land in the past and a send can go from the
    tokens held (``ChainedKVCache``). N is ``capacity`` where given (a pipeline stage's whole prompt,
    appended piece by piece), else ``past`` + the first update's T (one update per layer)."""

    def __init__(self, num_layers: int, past: int = 0, buffers: list[torch.Tensor] | None = None,
                 capacity: int | None = None):
        super().__init__(num_layers)
        self.past, self.capacity = past, capacity
        self.buffers: list[torch.Tensor | None] = list(buffers) if buffers is not None else [None] * num_layers
        self.length = [past] * num_layers  # tokens held, per layer

    def keeps_inputs(self, layer_idx: int) -> bool:
        return False  # k and v are copied into the buffer

    def fill_past(self, layer_idx: int, past: torch.Tensor) -> None:
        """Put the layer's past (past, 2, B, nkv, hd) in place; given buffers already hold it."""

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, nkv, t, hd = k.shape
        held, buf = self.length[layer_idx], self.buffers[layer_idx]
        if buf is None:
            size = self.capacity if self.capacity is not None else self.past + t
            buf = self.buffers[layer_idx] = torch.empty((size, 2, b, nkv, hd), dtype=k.dtype, device=k.device)
            if self.past:
                self.fill_past(layer_idx, buf[:self.past])
        if buf.shape[1:] != (2, b, nkv, hd) or held + t > buf.shape[0]:
            raise ValueError(f"layer {layer_idx}: buffer {tuple(buf.shape)} cannot take {t} more tokens of "
                             f"(2, {b}, {nkv}, {hd}) after {held}")
        own = buf[held:held + t]
        own[:, 0].copy_(k.permute(2, 0, 1, 3))
        own[:, 1].copy_(v.permute(2, 0, 1, 3))
        self.length[layer_idx] = held + t
        self.k[layer_idx], self.v[layer_idx] = token_major(buf[:held + t])
        return self.k[layer_idx], self.v[layer_idx]

    def held(self, layer_idx: int) -> torch.Tensor:
        """The layer's tokens held, (S, 2, B, nkv, hd), contiguous."""
        return self.buffers[layer_idx][:self.length[layer_idx]]
