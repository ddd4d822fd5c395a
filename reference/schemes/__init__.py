"""Prefill schemes: how the ranks split one prompt and which KV-cache hooks join them.

One module a scheme (``single.py``, ``kvr.py``, ``tsp.py``), each holding its cache hooks and
``prefill(model, input_ids, chunks, transport) -> Prefill``: all ranks pass the whole prompt (B, C)
and the token counts of every rank's chunk; each rank runs its own chunk. ``SCHEMES`` registers
them: adding a scheme is one module and one line here. Scheme semantics: docs/design.md.
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
    """A registered scheme: the module holding its ``prefill``, and the partitions it runs."""

    module: str
    uneven: bool  # runs any partition; else only the even split
    one_process: bool = False


SCHEMES: dict[str, Scheme] = {
    "single": Scheme("reference.schemes.single", uneven=False, one_process=True),
    "kvr": Scheme("reference.schemes.kvr", uneven=True),
    "tsp": Scheme("reference.schemes.tsp", uneven=False),
}
SCHEME_NAMES = tuple(SCHEMES)

__all__ = ["SCHEMES", "SCHEME_NAMES", "PartitionError", "Scheme", "parse_partition", "prefill"]


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
        raise PartitionError(f"scheme {scheme!r} uses the even split {even}; got {chunks}")
    return chunks


def prefill(scheme: str, model: "torch.nn.Module", input_ids: "torch.Tensor", chunks: Sequence[int],
            transport) -> "Prefill":
    """Run `scheme` (a name of ``SCHEMES``) on this rank."""
    return importlib.import_module(SCHEMES[scheme].module).prefill(model, input_ids, chunks, transport)
