"""Summary statistics of a list of timing samples.

:class:`Stats` is pure: it holds the samples and computes each figure on first use.
Percentiles, quartiles and the median all use the same definition, linear
interpolation between closest ranks (Hyndman & Fan type 7, numpy's default
``method="linear"``): for sorted samples ``x[0..n-1]`` the ``p``-th percentile is
``x[k] + f * (x[k+1] - x[k])`` where ``h = (n - 1) * p / 100``, ``k = floor(h)`` and
``f = h - k``. ``stddev`` is the sample standard deviation (``n - 1`` in the
denominator), reported as 0.0 for a single sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cached_property
from typing import Any

FIELDS = ("n", "min", "max", "mean", "median", "stddev", "q1", "q3", "iqr", "p50", "p90", "p99")


def percentile(ordered: list[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of already sorted samples, type-7 interpolation."""
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    h = (len(ordered) - 1) * p / 100
    k = math.floor(h)
    if k >= len(ordered) - 1:
        return ordered[-1]
    lo, hi = ordered[k], ordered[k + 1]
    # Clamp: rounding in lo + f*(hi-lo) must not step outside [lo, hi] and break ordering.
    return min(max(lo + (h - k) * (hi - lo), lo), hi)


class Stats:
    """Statistics of one figure over ``n`` samples (at least one, all finite)."""

    def __init__(self, samples: Iterable[float]) -> None:
        data = [float(x) for x in samples]
        if not data:
            raise ValueError("Stats needs at least one sample")
        bad = [x for x in data if not math.isfinite(x)]
        if bad:
            raise ValueError(f"Stats needs finite samples; got {bad[0]!r}")
        self.data: tuple[float, ...] = tuple(data)

    def __repr__(self) -> str:
        return f"Stats(n={self.n}, median={self.median:.6g}, iqr={self.iqr:.6g})"

    @cached_property
    def sorted(self) -> list[float]:
        return sorted(self.data)

    @cached_property
    def n(self) -> int:
        return len(self.data)

    @cached_property
    def min(self) -> float:
        return self.sorted[0]

    @cached_property
    def max(self) -> float:
        return self.sorted[-1]

    @cached_property
    def mean(self) -> float:
        # fsum keeps the mean inside [min, max] even for large, nearly equal samples.
        return min(max(math.fsum(self.data) / self.n, self.min), self.max)

    @cached_property
    def median(self) -> float:
        return percentile(self.sorted, 50)

    @cached_property
    def stddev(self) -> float:
        if self.n < 2:
            return 0.0
        mean = math.fsum(self.data) / self.n
        return math.sqrt(math.fsum((x - mean) ** 2 for x in self.data) / (self.n - 1))

    @cached_property
    def q1(self) -> float:
        return percentile(self.sorted, 25)

    @cached_property
    def q3(self) -> float:
        return percentile(self.sorted, 75)

    @cached_property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @cached_property
    def p50(self) -> float:
        return self.median

    @cached_property
    def p90(self) -> float:
        return percentile(self.sorted, 90)

    @cached_property
    def p99(self) -> float:
        return percentile(self.sorted, 99)

    def as_dict(self) -> dict[str, Any]:
        """Every figure in :data:`FIELDS` by name; the samples are not included."""
        return {name: getattr(self, name) for name in FIELDS}
