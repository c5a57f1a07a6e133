"""Percentiles for reports: token lengths of a data set, latencies of a benchmark.

One method everywhere, nearest rank: a percentile is always one of the values (a length is a
whole number of tokens, a latency one that was measured), and two reports agree on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

__all__ = ["percentile", "percentiles"]

Value = TypeVar("Value", int, float)


def _at_rank(ordered: Sequence[Value], q: float) -> Value:
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), and p0 is the smallest value
    return ordered[int(rank) - 1]


def percentile(values: Sequence[Value], q: float) -> Value:
    """The nearest-rank q-th percentile (0 <= q <= 100) of non-empty `values`."""
    return _at_rank(sorted(values), q)


def percentiles(values: Sequence[Value], qs: Sequence[float] = (50, 90, 95, 99, 100)) -> dict[str, Value]:
    """Nearest-rank percentiles keyed "p50", "p99.9", ..., sorting `values` once."""
    ordered = sorted(values)
    return {f"p{q:g}": _at_rank(ordered, q) for q in qs}
