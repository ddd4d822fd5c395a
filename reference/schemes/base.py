"""What every scheme module shares: a rank's chunk of the prompt, and the ``Prefill`` it returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

    from reference.kvcache import KVCache


@dataclass
class Prefill:
    """What one rank holds after prefill: the last position's logits (B, V) of its share of the
    prompt (None where a rank has none: pipeline's earlier stages) and its KV-cache (what this rank
    keeps; ready to decode locally where it is the whole model's). On the scheme's token rank
    (``reference.schemes.token_rank``) the logits give the first token."""

    logits: "torch.Tensor | None"
    cache: "KVCache"


def chunk_bounds(chunks: Sequence[int], rank: int) -> tuple[int, int]:
    """[start, end) token positions of `rank`'s chunk."""
    start = sum(chunks[:rank])
    return start, start + chunks[rank]
