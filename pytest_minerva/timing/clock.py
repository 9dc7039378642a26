"""The harness's own clock: each token event's receipt, and the adapter's timestamps held against it.

An adapter stamps each :class:`~pytest_minerva.backends.base.TokenEvent` with ``time_s``
(its *claim*). The harness takes its own ``time.perf_counter()`` as it receives each event
from the adapter's generator (the *receipt*, :func:`receive`), in whatever process runs the
adapter: the benchmark's own process, or an isolated backend's worker
(:class:`~pytest_minerva.backends.base.ReceivedStream`). Both processes read the same
system-wide monotonic clock, so claims, receipts and the parent's request time compare
directly. :func:`check_clock` then holds the claims against the receipts:

- no claim may be later than its receipt (:data:`CLAIM_AFTER_RECEIPT_SLACK_S`);
- an adapter that streams: each claim lags its receipt by at most
  :data:`LAG_ABSOLUTE_S` + :data:`LAG_RELATIVE` x the time since the request, and so does
  the claimed end-to-end time behind the observed one;
- an adapter that declares it buffers (:class:`~pytest_minerva.backends.base.BufferedStream`):
  its claimed end-to-end time lies between the observed one less
  :data:`BUFFERED_ALLOWANCE_ABSOLUTE_S` + :data:`BUFFERED_ALLOWANCE_RELATIVE` x it, and
  the observed one.

The bounds were set from the worst honest gaps measured with ``tools/measure_clock_gaps.py``
(figures beside each constant) and are wide enough for a loaded two-core machine, yet a
stream whose decode timestamps are compressed to 0.8 or stretched to 1.25 of the truth
fails them on SmolLM2 (a stretch fails at the second token: its claim is later than its
receipt). A buffering adapter's per-token claims cannot be checked, only its end-to-end time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_minerva.backends.base import TokenEvent
from pytest_minerva.errors import printable

#: Where a figure comes from, as the JSON's ``provenance`` mappings name it.
HARNESS_CLOCK = "harness clock"
ENGINE_TIMERS = "engine timers"
ADAPTER_REPORTED = "adapter-reported"
COMPUTED = "computed"
#: ``time.process_time()`` of the process that runs the engine, read beside each receipt: the CPU
#: time every thread of that process spent, which time-slicing on a busy machine does not inflate.
HARNESS_CPU_CLOCK = "harness CPU clock"
PROVENANCES = (HARNESS_CLOCK, HARNESS_CPU_CLOCK, ENGINE_TIMERS, ADAPTER_REPORTED, COMPUTED)

#: A claim may exceed its receipt by this much: float rounding only (both are readings of one
#: clock, and perf_counter() values near 1e5 s resolve to ~1e-11 s).
CLAIM_AFTER_RECEIPT_SLACK_S = 1e-6
#: The absolute part of how far a streaming adapter's claim may lag its receipt: a preemption or
#: a garbage collection between the adapter's clock read and its ``yield``. Worst honest lag
#: measured (2 cores, load average 3): 6.0 ms (mlx_lm in a worker); llama.cpp 2.3, transformers 1.3.
LAG_ABSOLUTE_S = 0.015
#: The relative part, of the time since the request: with it a decode compressed to 0.8 of the
#: truth (lagging 20% of the decode time) fails once the decode takes ~100 ms; SmolLM2's 15-token
#: ``short`` scenario decodes for ~190 ms on llama.cpp with one thread.
LAG_RELATIVE = 0.02
#: How much shorter a buffering adapter's claimed end-to-end time may be than the observed one:
#: what it does after the last chunk arrived and before it yields (openai_http counts the tokens,
#: two tokenize requests). Worst measured over loopback: 5.4 ms; the rest is room for two round
#: trips to a remote endpoint.
BUFFERED_ALLOWANCE_ABSOLUTE_S = 0.100
#: The relative part of that allowance, of the observed end-to-end time (tokenizing a longer
#: response takes longer).
BUFFERED_ALLOWANCE_RELATIVE = 0.05

#: The figure names whose sources :func:`provenance` gives.
PER_TOKEN_FIGURES = ("ttft_ms", "tpt_ms", "itl_ms", "prefill_tps", "decode_tps")
WHOLE_RUN_FIGURES = ("total_ms", "throughput_tps")
#: The CPU-time twins of the wall-clock times: the same definitions on ``time.process_time()``.
CPU_FIGURES = {"ttft_ms": "ttft_cpu_ms", "tpt_ms": "tpt_cpu_ms", "total_ms": "total_cpu_ms"}


def receive(stream: Iterable[TokenEvent], cpu: list[float] | None = None) -> list[tuple[TokenEvent, float]]:
    """Every event of ``stream`` with the ``time.perf_counter()`` at which it was received.

    With ``cpu`` (a list), the process's ``time.process_time()`` is appended to it beside each
    receipt. Nothing else runs between events but the clock reads and the appends, which
    allocate nothing the garbage collector tracks (~0.1 us per event and clock;
    ``tools/measure_clock_gaps.py overhead``); the pairs are built after the last event.
    """
    events: list[TokenEvent] = []
    times: list[float] = []
    add_event, add_time, clock = events.append, times.append, time.perf_counter
    if cpu is None:
        for event in stream:
            add_time(clock())
            add_event(event)
    else:
        add_cpu, cpu_clock = cpu.append, time.process_time
        for event in stream:
            add_time(clock())
            add_cpu(cpu_clock())
            add_event(event)
    return list(zip(events, times, strict=True))


#: Linux's scheduler statistics of the calling thread: nanoseconds on a CPU, nanoseconds runnable
#: but waiting for one (time-slicing), and time slices.
SCHEDSTAT = "/proc/thread-self/schedstat"


def scheduler_times() -> tuple[float, float] | None:
    """``(running_s, waiting_s)`` of the calling thread from the kernel's scheduler statistics:
    time on a CPU, and time runnable but waiting for a CPU (what time-slicing adds to wall
    time). None where the kernel does not provide them (not Linux, or no schedstat)."""
    try:
        with open(SCHEDSTAT, "rb") as stats:
            running, waiting = stats.read().split()[:2]
        return int(running) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


def receipts(stream: Iterable[TokenEvent]) -> Iterator[tuple[TokenEvent, float]]:
    """Like :func:`receive`, one event at a time: for a caller that must pass each event on as
    it comes (an isolated backend's worker sends each to the test process, so the events before
    a crash still arrive). The receipt is taken before the caller sees the event."""
    clock = time.perf_counter
    for event in stream:
        yield event, clock()


@dataclass(frozen=True)
class ClockCheck:
    """The adapter's timestamps of one run against the harness's receipts, in seconds."""

    claimed_e2e_s: float
    observed_e2e_s: float
    max_lag_s: float
    median_lag_s: float
    problem: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed_e2e_ms": self.claimed_e2e_s * 1e3,
            "observed_e2e_ms": self.observed_e2e_s * 1e3,
            "max_lag_ms": self.max_lag_s * 1e3,
            "median_lag_ms": self.median_lag_s * 1e3,
            "ok": self.problem is None,
        }


def lag_bound_s(elapsed_s: float) -> float:
    """How far a streaming adapter's claim may lag its receipt ``elapsed_s`` after the request."""
    return LAG_ABSOLUTE_S + LAG_RELATIVE * max(elapsed_s, 0.0)


