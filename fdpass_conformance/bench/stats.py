"""Small statistics for the report: percentiles and summaries of repetitions.

Repetitions are summarised by their median (robust to one disturbed
repetition on a noisy machine) together with the minimum and maximum, so a
reader sees the spread instead of a lone number.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-repetition values (NaN-free input expected)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite)}


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99 (and n) of latency samples given in seconds, reported in microseconds."""
    us = [s * 1e6 for s in samples_s]
    return {"p50": percentile(us, 50), "p99": percentile(us, 99), "n": float(len(us))}
