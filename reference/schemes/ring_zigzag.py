"""ring-zigzag: ring attention with the causal work balanced (ring-flash-attention's zigzag). The
prompt is cut into 2P even pieces and rank r holds pieces r and 2P-1-r (queries and K/V, each token
at its true rotary position); the blocks circulate as in ``ring.py``, whose ``RingCache`` masks per
piece pair (an earlier piece: unmasked, the same: causal, a later: skipped). Rank 0 holds the last
piece and emits the first token; every rank keeps the K/V of its two pieces (in that order).

Reference: zhuzilin/ring-flash-attention (zigzag); sim/schemes/ring_zigzag.py.
"""
from __future__ import annotations

from typing import Sequence

import torch

from reference.schemes import check_supported, layout_chunks
from reference.schemes.base import Prefill, chunk_bounds
from reference.schemes.ring import run_pieces
from reference.transport import Transport
from sim.partition import even


def zigzag_pieces(context: int, world_size: int) -> list[list[tuple[int, int]]]:
    """Rank r's token ranges: pieces r and 2P-1-r of the even split into 2P pieces."""
    split = even(context, 2 * world_size)
    bounds = [chunk_bounds(split, i) for i in range(2 * world_size)]
    return [[bounds[r], bounds[2 * world_size - 1 - r]] for r in range(world_size)]


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C); chunks piece r + piece 2P-1-r -> this rank's logits (B, V; rank 0's are the
    last position's) and cache (its two pieces' tokens)."""
    context, p = input_ids.shape[1], transport.world_size
    check_supported("ring-zigzag", model.spec, context=context, world_size=p)
    assert list(chunks) == layout_chunks("ring-zigzag", context=context, world_size=p), chunks
    return run_pieces(model, input_ids, zigzag_pieces(context, p), transport)
