"""Fidelity: the harness's timings checked against llama.cpp's own timers over the same runs.

For llama.cpp each timed run also carries the engine's counters (``t_p_eval_ms``/``n_p_eval``
for the prefill, ``t_eval_ms``/``n_eval`` for the single-token decodes, ``t_sample_ms``), read
by :func:`~pytest_minerva.timing.runs.timed_run`; :func:`fidelity` sums both clocks over
every such run. The harness's side is its own clock: the receipts of the token events
(:mod:`pytest_minerva.timing.clock`), already checked against the adapter's timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pytest_minerva.timing.runs import ScenarioResult


@dataclass
class Fidelity:
    """The harness's figures against llama.cpp's own timers over the same runs.

    ``decode_overhead`` is ``harness decode time / engine decode time - 1`` summed over
    all timed runs: the share the harness (and the adapter's Python between tokens,
    sampling included) adds to what llama.cpp measured inside ``llama_decode``.
    """

    runs: int
    harness_decode_tps: float
    engine_decode_tps: float
    decode_overhead: float
    harness_prefill_tps: float
    engine_prefill_tps: float
    prefill_overhead: float
    engine_sample_ms_per_token: float | None
    counts_match: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fidelity(results: Iterable[ScenarioResult]) -> Fidelity | None:
    """Compare harness and engine timings over every timed run that has engine counters."""
    runs = [r for res in results if res.ok for r in res.runs if r.engine]
    if not runs:
        return None
    harness_decode = math.fsum(r.decode_s for r in runs)
    engine_decode = math.fsum(r.engine["t_eval_ms"] for r in runs if r.engine) / 1e3
    harness_prefill = math.fsum(r.ttft_s for r in runs)
    engine_prefill = math.fsum(r.engine["t_p_eval_ms"] for r in runs if r.engine) / 1e3
    decoded = sum(r.generated_tokens - 1 for r in runs)
    prefilled = sum(r.prompt_tokens for r in runs)
    counts_match = all(
        r.engine is not None
        and r.engine["n_eval"] == r.generated_tokens - 1
        and r.engine["n_p_eval"] == r.prompt_tokens
        for r in runs
    )
    sampled = [r.engine for r in runs if r.engine and "t_sample_ms" in r.engine]
    sample_ms = (
        math.fsum(e["t_sample_ms"] for e in sampled) / max(1, sum(e["n_sample"] for e in sampled)) if sampled else None
    )
    if engine_decode <= 0 or engine_prefill <= 0:
        return None
    return Fidelity(
        runs=len(runs),
        harness_decode_tps=decoded / harness_decode,
        engine_decode_tps=decoded / engine_decode,
        decode_overhead=harness_decode / engine_decode - 1,
        harness_prefill_tps=prefilled / harness_prefill,
        engine_prefill_tps=prefilled / engine_prefill,
        prefill_overhead=harness_prefill / engine_prefill - 1,
        engine_sample_ms_per_token=sample_ms,
        counts_match=counts_match,
    )


__all__ = ["Fidelity", "fidelity"]
