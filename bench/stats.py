"""Small statistics for benchmark reports: medians of runs, percentiles of latencies."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per key: the value if every run agrees, the median of numbers, else the list."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if all(r[key] == value for r in runs):
            out[key] = value
        elif isinstance(value, bool) or not isinstance(value, int | float):
            out[key] = [r[key] for r in runs]
        else:
            out[key] = statistics.median(r[key] for r in runs)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method: a value that occurred, the
    smallest one with at least q% of the values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]
