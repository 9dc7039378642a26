"""Percentile-bootstrap intervals of a ratio, computed on logarithms.

A ratio's statistic is the ``median`` or the ``geomean`` (the mean of the logarithms, i.e.
the geometric mean of the ratios). The intervals are seeded, so the same samples and seed
always give the same interval. numpy is imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

#: The statistics a ratio can be summarised by.
STATISTICS = ("median", "geomean")


def statistic_function(name: str) -> Callable[..., Any]:
    """The numpy reduction of log ratios for ``name``: ``np.median``, or ``np.mean`` for ``geomean``."""
    import numpy as np

    return np.median if name == "median" else np.mean


def log_ratio_estimate(log_ratios: Sequence[float], statistic: str) -> float:
    """The ratio that the ``statistic`` of per-pair log ratios stands for."""
    import numpy as np

    return math.exp(float(statistic_function(statistic)(np.asarray(log_ratios, dtype=float))))


def bootstrap_interval_paired(
    log_ratios: Sequence[float], *, statistic: str, resamples: int, seed: int, alpha: float
) -> tuple[float, float]:
    """Percentile-bootstrap ``1 - alpha`` interval of the ratio from per-pair log ratios, resampling pairs."""
    import numpy as np

    logs = np.asarray(log_ratios, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(logs), size=(resamples, len(logs)))
    boot = statistic_function(statistic)(logs[picks], axis=1)
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return math.exp(low), math.exp(high)


def bootstrap_interval_unpaired(
    base_logs: Sequence[float], head_logs: Sequence[float], *, statistic: str, resamples: int, seed: int, alpha: float
) -> tuple[float, float]:
    """Percentile-bootstrap ``1 - alpha`` interval of the ratio of the two sides' statistics, resampling each side."""
    import numpy as np

    base, head = np.asarray(base_logs, dtype=float), np.asarray(head_logs, dtype=float)
    rng = np.random.default_rng(seed)
    reduce = statistic_function(statistic)
    base_boot = reduce(base[rng.integers(0, len(base), size=(resamples, len(base)))], axis=1)
    head_boot = reduce(head[rng.integers(0, len(head), size=(resamples, len(head)))], axis=1)
    low, high = np.quantile(head_boot - base_boot, [alpha / 2, 1 - alpha / 2])
    return math.exp(low), math.exp(high)
