"""Hypothesis strategies shared by the tests (simulator and runtime)."""
from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def partitions(draw, total: int, parts: int):
    """A random partition of `total` tokens into `parts` chunks, every chunk >= 1."""
    assert 1 <= parts <= total
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds, bounds[1:])]
