"""Judging BASE against HEAD: the criteria, one comparison per benchmark figure, its verdict, the outcome.

A comparison's ratio is HEAD / BASE, with a bootstrap interval
(:mod:`pytest_minerva.stats.bootstrap`) and a rank test (:mod:`pytest_minerva.stats.rank`):
paired for interleaved rounds, unpaired for two results files. :func:`judge` turns them into
``slower``, ``faster``, ``no change`` or ``inconclusive``; :func:`outcome` turns all verdicts
into a status and an exit code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_minerva.compare.schedule import Round
from pytest_minerva.errors import MinervaError
from pytest_minerva.stats.bootstrap import (
    STATISTICS,
    bootstrap_interval_paired,
    bootstrap_interval_unpaired,
    log_ratio_estimate,
    statistic_function,
)
from pytest_minerva.stats.rank import mann_whitney_u, wilcoxon_signed_rank
from pytest_minerva.stats.summary import Stats

EXIT_OK = 0
EXIT_REGRESSION = 1
EXIT_ERROR = 2

#: Figures a comparison can judge, and whether a higher value is worse (a time) or better (a rate).
HIGHER_IS_WORSE: dict[str, bool] = {
    "ttft_ms": True,
    "tpt_ms": True,
    "total_ms": True,
    "throughput_tps": False,
    "prefill_tps": False,
    "decode_tps": False,
    "ttft_cpu_ms": True,
    "tpt_cpu_ms": True,
    "total_cpu_ms": True,
}
#: The rates are exact reciprocals of these times per run, so judging them too would only repeat the verdicts.
DEFAULT_FIGURES = ("ttft_ms", "tpt_ms", "total_ms")
VERDICTS = ("slower", "faster", "no change", "inconclusive")


@dataclass(frozen=True)
class Criteria:
    """How a comparison decides: the threshold on the slowdown factor, the confidence, the bootstrap."""

    threshold: float = 0.02
    confidence: float = 0.95
    statistic: str = "median"
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise MinervaError(f"threshold must be a number of 0 or more, got {self.threshold!r}")
        if not 0 < self.confidence < 1:
            raise MinervaError(f"confidence must be between 0 and 1, got {self.confidence!r}")
        if self.statistic not in STATISTICS:
            raise MinervaError(f"statistic must be one of {', '.join(STATISTICS)}, got {self.statistic!r}")
        if self.resamples < 100:
            raise MinervaError(f"resamples must be at least 100, got {self.resamples}")

    @property
    def alpha(self) -> float:
        return 1 - self.confidence

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "confidence": self.confidence,
            "statistic": self.statistic,
            "resamples": self.resamples,
            "seed": self.seed,
        }


def judge(ci_low: float, ci_high: float, p_value: float, *, higher_is_worse: bool, criteria: Criteria) -> str:
    """The verdict for a HEAD/BASE interval: slower, faster, no change or inconclusive.

    With ``t`` the threshold and the interval turned into a slowdown factor (HEAD/BASE for
    times, BASE/HEAD for rates): ``slower`` when its low end is above ``1 + t`` and p is below
    ``1 - confidence``; ``faster`` when its high end is below ``1 / (1 + t)`` and p is as small;
    ``no change`` when it lies within ``[1 / (1 + t), 1 + t]``; else ``inconclusive``.
    """
    slow_low, slow_high = (ci_low, ci_high) if higher_is_worse else (1 / ci_high, 1 / ci_low)
    band = 1 + criteria.threshold
    significant = p_value < criteria.alpha
    if slow_low > band and significant:
        return "slower"
    if slow_high < 1 / band and significant:
        return "faster"
    if slow_low >= 1 / band and slow_high <= band:
        return "no change"
    return "inconclusive"


@dataclass(frozen=True)
class Comparison:
    """One benchmark's figure, BASE against HEAD: the ratio, its interval, the test and the verdict."""

    benchmark: str
    figure: str
    higher_is_worse: bool
    paired: bool
    n_base: int
    n_head: int
    base_median: float
    head_median: float
    ratio: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str
    #: The clock of the values judged: ``wall``, or ``cpu`` when a time was judged on its CPU-time
    #: twin (``measured`` names that figure; ``figure`` stays the time it stands for).
    clock: str = "wall"
    measured: str | None = None

    @property
    def test(self) -> str:
        return "wilcoxon-signed-rank" if self.paired else "mann-whitney-u"

    @property
    def slowdown(self) -> float:
        """How much slower HEAD is, as a factor (above 1: slower), whichever way the figure points."""
        return self.ratio if self.higher_is_worse else 1 / self.ratio

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "figure": self.figure,
            "direction": "lower is better" if self.higher_is_worse else "higher is better",
            "paired": self.paired,
            "test": self.test,
            "n_base": self.n_base,
            "n_head": self.n_head,
            "base_median": self.base_median,
            "head_median": self.head_median,
            "ratio": self.ratio,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "p_value": self.p_value,
            "slowdown": self.slowdown,
            "verdict": self.verdict,
            "clock": self.clock,
            "measured": self.measured or self.figure,
        }


