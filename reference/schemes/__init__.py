"""Prefill schemes: how the ranks split one prompt and which KV-cache hooks join them.

Every scheme module has ``prefill(model, input_ids, chunks, transport) -> Prefill``: all ranks pass
the whole prompt (B, C) and the token counts of every rank's chunk; each rank runs its own chunk.
Scheme semantics: docs/design.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # torch stays unimported here, so the launcher checks its input before paying for it
    import torch

    from reference.kvcache import KVCache

SCHEME_NAMES = ("single", "kvr", "tsp")


class PartitionError(ValueError):
    """A partition that does not fit the context or the world size."""


@dataclass
class Prefill:
    """What one rank holds after prefill: the last position's logits (B, V) of its chunk and its
    KV-cache (ready to decode locally). On the rank of the last chunk the logits give the first token."""

    logits: "torch.Tensor"
    cache: "KVCache"


def even_partition(context: int, world_size: int) -> list[int]:
    """C tokens over P ranks as evenly as possible; the first C mod P ranks get one more
    (``torch.tensor_split`` order)."""
    if world_size > context:
        raise PartitionError(f"{world_size} ranks for {context} tokens: every rank needs at least one token")
    q, r = divmod(context, world_size)
    return [q + 1 if i < r else q for i in range(world_size)]


def parse_partition(text: str, scheme: str, context: int, world_size: int) -> list[int]:
    """`text` is "even" or comma-separated token counts, one a rank, summing to `context`.
    TSP and single accept only the even split."""
    if world_size > context:
        raise PartitionError(f"{world_size} ranks for {context} tokens: every rank needs at least one token")
    if scheme == "single" and world_size != 1:
        raise PartitionError(f"scheme 'single' runs on one process; got world size {world_size}")
    even = even_partition(context, world_size)
    if text.strip() == "even":
        return even
    try:
        chunks = [int(x) for x in text.split(",")]
    except ValueError:
        raise PartitionError(f"--partition {text!r} is not 'even' or a comma-separated list of integers") from None
    if len(chunks) != world_size:
        raise PartitionError(f"--partition {text!r} has {len(chunks)} chunks for world size {world_size}")
    if any(c < 1 for c in chunks):
        raise PartitionError(f"--partition {text!r}: every chunk needs at least one token")
    if sum(chunks) != context:
        raise PartitionError(f"--partition {text!r} sums to {sum(chunks)}, not the context {context}")
    if scheme != "kvr" and chunks != even:
        raise PartitionError(f"scheme {scheme!r} uses the even split {even}; got {chunks}")
    return chunks


def chunk_bounds(chunks: Sequence[int], rank: int) -> tuple[int, int]:
    """[start, end) token positions of `rank`'s chunk."""
    start = sum(chunks[:rank])
    return start, start + chunks[rank]


def prefill(scheme: str, model: "torch.nn.Module", input_ids: "torch.Tensor", chunks: Sequence[int],
            transport) -> Prefill:
    """Run `scheme` ("single", "kvr", "tsp") on this rank."""
    from reference.schemes import kvr, single, tsp

    return {"single": single, "kvr": kvr, "tsp": tsp}[scheme].prefill(model, input_ids, chunks, transport)
