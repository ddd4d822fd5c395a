"""Prefill schemes: how the ranks split one prompt and which KV-cache hooks join them.

One module a scheme (``single.py``, ``kvr.py``, ``tsp.py``, ``ring.py``, ``ring_zigzag.py``,
``ulysses.py``, ``tp.py``, ``pipeline.py``), each holding its cache hooks and
``prefill(model, input_ids, chunks, transport) -> Prefill``: all ranks pass the whole prompt (B, C)
and the token counts of every rank (``layout_chunks``); each rank runs its share. ``SCHEMES``
registers them: adding a scheme is one module and one line here. Scheme semantics: docs/design.md;
the hooks: docs/reference.md, "How the schemes hook in".
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, NamedTuple, Sequence

from sim import partition
from sim.partition import PartitionError

if TYPE_CHECKING:  # torch stays unimported here, so the launcher checks its input before paying for it
    import torch

    from reference.schemes.base import Prefill


class Scheme(NamedTuple):
    """A registered scheme: the module holding its ``prefill``, the partitions it runs, the rank
    that emits the first token, and whether that rank can decode alone from its cache."""

    module: str
    uneven: bool  # runs any partition; else only its layout's (``layout_chunks``)
    one_process: bool = False
    layout: str = "even"  # tokens per rank: "even" split, "zigzag" (pieces r and 2P-1-r), "whole" (C each)
    token_rank: int = -1  # the rank of the first token: -1 the last, 0 the first
    decodes: bool = False  # that rank holds the whole KV-cache of the whole model (--generate)


SCHEMES: dict[str, Scheme] = {
    "single": Scheme("reference.schemes.single", uneven=False, one_process=True, decodes=True),
    "kvr": Scheme("reference.schemes.kvr", uneven=True, decodes=True),
    "tsp": Scheme("reference.schemes.tsp", uneven=False, decodes=True),
    "ring": Scheme("reference.schemes.ring", uneven=False),
    "ring-zigzag": Scheme("reference.schemes.ring_zigzag", uneven=False, layout="zigzag", token_rank=0),
    "ulysses": Scheme("reference.schemes.ulysses", uneven=False),
    "tp": Scheme("reference.schemes.tp", uneven=False, layout="whole", token_rank=0),
    "pipeline": Scheme("reference.schemes.pipeline", uneven=False, layout="whole"),
}
SCHEME_NAMES = tuple(SCHEMES)

__all__ = ["SCHEMES", "SCHEME_NAMES", "PartitionError", "Scheme", "check_supported", "layout_chunks",
           "parse_partition", "prefill", "token_rank"]


def layout_chunks(scheme: str, *, context: int, world_size: int) -> list[int]:
    """Tokens each rank runs under `scheme`'s fixed layout, as the simulator's plan has them
    (``sim.partition.plan.fixed_chunks``): the even split; for ``zigzag`` piece r + piece 2P-1-r of
    the even split into 2P pieces; for ``whole`` all C on every rank (tp, pipeline)."""
    layout = SCHEMES[scheme].layout
    if layout == "whole":
        return [context] * world_size
    if layout == "zigzag":
        pieces = partition.even(context, 2 * world_size)
        return [pieces[r] + pieces[2 * world_size - 1 - r] for r in range(world_size)]
    return partition.even(context, world_size)


def token_rank(scheme: str, world_size: int) -> int:
    """The rank whose ``Prefill.logits`` give the first token."""
    return SCHEMES[scheme].token_rank % world_size


def check_supported(scheme: str, spec, *, context: int, world_size: int) -> None:
    """The simulator's ``supports`` of the scheme (``sim.schemes``: heads divisible by P for
    ulysses and tp, 2P pieces for ring-zigzag, a layer a stage for pipeline): a ``PartitionError``
    naming the scheme, before any rank talks to another."""
    from sim.schemes import unsupported

    why = unsupported(scheme, spec, world_size, context)
    if why:
        raise PartitionError(f"scheme {scheme!r} cannot run here: {why}")


def parse_partition(text: str, scheme: str, *, context: int, world_size: int) -> list[int]:
    """`text` is "even" or comma-separated token counts, one a rank, summing to `context`.
    Schemes registered without ``uneven`` accept only the even split (``sim.partition.even``).
    Errors name the flag: ``PartitionError`` with the runtime's wording."""
    try:
        even = partition.even(context, world_size)
    except PartitionError:
        raise PartitionError(f"{world_size} ranks for {context} tokens: every rank needs at least one "
                             "token") from None
    if SCHEMES[scheme].one_process and world_size != 1:
        raise PartitionError(f"scheme {scheme!r} runs on one process; got world size {world_size}")
    if SCHEMES[scheme].layout != "even":
        even = layout_chunks(scheme, context=context, world_size=world_size)
    if text.strip() == "even":
        return even
    try:
        chunks = [int(x) for x in text.split(",")]
    except ValueError:
        raise PartitionError(f"--partition {text!r} is not 'even' or a comma-separated list of integers") from None
    if len(chunks) != world_size:
        raise PartitionError(f"--partition {text!r} has {len(chunks)} chunks for world size {world_size}")
    try:
        partition.check(context, chunks)
    except PartitionError:  # the simulator's check, said as the flag the user gave
        if min(chunks) < 1:
            raise PartitionError(f"--partition {text!r}: every chunk needs at least one token") from None
        raise PartitionError(f"--partition {text!r} sums to {sum(chunks)}, not the context {context}") from None
    if not SCHEMES[scheme].uneven and chunks != even:
        raise PartitionError(f"scheme {scheme!r} uses the {SCHEMES[scheme].layout} split {even}; got {chunks}")
    return chunks


def prefill(scheme: str, model: "torch.nn.Module", input_ids: "torch.Tensor", chunks: Sequence[int],
            transport, **options) -> "Prefill":
    """Run `scheme` (a name of ``SCHEMES``) on this rank; `options` are the scheme's own keywords
    (``pipeline``: ``pieces``)."""
    return importlib.import_module(SCHEMES[scheme].module).prefill(model, input_ids, chunks, transport,
                                                                   **options)
