"""Stopping when the answer is known: looks at growing round counts, with the error rate spent across them.

A comparison looks at its rounds at :func:`look_points` (8, 12, 16, 24, 32, 48, ... rounds, up
to the most it may run) and stops at the first look where every judged figure is decided
(``slower``, ``faster`` or ``no change``), or one is ``slower``, or the time budget runs out.

Peeking at the data many times would inflate the error rate of a fixed-size test, so look ``j``
(from 1) spends ``alpha / 2**j`` of the total ``alpha = 1 - confidence``: its interval has
confidence ``1 - alpha / 2**j`` and its signed-rank test level ``alpha / 2**j``. The spends sum
to less than ``alpha``, so by the union bound the intervals of all looks hold together with
probability at least ``confidence``, whenever the comparison stops: a ``slower`` verdict on a
change inside the threshold, or a ``no change`` on one beyond it, is at most that rare (an
alpha-spending design with Bonferroni's bound; conservative, and valid for any number of looks).

With ``sequential=False`` there is one look, at the full ``alpha``, after the fixed number of
rounds: the fixed-size method of earlier versions. So is a sequential comparison whose
``--rounds`` leave room for one look only (fewer than the first look's 8).

:func:`choose_clocks` decides, at the first look, which clock each time figure is judged on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from pytest_minerva.compare.schedule import Round
from pytest_minerva.compare.verdict import Comparison, Criteria, compare_paired
from pytest_minerva.timing.clock import CPU_FIGURES

#: The kernel's figure of time-slicing (see :mod:`pytest_minerva.timing.runs`).
RUNQUEUE_WAIT = "runqueue_wait_ms"

#: The first look, at least: the signed-rank test reaches the first look's level (alpha / 2: 0.025 at
#: 0.95 confidence) from 7 rounds, and the ABBA schedule completes its blocks at even counts.
FIRST_LOOK = 8
#: Each look after the first comes at about 1.5 times the rounds of the one before.
LOOK_GROWTH = 1.5
#: The most rounds a sequential comparison runs when ``--rounds`` does not say.
MAX_ROUNDS = 400
#: Judge a time on its CPU-time twin when the wall-clock figure's per-round spread is this many
#: times the CPU one's (time-slicing dominates the noise) ...
CPU_SPREAD_FACTOR = 1.5
#: ... and the engine's thread is runnable (on a CPU, or waiting for one: the kernel's
#: ``runqueue_wait_ms``) for at least this share of the wall time. An engine that waits on a GPU
#: or a server is not, and its CPU time does not stand for its speed. Where the kernel gives no
#: wait figure, the CPU time alone must be at least :data:`CPU_SHARE` of the wall time.
RUNNABLE_SHARE = 0.8
CPU_SHARE = 0.5


def first_look(confidence: float) -> int:
    """The first look's round count: :data:`FIRST_LOOK`, or more where the first look's level needs it."""
    from pytest_minerva.stats.rank import min_paired_rounds

    need = min_paired_rounds(1 - look_alpha(1 - confidence, 1))
    return max(FIRST_LOOK, need + need % 2)


def look_points(max_rounds: int, *, sequential: bool = True, first: int = FIRST_LOOK) -> list[int]:
    """The round counts at which the comparison looks: ``[max_rounds]`` without ``sequential``."""
    if not sequential or max_rounds <= first:
        return [max_rounds]
    points = [first]
    while points[-1] < max_rounds:
        nxt = math.ceil(points[-1] * LOOK_GROWTH)
        points.append(min(nxt + nxt % 2, max_rounds))
    return points


def look_alpha(alpha: float, look: int, *, sequential: bool = True) -> float:
    """The error rate spent at look ``look`` (from 1): ``alpha / 2**look``, or ``alpha`` for a fixed design."""
    return alpha / 2**look if sequential else alpha


#: The most bootstrap resamples a look uses: enough for 50 in each tail down to alpha = 5e-4 (the
#: 7th look at 0.95), about 1 s for 400 rounds; later looks rest on the signed-rank test's p as much.
MAX_RESAMPLES = 100_000


def look_criteria(criteria: Criteria, alpha: float) -> Criteria:
    """The criteria of one look: confidence ``1 - alpha``, and enough resamples for its tails."""
    resamples = max(criteria.resamples, min(math.ceil(50 / alpha), MAX_RESAMPLES))
    return replace(criteria, confidence=1 - alpha, resamples=resamples)


def spread(values: Sequence[float]) -> float:
    """The scaled median absolute deviation of ``values`` (the standard deviation, for normal data)."""
    middle = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - middle) for v in values)


def _log_ratios(rounds: Sequence[Round], name: str, figure: str) -> list[float] | None:
    try:
        return [math.log(r.head[name][figure]) - math.log(r.base[name][figure]) for r in rounds]
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class ClockChoice:
    """Which figure a time figure is judged on, and why."""

    figure: str
    judged_on: str
    wall_spread: float | None = None
    cpu_spread: float | None = None
    cpu_share: float | None = None
    runnable_share: float | None = None

    @property
    def reason(self) -> str:
        if self.wall_spread is None or self.cpu_spread is None:
            return f"{self.figure}: judged on wall time (no CPU-time figure on both sides)"
        spreads = f"per-round spread {self.wall_spread * 100:.2f}% wall vs {self.cpu_spread * 100:.2f}% CPU"
        share = f"CPU {self.cpu_share * 100:.0f}% of wall" if self.cpu_share is not None else ""
        if self.runnable_share is not None:
            share += f", runnable {self.runnable_share * 100:.0f}%"
        if self.judged_on != self.figure:
            return f"{self.figure}: judged on CPU time ({self.judged_on}): {spreads}, {share}; time-slicing dominates"
        return f"{self.figure}: judged on wall time: {spreads}, {share}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "judged_on": self.judged_on,
            "wall_spread": self.wall_spread,
            "cpu_spread": self.cpu_spread,
            "cpu_share": self.cpu_share,
            "runnable_share": self.runnable_share,
        }


def choose_clocks(rounds: Sequence[Round], name: str, figures: Sequence[str], clock: str) -> dict[str, ClockChoice]:
    """For each of ``figures`` of benchmark ``name``: judge it on wall or CPU time.

    ``clock`` is ``wall``, ``cpu`` or ``auto``. ``auto`` takes the CPU-time twin when the wall
    figure's per-round log ratios spread more than :data:`CPU_SPREAD_FACTOR` times the CPU
    ones, and on BASE the engine's thread was runnable (on a CPU or waiting for one) for at
    least :data:`RUNNABLE_SHARE` of the wall time (without the kernel's wait figure: its CPU
    time at least :data:`CPU_SHARE` of it). ``cpu``
    takes the twin wherever both sides recorded it. A figure without a twin is judged as is.
    """
    choices: dict[str, ClockChoice] = {}
    for figure in figures:
        twin = CPU_FIGURES.get(figure)
        wall = _log_ratios(rounds, name, figure)
        cpu = _log_ratios(rounds, name, twin) if twin else None
        if twin is None or wall is None or cpu is None or clock == "wall":
            choices[figure] = ClockChoice(figure, figure)
            continue
        wall_spread, cpu_spread = spread(wall), spread(cpu)
        share = statistics.median(r.base[name][twin] / r.base[name][figure] for r in rounds)
        runnable = _runnable_share(rounds, name)
        busy = runnable >= RUNNABLE_SHARE if runnable is not None else share >= CPU_SHARE
        use_cpu = clock == "cpu" or (busy and wall_spread > CPU_SPREAD_FACTOR * cpu_spread)
        choices[figure] = ClockChoice(figure, twin if use_cpu else figure, wall_spread, cpu_spread, share, runnable)
    return choices


def _runnable_share(rounds: Sequence[Round], name: str) -> float | None:
    """The median share of BASE's wall time its engine thread was on a CPU or waiting for one."""
    try:
        return statistics.median(
            (r.base[name]["total_cpu_ms"] + r.base[name][RUNQUEUE_WAIT]) / r.base[name]["total_ms"] for r in rounds
        )
    except (KeyError, ZeroDivisionError, statistics.StatisticsError):
        return None


