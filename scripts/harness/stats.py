"""Percentiles and medians, as the benchmarks report them."""

from __future__ import annotations

import math


def pct(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile ``p`` (0..100] of already sorted values; ``None`` for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
