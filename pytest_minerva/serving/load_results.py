"""What the requests of a load run add up to: figures per load level, sweeps, goodput under an SLO.

The runs themselves are made by :mod:`pytest_minerva.serving.loadgen`. Definitions:

wall time
    from the first request sent to the last one finished (failed ones included).
aggregate tokens/s
    generated tokens of successful requests divided by the wall time.
speedup and efficiency (sweeps)
    ``speedup(c) = aggregate(c) / aggregate(1)`` and ``efficiency(c) = speedup(c) / c``:
    1.0 means ``c`` requests in flight get ``c`` times the throughput of one.
goodput under an SLO
    successful requests whose TTFT and TpT both meet the SLO, per second of wall
    time; ``good_fraction`` is their share of all requests sent.

Failed requests are counted by reason and never averaged into a figure.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_minerva.serving.sse import StreamResult
from pytest_minerva.stats.summary import Stats


@dataclass(frozen=True)
class Slo:
    """A service-level objective: TTFT and TpT bounds in milliseconds (None: no bound)."""

    ttft_ms: float | None = None
    tpt_ms: float | None = None

    def met(self, result: StreamResult) -> bool:
        if not result.ok:
            return False
        ttft, tpt = result.ttft_s, result.tpt_s
        if self.ttft_ms is not None and (ttft is None or ttft * 1e3 > self.ttft_ms):
            return False
        return not (self.tpt_ms is not None and (tpt is None or tpt * 1e3 > self.tpt_ms))

    def describe(self) -> str:
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"TTFT <= {self.ttft_ms:g} ms")
        if self.tpt_ms is not None:
            parts.append(f"TpT <= {self.tpt_ms:g} ms")
        return " and ".join(parts) or "none"


@dataclass
class LoadResult:
    """All requests of one load level and what they add up to (see the module docstring)."""

    mode: str
    level: float
    results: list[StreamResult]
    wall_s: float
    not_sent: int = 0
    dropped: int = 0
    slo: Slo = field(default_factory=Slo)
    seed: int | None = None
    rounds: int = 1

    @property
    def ok(self) -> list[StreamResult]:
        return [r for r in self.results if r.ok]

    @property
    def failed(self) -> list[StreamResult]:
        return [r for r in self.results if not r.ok]

    def failures_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.failure.reason for r in self.failed if r.failure is not None))

    def failure_examples(self) -> dict[str, str]:
        """One message per failure reason."""
        seen: dict[str, str] = {}
        for r in self.failed:
            if r.failure is not None:
                seen.setdefault(r.failure.reason, r.failure.message)
        return seen

    @property
    def output_tokens(self) -> int:
        return sum(r.completion_tokens or 0 for r in self.ok)

    @property
    def aggregate_tps(self) -> float | None:
        return self.output_tokens / self.wall_s if self.ok and self.wall_s > 0 else None

    def stats_ms(self, metric: str) -> Stats | None:
        """TTFT, TpT or E2E (``ttft``, ``tpt``, ``e2e``) of the successful requests, in ms."""
        values = [getattr(r, f"{metric}_s") for r in self.ok]
        values = [v * 1e3 for v in values if v is not None]
        return Stats(values) if values else None

    @property
    def good(self) -> int:
        return sum(1 for r in self.results if self.slo.met(r))

    @property
    def goodput_rps(self) -> float | None:
        return self.good / self.wall_s if self.wall_s > 0 and self.results else None

    @property
    def good_fraction(self) -> float | None:
        return self.good / len(self.results) if self.results else None

    def count_sources(self) -> dict[str, int]:
        return dict(Counter(r.token_count_source or "uncounted" for r in self.ok))

    def as_dict(self) -> dict[str, Any]:
        stats = {m: self.stats_ms(m) for m in ("ttft", "tpt", "e2e")}
        return {
            "mode": self.mode,
            "level": self.level,
            "seed": self.seed,
            "rounds": self.rounds,
            "sent": len(self.results),
            "ok": len(self.ok),
            "failed": len(self.failed),
            "not_sent": self.not_sent,
            "dropped": self.dropped,
            "failures": self.failures_by_reason(),
            "failure_examples": self.failure_examples(),
            "wall_s": self.wall_s,
            "output_tokens": self.output_tokens,
            "aggregate_tps": self.aggregate_tps,
            "token_count_sources": self.count_sources(),
            **{f"{m}_ms": (s.as_dict() if s else None) for m, s in stats.items()},
            "slo": {"ttft_ms": self.slo.ttft_ms, "tpt_ms": self.slo.tpt_ms},
            "good": self.good,
            "goodput_rps": self.goodput_rps,
            "good_fraction": self.good_fraction,
            "requests": [r.as_dict() for r in self.results],
        }


@dataclass
class Sweep:
    """Load results at several levels, with speedup and efficiency against level 1.

    ``prompts_used`` is one past the last prompt index the sweep used (warm-up included).
    """

    levels: list[LoadResult]
    prompts_used: int = 0

    def baseline(self) -> LoadResult | None:
        return next((r for r in self.levels if r.mode == "concurrency" and r.level == 1), None)

    def speedup(self, result: LoadResult) -> float | None:
        base = self.baseline()
        if base is None or not base.aggregate_tps or result.aggregate_tps is None:
            return None
        return result.aggregate_tps / base.aggregate_tps

    def efficiency(self, result: LoadResult) -> float | None:
        speedup = self.speedup(result)
        return None if speedup is None or result.mode != "concurrency" else speedup / result.level

    def as_dict(self) -> dict[str, Any]:
        return {
            "levels": [
                {**r.as_dict(), "speedup": self.speedup(r), "efficiency": self.efficiency(r)} for r in self.levels
            ]
        }


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """Runs of one level as one: requests pooled, wall times added (so tokens/s is over all of them)."""
    first = results[0]
    return LoadResult(
        first.mode,
        first.level,
        [r for run in results for r in run.results],
        math.fsum(run.wall_s for run in results),
        not_sent=sum(run.not_sent for run in results),
        dropped=sum(run.dropped for run in results),
        slo=first.slo,
        seed=first.seed,
        rounds=sum(run.rounds for run in results),
    )
