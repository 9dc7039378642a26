"""Rank tests: Wilcoxon's signed-rank test (paired) and the Mann-Whitney U test (unpaired).

Both are two-sided. The null distribution is exact when the sample is small (at most
:data:`EXACT_LIMIT` values) and has no ties, else the normal approximation with tie and
continuity corrections; the p-values agree with scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

from pytest_minerva.errors import MinervaError

#: Largest sample for the exact null distributions; beyond it the normal approximation is close.
EXACT_LIMIT = 50


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """1-based ranks of ``values`` (ties get their average rank), and the size of each tied group."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@cache
def _signed_rank_counts(n: int) -> tuple[int, ...]:
    """How many of the 2**n sign patterns of ranks 1..n give each positive-rank sum W+ = 0..n(n+1)/2."""
    counts = [1]
    for k in range(1, n + 1):
        grown = [*counts, *([0] * k)]
        for total, count in enumerate(counts):
            grown[total + k] += count
        counts = grown
    return tuple(counts)


@cache
def _rank_sum_counts(m: int, n: int) -> tuple[int, ...]:
    """How many of the C(m+n, m) orderings of two samples give each U = 0..m*n (Gaussian binomial coefficients)."""
    poly = [1]
    for i in range(1, m + 1):
        # [n+i choose i]_q = [n+i-1 choose i-1]_q * (1 - q^(n+i)) / (1 - q^i), a polynomial at every step.
        grown = [*poly, *([0] * (n + i))]
        for k, c in enumerate(poly):
            grown[k + n + i] -= c
        for k in range(i, len(grown)):
            grown[k] += grown[k - i]
        poly = grown[: i * n + 1]
    return tuple(poly)


def _two_sided_exact(counts: Sequence[int], observed: float) -> float:
    total = sum(counts)
    w = round(observed)
    low = sum(counts[: w + 1]) / total
    high = sum(counts[w:]) / total
    return min(1.0, 2 * min(low, high))


def _two_sided_normal(statistic: float, mean: float, variance: float) -> float:
    if variance <= 0:
        return 1.0
    deviation = statistic - mean
    z = (deviation - math.copysign(0.5, deviation) if deviation else 0.0) / math.sqrt(variance)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2)))


def wilcoxon_signed_rank(differences: Sequence[float]) -> float:
    """Two-sided p-value of Wilcoxon's signed-rank test that ``differences`` are centred on zero.

    Zero differences are dropped first. The null distribution is exact when at most
    :data:`EXACT_LIMIT` differences remain and their absolute values have no ties, else the
    normal approximation with tie and continuity corrections. This agrees with
    ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=True)``.
    """
    d = [float(x) for x in differences if x != 0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks, ties = _ranks([abs(x) for x in d])
    w_plus = math.fsum(r for r, x in zip(ranks, d, strict=True) if x > 0)
    if not ties and n <= EXACT_LIMIT:
        return _two_sided_exact(_signed_rank_counts(n), w_plus)
    variance = n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in ties) / 48
    return _two_sided_normal(w_plus, n * (n + 1) / 4, variance)


def mann_whitney_u(base: Sequence[float], head: Sequence[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test that ``base`` and ``head`` come from one distribution.

    Exact when both samples have at most :data:`EXACT_LIMIT` values and none are tied, else
    the normal approximation with tie and continuity corrections. This agrees with
    ``scipy.stats.mannwhitneyu(head, base, use_continuity=True)``.
    """
    m, n = len(base), len(head)
    if m == 0 or n == 0:
        raise MinervaError(f"Mann-Whitney test needs samples on both sides, got {m} and {n} values")
    ranks, ties = _ranks([*map(float, base), *map(float, head)])
    u_head = math.fsum(ranks[m:]) - n * (n + 1) / 2
    if not ties and max(m, n) <= EXACT_LIMIT:
        return _two_sided_exact(_rank_sum_counts(min(m, n), max(m, n)), u_head)
    total = m + n
    variance = m * n / 12 * ((total + 1) - sum(t**3 - t for t in ties) / (total * (total - 1)))
    return _two_sided_normal(u_head, m * n / 2, variance)


def min_paired_rounds(confidence: float) -> int:
    """The fewest rounds with which the two-sided signed-rank test can reach p < 1 - ``confidence``.

    With fewer, even a slowdown seen in every round cannot be confirmed (at 95%, 5 rounds give p >= 0.0625).
    """
    alpha = 1 - confidence
    n = 1
    while 2 / 2**n >= alpha:
        n += 1
    return n


def unpaired_can_conclude(m: int, n: int, confidence: float) -> bool:
    """Whether the two-sided Mann-Whitney test on ``m`` and ``n`` runs can reach p < 1 - ``confidence`` at all."""
    return m > 0 and n > 0 and 2 / math.comb(m + n, m) < 1 - confidence


__all__ = [
    "EXACT_LIMIT",
    "mann_whitney_u",
    "min_paired_rounds",
    "unpaired_can_conclude",
    "wilcoxon_signed_rank",
]