def buffered_allowance_s(observed_e2e_s: float) -> float:
    """How much shorter a buffering adapter's claimed E2E may be than the observed one."""
    return BUFFERED_ALLOWANCE_ABSOLUTE_S + BUFFERED_ALLOWANCE_RELATIVE * max(observed_e2e_s, 0.0)


def check_clock(
    backend: str,
    request_s: float,
    claims_s: Sequence[float],
    received_s: Sequence[float],
    *,
    buffered: str | None = None,
) -> ClockCheck:
    """Hold an adapter's claimed token times against the harness's receipts of the same events.

    ``problem`` is None when they agree, else one line: ``backend NAME's timestamps disagree
    with the harness clock: ...`` followed by the first fact found (a claim after its receipt,
    the end-to-end times, or one token's lag).
    """
    if not claims_s or len(claims_s) != len(received_s):
        raise ValueError(f"{len(claims_s)} claimed times for {len(received_s)} receipts")
    lags = [r - c for c, r in zip(claims_s, received_s, strict=True)]
    claimed, observed = claims_s[-1] - request_s, received_s[-1] - request_s
    prefix = f"backend {printable(backend)}'s timestamps disagree with the harness clock: "
    e2e = f"claimed E2E {claimed * 1e3:.0f} ms, observed {observed * 1e3:.0f} ms"

    def found(fact: str) -> ClockCheck:
        return ClockCheck(claimed, observed, max(lags), statistics.median(lags), prefix + fact)

    late = next((i for i, lag in enumerate(lags) if lag < -CLAIM_AFTER_RECEIPT_SLACK_S), None)
    if late is not None:
        return found(f"token {late} is claimed {-lags[late] * 1e3:.1f} ms after the harness received it")
    if buffered is not None:
        if claimed < observed - buffered_allowance_s(observed):
            return found(e2e)
    else:
        if observed - claimed > lag_bound_s(observed):
            return found(e2e)
        for i, (lag, receipt) in enumerate(zip(lags, received_s, strict=True)):
            if lag > lag_bound_s(receipt - request_s):
                return found(f"token {i} claimed {lag * 1e3:.1f} ms before it was received")
    return ClockCheck(claimed, observed, max(lags), statistics.median(lags), None)


def provenance(*, received: bool, buffered: str | None) -> dict[str, str]:
    """The source of each per-run figure: the harness's receipts where it has them, the adapter's
    claims for the per-token figures of a buffering adapter (and of a run without receipts)."""
    per_token = HARNESS_CLOCK if received and buffered is None else ADAPTER_REPORTED
    whole_run = HARNESS_CLOCK if received else ADAPTER_REPORTED
    return {**dict.fromkeys(PER_TOKEN_FIGURES, per_token), **dict.fromkeys(WHOLE_RUN_FIGURES, whole_run)}


__all__ = [
    "ADAPTER_REPORTED",
    "BUFFERED_ALLOWANCE_ABSOLUTE_S",
    "BUFFERED_ALLOWANCE_RELATIVE",
    "CLAIM_AFTER_RECEIPT_SLACK_S",
    "COMPUTED",
    "CPU_FIGURES",
    "ENGINE_TIMERS",
    "HARNESS_CLOCK",
    "HARNESS_CPU_CLOCK",
    "LAG_ABSOLUTE_S",
    "LAG_RELATIVE",
    "PER_TOKEN_FIGURES",
    "PROVENANCES",
    "WHOLE_RUN_FIGURES",
    "ClockCheck",
    "buffered_allowance_s",
    "check_clock",
    "lag_bound_s",
    "provenance",
    "receipts",
    "receive",
    "scheduler_times",
]
