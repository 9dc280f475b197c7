"""Percentiles and medians, as the benchmarks report them."""

from __future__ import annotations

import math
import statistics


def pct(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile ``p`` (0..100] of already sorted values; ``None`` for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by linear interpolation; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float | None]) -> float:
    """Median of the values that are not ``None``; NaN when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else float("nan")
