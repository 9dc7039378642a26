"""The interleaved schedule of a comparison: rounds of BASE and HEAD back to back, in ABBA blocks.

Each round measures both builds once. Rounds come in blocks of two, (A, B) then (B, A),
with A drawn per block from the seed, so slow drift of the machine and any advantage of
running second cancel out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

#: benchmark name -> figure -> value, as measured in one invocation of one build.
Figures = dict[str, dict[str, float]]


def abba_orders(rounds: int, seed: int) -> list[tuple[str, str]]:
    """Which build runs first in each round: blocks of two rounds, (A, B) then (B, A), A drawn per block."""
    rng = random.Random(seed)
    orders: list[tuple[str, str]] = []
    while len(orders) < rounds:
        first: tuple[str, str] = ("base", "head") if rng.random() < 0.5 else ("head", "base")
        orders += [first, (first[1], first[0])]
    return orders[:rounds]


@dataclass
class Round:
    """One round: each build measured once, back to back, in ``order``."""

    index: int
    order: tuple[str, str]
    base: Figures
    head: Figures
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.index,
            "order": list(self.order),
            "seconds": self.seconds,
            "base": self.base,
            "head": self.head,
        }


def iter_rounds(
    measure: Callable[[str, int], Figures],
    rounds: int,
    seed: int = 0,
    on_run: Callable[[str, int], None] | None = None,
) -> Iterator[Round]:
    """Run ``measure("base", i)`` and ``measure("head", i)`` for rounds ``i = 1..rounds`` in ABBA order.

    Each round is yielded as soon as both sides are measured; ``on_run(side, i)`` is called
    after each measurement (a progress bar).
    """
    for index, order in enumerate(abba_orders(rounds, seed), start=1):
        started = time.perf_counter()
        measured: dict[str, Figures] = {}
        for side in order:
            measured[side] = measure(side, index)
            if on_run is not None:
                on_run(side, index)
        yield Round(index, order, measured["base"], measured["head"], time.perf_counter() - started)


def interleave(
    measure: Callable[[str, int], Figures],
    rounds: int,
    seed: int = 0,
    on_run: Callable[[str, int], None] | None = None,
) -> list[Round]:
    """All rounds of :func:`iter_rounds`."""
    return list(iter_rounds(measure, rounds, seed, on_run))
