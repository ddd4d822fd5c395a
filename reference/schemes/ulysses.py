"""ulysses: DeepSpeed-Ulysses sequence parallelism. Rank r holds the even shard [s_r, e_r) of the
prompt and attends with an ``UlyssesCache``: per layer one all-to-all turns sequence shards into
head shards (each rank gets all C tokens of its nh/P query heads and of the K/V heads they read),
causal attention runs over the whole sequence for those heads, and a second all-to-all turns the
output back into sequence shards for the rest of the layer. With fewer K/V heads than ranks (GQA,
MQA) each rank receives the one K/V head its query heads read: K/V heads are replicated, as the
published implementations do. Needs nh divisible by P (checked before any communication). The last
rank emits the first token; every rank keeps the K/V of all C tokens for its K/V heads.

Messages: Q, K and V of the destination's heads stacked on the head axis, (B, nh/P + 2 nkv_r, c, hd);
back, (B, nh/P, c, hd). Reference: Jacobs et al., "DeepSpeed Ulysses" (2023); sim/schemes/ulysses.py.
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.kvcache import KVCache, cat_tokens
from reference.layers import attention
from reference.schemes import PartitionError, check_supported
from reference.schemes.base import Prefill, chunk_bounds
from reference.transport import Transport


def head_shard(num_heads: int, num_kv_heads: int, world_size: int, rank: int) -> tuple[range, range]:
    """Rank `rank`'s query heads (nh/P contiguous) and the K/V heads they read: nkv/P of them when P
    divides nkv, else the one (replicated) K/V head of their group. Shared with ``tp.py``."""
    if num_heads % world_size:
        raise PartitionError(f"num_heads={num_heads} is not divisible by {world_size} ranks")
    nq, group = num_heads // world_size, num_heads // num_kv_heads
    q0 = rank * nq
    if nq % group and group % nq:  # a rank's query heads would read K/V heads unevenly
        raise PartitionError(f"num_kv_heads={num_kv_heads} neither divides nor is a multiple of "
                             f"{world_size} ranks")
    kv0 = q0 // group
    return range(q0, q0 + nq), range(kv0, kv0 + max(nq // group, 1))


class UlyssesCache(KVCache):
    """Sequence shards to head shards and back around the attention; keeps all C tokens' K/V of
    this rank's K/V heads. `chunks` are every rank's shard lengths."""

    def keeps_inputs(self, layer_idx: int) -> bool:
        return False  # it keeps what the all-to-all brings

    def __init__(self, num_layers: int, transport: Transport, chunks: Sequence[int],
                 heads: Sequence[tuple[range, range]]):
        super().__init__(num_layers)
        self.transport, self.chunks, self.heads = transport, list(chunks), list(heads)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = self.transport
        b, _, c, hd = q.shape
        qh, kh = self.heads[t.rank]
        send = [torch.cat([q[:, d_q.start:d_q.stop], k[:, d_k.start:d_k.stop], v[:, d_k.start:d_k.stop]], dim=1)
                for d_q, d_k in self.heads]                              # (B, nq + 2 nk, c_r, hd)
        recv = [q.new_empty(b, len(qh) + 2 * len(kh), n, hd) for n in self.chunks]
        t.all_to_all(send, recv)
        q, k, v = cat_tokens(recv).split([len(qh), len(kh), len(kh)], dim=1)  # all C tokens, my heads
        k, v = self._append(layer_idx, k.contiguous(), v.contiguous())
        y = attention(q, k, v)                                          # (B, nq, C, hd), causal
        back = [y.new_empty(b, len(d_q), c, hd) for d_q, _ in self.heads]
        t.all_to_all(list(y.split(self.chunks, dim=-2)), back)
        return torch.cat(back, dim=1)                                   # (B, nh, c_r, hd)


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C), even chunks -> this rank's shard logits (B, V) and cache (C tokens, its
    K/V heads)."""
    spec, p = model.spec, transport.world_size
    check_supported("ulysses", spec, context=input_ids.shape[1], world_size=p)
    heads = [head_shard(spec.num_heads, spec.num_kv_heads, p, r) for r in range(p)]
    start, end = chunk_bounds(chunks, transport.rank)
    cache = UlyssesCache(spec.num_layers, transport, chunks, heads)
    logits = model(input_ids[:, start:end], start, cache)
    return Prefill(logits, cache.finish())