def choose_all_clocks(rounds: Sequence[Round], figures: Sequence[str], clock: str) -> dict[str, dict[str, ClockChoice]]:
    """:func:`choose_clocks` for every benchmark measured on both sides in every round."""
    names = sorted(set.intersection(*(set(r.base) & set(r.head) for r in rounds)))
    return {name: choose_clocks(rounds, name, figures, clock) for name in names}


@dataclass
class Look:
    """One look at the rounds so far: the error rate spent, the comparisons judged and the rest."""

    index: int
    rounds: int
    alpha: float
    comparisons: list[Comparison]
    also: list[Comparison]

    @property
    def decided(self) -> bool:
        """A ``slower`` verdict, or every judged figure decided."""
        verdicts = [c.verdict for c in self.comparisons]
        return bool(verdicts) and ("slower" in verdicts or "inconclusive" not in verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "look": self.index,
            "rounds": self.rounds,
            "alpha": self.alpha,
            "confidence": 1 - self.alpha,
            "verdicts": {f"{c.benchmark} {c.figure} ({c.clock})": c.verdict for c in self.comparisons},
            "decided": self.decided,
        }


def judge_look(
    rounds: Sequence[Round],
    criteria: Criteria,
    figures: Sequence[str],
    clocks: dict[str, dict[str, ClockChoice]],
    *,
    index: int,
    alpha: float,
) -> Look:
    """The comparisons at one look: each figure judged on its chosen clock, the other clock alongside.

    ``clocks`` maps benchmark -> figure -> :class:`ClockChoice`; benchmarks not in it are not judged.
    """
    at = look_criteria(criteria, alpha)
    judged: list[Comparison] = []
    also: list[Comparison] = []
    for name, choices in clocks.items():
        for figure in figures:
            choice = choices.get(figure)
            if choice is None:
                continue
            others = {figure, CPU_FIGURES.get(figure)} - {choice.judged_on, None}
            for which in (choice.judged_on, *sorted(o for o in others if o)):
                values = _values(rounds, name, which)
                if values is None:
                    continue
                comparison = compare_paired(values[0], values[1], criteria=at, benchmark=name, figure=which)
                comparison = replace(
                    comparison, figure=figure, clock="wall" if which == figure else "cpu", measured=which
                )
                (judged if which == choice.judged_on else also).append(comparison)
    return Look(index, len(rounds), alpha, judged, also)


def _values(rounds: Sequence[Round], name: str, figure: str) -> tuple[list[float], list[float]] | None:
    try:
        return [r.base[name][figure] for r in rounds], [r.head[name][figure] for r in rounds]
    except KeyError:
        return None
