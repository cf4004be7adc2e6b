"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations


def pct(xs: list[float], p: float) -> float:
    """The p-quantile (0..1) with linear interpolation; NaN for no data."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
