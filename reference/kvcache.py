"""KV-caches, and the two parallel schemes hooked where a layer appends its new keys and values.

A model layer calls ``cache.update(layer_idx, k, v)`` with its own tokens' K and V and attends to
what comes back. The plain ``KVCache`` appends locally and keeps the first k and v it gets
(``keeps_inputs``). The scheme caches copy k and v (``torch.stack``) before keeping or sending them,
and change what comes back:

- ``ChainedKVCache`` (KV-Runahead): receive rank i-1's cumulative K, V for this layer, append the
  own chunk, send the cumulative K, V on to rank i+1 asynchronously, return all of them.
- ``GatheredKVCache`` (TSP): all-gather every rank's chunk, return keys [0, end of the own chunk).

So the model code stays single-device. Reference: ``shared/docs/kv-runahead.md``; docs/design.md.

Shapes: B batch, nkv KV heads, T own new tokens, S tokens held, hd head dim. K and V are
(B, nkv, S, hd). Messages carry K and V stacked: (2, B, nkv, S, hd).
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.transport import Transport, Work


def cat_tokens(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts, dim=-2)`` of (..., S_i, hd) tensors with equal leading dims, at copy speed.

    PyTorch's CUDA cat is fast only for contiguous inputs of at most 4 dims: a stacked K and V
    (2, B, nkv, S, hd) concatenated as it is moves 1.5 TB/s on the H200, and with one non-contiguous
    input (a layer's new K, a view into its fused QKV output) 0.6 TB/s; the same bytes as contiguous
    3-D views (2 * B * nkv, S, hd) move 3.5 TB/s (docs/benchmarks.md, "Concatenating K and V"). So
    every part is made contiguous (a copy only for the small new chunk or a padded slice) and
    concatenated as a 3-D view."""
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
        (``reference/graphs.py``) passes copies then."""
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

    def finish(self) -> "KVCache":
        """After prefill: wait for outstanding communication; return a cache that decodes locally."""
        local = KVCache(len(self.k))
        local.k, local.v = list(self.k), list(self.v)
        return local


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