def _check_samples(values: Sequence[float], what: str) -> list[float]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MinervaError(f"{what}: expected numbers, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise MinervaError(f"{what}: every value must be a positive, finite number, got {value!r}")
        out.append(float(value))
    if len(out) < 2:
        raise MinervaError(f"{what}: needs at least 2 values, got {len(out)}")
    return out


def _median(values: Sequence[float]) -> float:
    return Stats(values).median


def _direction(figure: str, higher_is_worse: bool | None) -> bool:
    if higher_is_worse is not None:
        return higher_is_worse
    if figure not in HIGHER_IS_WORSE:
        raise MinervaError(f"unknown figure {figure!r}; choose from {', '.join(HIGHER_IS_WORSE)}")
    return HIGHER_IS_WORSE[figure]


def compare_paired(
    base: Sequence[float],
    head: Sequence[float],
    *,
    criteria: Criteria,
    benchmark: str = "",
    figure: str = "total_ms",
    higher_is_worse: bool | None = None,
) -> Comparison:
    """Judge interleaved rounds: ``base[i]`` and ``head[i]`` were measured back to back in round ``i``.

    ``higher_is_worse`` defaults to the figure's direction in :data:`HIGHER_IS_WORSE`.
    """
    what = f"{benchmark} {figure}".strip()
    base_values = _check_samples(base, f"{what}: BASE")
    head_values = _check_samples(head, f"{what}: HEAD")
    if len(base_values) != len(head_values):
        raise MinervaError(
            f"{what}: a paired comparison needs one HEAD value per BASE value, got {len(base_values)} and "
            f"{len(head_values)}"
        )
    logs = [math.log(h) - math.log(b) for b, h in zip(base_values, head_values, strict=True)]
    estimate = log_ratio_estimate(logs, criteria.statistic)
    low, high = bootstrap_interval_paired(
        logs, statistic=criteria.statistic, resamples=criteria.resamples, seed=criteria.seed, alpha=criteria.alpha
    )
    p_value = wilcoxon_signed_rank(logs)
    worse = _direction(figure, higher_is_worse)
    return Comparison(
        benchmark=benchmark,
        figure=figure,
        higher_is_worse=worse,
        paired=True,
        n_base=len(base_values),
        n_head=len(head_values),
        base_median=_median(base_values),
        head_median=_median(head_values),
        ratio=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        verdict=judge(low, high, p_value, higher_is_worse=worse, criteria=criteria),
    )


def compare_unpaired(
    base: Sequence[float],
    head: Sequence[float],
    *,
    criteria: Criteria,
    benchmark: str = "",
    figure: str = "total_ms",
    higher_is_worse: bool | None = None,
) -> Comparison:
    """Judge two independent sets of runs (results measured apart, not interleaved)."""
    what = f"{benchmark} {figure}".strip()
    base_values = _check_samples(base, f"{what}: BASE")
    head_values = _check_samples(head, f"{what}: HEAD")
    import numpy as np

    statistic = statistic_function(criteria.statistic)
    base_logs, head_logs = np.log(base_values), np.log(head_values)
    estimate = math.exp(float(statistic(head_logs)) - float(statistic(base_logs)))
    low, high = bootstrap_interval_unpaired(
        base_logs.tolist(),
        head_logs.tolist(),
        statistic=criteria.statistic,
        resamples=criteria.resamples,
        seed=criteria.seed,
        alpha=criteria.alpha,
    )
    p_value = mann_whitney_u(base_values, head_values)
    worse = _direction(figure, higher_is_worse)
    return Comparison(
        benchmark=benchmark,
        figure=figure,
        higher_is_worse=worse,
        paired=False,
        n_base=len(base_values),
        n_head=len(head_values),
        base_median=_median(base_values),
        head_median=_median(head_values),
        ratio=estimate,
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        verdict=judge(low, high, p_value, higher_is_worse=worse, criteria=criteria),
    )


def compare_rounds(
    rounds: Sequence[Round], criteria: Criteria, figures: Sequence[str] = DEFAULT_FIGURES
) -> tuple[list[Comparison], list[str]]:
    """Paired comparisons of every benchmark measured on both sides in every round, and what was left out."""
    if not rounds:
        raise MinervaError("no rounds to compare")
    names = sorted(set.intersection(*(set(r.base) & set(r.head) for r in rounds)))
    seen = {name for r in rounds for name in (*r.base, *r.head)}
    left_out = [f"{name}: not measured on both sides in every round" for name in sorted(seen - set(names))]
    comparisons = []
    for name in names:
        for figure in figures:
            if all(figure in r.base[name] and figure in r.head[name] for r in rounds):
                comparisons.append(
                    compare_paired(
                        [r.base[name][figure] for r in rounds],
                        [r.head[name][figure] for r in rounds],
                        criteria=criteria,
                        benchmark=name,
                        figure=figure,
                    )
                )
    return comparisons, left_out


def verdict_counts(comparisons: Sequence[Comparison]) -> dict[str, int]:
    """How many comparisons got each verdict, every verdict listed."""
    return {v: sum(c.verdict == v for c in comparisons) for v in VERDICTS}


def _change(c: Comparison) -> str:
    return f"{(c.slowdown - 1) * 100:+.1f}%"


def outcome(comparisons: Sequence[Comparison], errors: Sequence[str]) -> tuple[str, str, int]:
    """``(status, reason, exit code)``: regression wins over error, error over ok."""
    slower = [c for c in comparisons if c.verdict == "slower"]
    if slower:
        listed = "; ".join(f"{c.benchmark} {c.figure} {_change(c)}" for c in slower[:3])
        more = f" and {len(slower) - 3} more" if len(slower) > 3 else ""
        return "regression", f"HEAD is slower: {listed}{more}", EXIT_REGRESSION
    if errors:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        return "error", f"{errors[0]}{more}", EXIT_ERROR
    if not comparisons:
        return "error", "no benchmark was measured on both sides", EXIT_ERROR
    counts = ", ".join(f"{n} {v}" for v, n in verdict_counts(comparisons).items() if n)
    return "ok", f"no confirmed regression in {len(comparisons)} comparisons ({counts})", EXIT_OK
