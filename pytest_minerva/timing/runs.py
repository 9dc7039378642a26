"""Timed runs: one generation timed token by token, and a scenario's warm-up then N timed runs.

Definitions. Every figure is measured on one run; its median, interquartile range,
standard deviation and run count are reported over the timed runs.

``t_request``
    ``time.perf_counter()`` just before ``backend.stream(request)`` is called.
``t_i``
    the harness's receipt of the ``i``-th generated
    :class:`~pytest_minerva.backends.base.TokenEvent` (``i = 0..N-1``): its own
    ``time.perf_counter()`` as the adapter's generator handed the event over
    (:func:`~pytest_minerva.timing.clock.receive`). The event's own ``time_s``, taken by the
    adapter, is its *claim*; claims are held against receipts
    (:func:`~pytest_minerva.timing.clock.check_clock`) and a run whose claims disagree is an
    error, never figures. For an adapter that declares it buffers the whole response
    (:class:`~pytest_minerva.backends.base.BufferedStream`) every receipt comes at the end,
    so ``t_i`` is its claim and the per-token figures below are adapter-reported; E2E and
    throughput still use the last receipt.
``N``
    generated tokens, counted from the engine's token events (never by re-tokenizing
    text). Every run must produce exactly the scenario's count (EOS is ignored); a run
    that stops early makes the whole scenario an error, and nothing is averaged.
TTFT (time to first token)
    ``t_0 - t_request``: prompt processing (prefill) plus sampling the first token.
E2E (end to end, ``total_ms``)
    the last receipt ``- t_request``.
TpT (time per output token after the first)
    ``(t_{N-1} - t_0) / (N - 1)``, the mean inter-token latency (``(E2E - TTFT) / (N - 1)``
    wherever the figures are the harness's).
ITL (inter-token latencies)
    ``t_i - t_{i-1}`` for ``i = 1..N-1``; their median, p90 and p99 are pooled over all
    timed runs of a scenario and reported separately from TpT.
Prefill tokens/s
    ``prompt tokens / TTFT``.
Decode tokens/s
    ``(N - 1) / (t_{N-1} - t_0)``.
Throughput tokens/s
    ``N / E2E``.
CPU time (``ttft_cpu_ms``, ``tpt_cpu_ms``, ``total_cpu_ms``)
    the same three definitions on the ``time.process_time()`` of the process that runs the
    engine, read just before the request and beside each receipt (the run's own thread's
    ``time.thread_time()`` is recorded as ``thread_cpu_ms``, and on Linux the time that thread
    was runnable but waiting for a CPU, from the kernel's scheduler statistics, as
    ``runqueue_wait_ms``). Time-slicing does not inflate
    them: while another process holds the core, this one's CPU clock stands still. Contention
    for caches and memory bandwidth still does. Recorded where the engine runs in the
    process that receives its events, and only there: not for an isolated backend (its worker
    reports receipts only) and not for one whose stream is buffered (openai_http: the server
    computes). An engine that mostly waits (a GPU, a server) has CPU figures far below its wall
    figures; ``minerva compare`` then judges wall time.
Model load time
    wall time of constructing the backend (file to ready-to-generate), taken by
    :func:`~pytest_minerva.timing.load.load_backend`.

The harness does no work between a token's arrival and the next but reading the clock
and appending to a list, and computes everything afterwards. For llama.cpp it also reads
the engine's own timers for each timed run (``t_p_eval_ms``/``n_p_eval`` for the
prefill, ``t_eval_ms``/``n_eval`` for the single-token decodes, ``t_sample_ms``) so the
harness's rates can be checked against them (:mod:`pytest_minerva.timing.fidelity`). Memory
figures are defined in :mod:`pytest_minerva.timing.memory`, the KV probe in
:mod:`pytest_minerva.timing.kv`, the roofline in :mod:`pytest_minerva.timing.roofline`.
"""

from __future__ import annotations

import gc
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pytest_minerva.backends.base import Backend, BufferedStream, GenerationRequest, PerfCounters, ReceivedStream
from pytest_minerva.errors import MinervaError
from pytest_minerva.stats.summary import Stats
from pytest_minerva.timing.clock import (
    CPU_FIGURES,
    ENGINE_TIMERS,
    HARNESS_CLOCK,
    HARNESS_CPU_CLOCK,
    ClockCheck,
    check_clock,
    provenance,
    receive,
    scheduler_times,
)
from pytest_minerva.timing.scenarios import Prompt, Scenario, build_prompt

#: Per-run figures summarised with :class:`Stats`, in milliseconds or tokens per second.
RUN_METRICS = ("ttft_ms", "tpt_ms", "total_ms", "throughput_tps", "prefill_tps", "decode_tps")
#: CPU-time figures of runs whose engine ran in the receiving process (see the module doc).
CPU_METRICS = tuple(CPU_FIGURES.values())
#: The time the requesting thread was runnable but waiting for a CPU, request to last token.
RUNQUEUE_WAIT = "runqueue_wait_ms"


class BenchmarkError(MinervaError):
    """A run did not produce what the scenario asked for; the message says how."""


@dataclass(frozen=True)
class RunRecord:
    """One timed run: the request time, each token's id, the adapter's timestamp (claim) and
    the harness's receipt of it, and engine counters.

    ``received_s`` is empty for a record built without receipts (then the figures are the
    adapter's claims, unchecked); ``buffered`` is the reason of an adapter that declares it
    holds the whole response before its first event; ``backend`` names it in a clock problem.
    """

    run: int
    prompt_tokens: int
    requested_tokens: int
    request_s: float
    token_times_s: tuple[float, ...]
    token_ids: tuple[int, ...]
    finish_reason: str | None
    engine: dict[str, Any] | None = None
    received_s: tuple[float, ...] = ()
    buffered: str | None = None
    backend: str = "?"
    #: ``time.process_time()`` just before the request and beside each receipt (empty: not recorded).
    request_cpu_s: float | None = None
    cpu_s: tuple[float, ...] = ()
    #: CPU time of the thread that ran the request, from the request to the last event.
    thread_cpu_s: float | None = None
    #: How long that thread was runnable but waiting for a CPU meanwhile (Linux schedstat).
    runqueue_wait_s: float | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def times_s(self) -> tuple[float, ...]:
        """The token times the per-token figures use: the receipts, or the claims of a
        buffering adapter (and of a record without receipts)."""
        return self.received_s if self.received_s and self.buffered is None else self.token_times_s

    def provenance(self) -> dict[str, str]:
        """Each figure's source: ``harness clock``, ``harness CPU clock`` or ``adapter-reported``."""
        sources = provenance(received=bool(self.received_s), buffered=self.buffered)
        if self.has_cpu:
            sources.update(dict.fromkeys(CPU_FIGURES.values(), HARNESS_CPU_CLOCK))
            if self.runqueue_wait_s is not None:
                sources[RUNQUEUE_WAIT] = HARNESS_CPU_CLOCK
        return sources

    @property
    def has_cpu(self) -> bool:
        """Whether CPU times were read beside every receipt of a streamed run."""
        return (
            self.request_cpu_s is not None
            and self.buffered is None
            and len(self.cpu_s) == len(self.received_s) == self.generated_tokens >= 2
        )

    def cpu_figures(self) -> dict[str, float]:
        """The CPU-time twins of TTFT, TpT and E2E in ms (empty when not recorded)."""
        if not self.has_cpu or self.request_cpu_s is None:
            return {}
        first, last = self.cpu_s[0], self.cpu_s[-1]
        figures = {
            "ttft_cpu_ms": (first - self.request_cpu_s) * 1e3,
            "tpt_cpu_ms": (last - first) / (self.generated_tokens - 1) * 1e3,
            "total_cpu_ms": (last - self.request_cpu_s) * 1e3,
        }
        if self.runqueue_wait_s is not None:
            figures[RUNQUEUE_WAIT] = self.runqueue_wait_s * 1e3
        return figures

    def clock_check(self) -> ClockCheck | None:
        """The claims held against the receipts; None without receipts or for a malformed run."""
        if not self.received_s or self.stream_problem() is not None:
            return None
        return check_clock(self.backend, self.request_s, self.token_times_s, self.received_s, buffered=self.buffered)

    def problem(self) -> str | None:
        """Why this run cannot be used (early stop, disordered timestamps, timestamps the harness
        clock contradicts), or None."""
        problem = self.stream_problem()
        if problem is not None:
            return problem
        check = self.clock_check()
        return check.problem if check is not None else None

    def stream_problem(self) -> str | None:
        """Why the stream itself is unusable (early stop, disordered timestamps), or None."""
        n = self.generated_tokens
        if n != self.requested_tokens:
            return (
                f"run {self.run} generated {n} of {self.requested_tokens} tokens "
                f"(finish_reason={self.finish_reason!r}); the backend stopped early instead of ignoring EOS"
            )
        if n < 2:
            return f"run {self.run}: TpT needs at least 2 generated tokens, got {n}"
        if self.received_s and len(self.received_s) != n:
            return f"run {self.run}: {len(self.received_s)} receipts for {n} tokens"
        for times in (self.token_times_s, self.received_s):
            if any(b < a for a, b in itertools.pairwise((self.request_s, *times))):
                return f"run {self.run}: token timestamps go backwards"
        if not self.token_times_s[0] > self.request_s:
            return f"run {self.run}: the first token's timestamp is not after the request"
        if not self.decode_s > 0:
            return f"run {self.run}: the first and last tokens have the same timestamp"
        return None

    @property
    def ttft_s(self) -> float:
        return self.times_s[0] - self.request_s

    @property
    def e2e_s(self) -> float:
        """The last receipt (else the last claim) minus the request time."""
        return (self.received_s or self.token_times_s)[-1] - self.request_s

    @property
    def decode_s(self) -> float:
        """The time from the first token to the last (E2E - TTFT where the figures are the harness's)."""
        return self.times_s[-1] - self.times_s[0]

    @property
    def tpt_s(self) -> float:
        return self.decode_s / (self.generated_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.times_s)]

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.ttft_s

    @property
    def decode_tps(self) -> float:
        return (self.generated_tokens - 1) / self.decode_s

    @property
    def throughput_tps(self) -> float:
        return self.generated_tokens / self.e2e_s

    def figures(self) -> dict[str, float]:
        """The :data:`RUN_METRICS`, and their CPU-time twins where recorded (:data:`CPU_METRICS`)."""
        return {
            "ttft_ms": self.ttft_s * 1e3,
            "tpt_ms": self.tpt_s * 1e3,
            "total_ms": self.e2e_s * 1e3,
            "throughput_tps": self.throughput_tps,
            "prefill_tps": self.prefill_tps,
            "decode_tps": self.decode_tps,
            **self.cpu_figures(),
        }

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run": self.run,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "finish_reason": self.finish_reason,
        }
        if self.problem() is None:
            data.update(self.figures())
            data["itl_ms"] = [x * 1e3 for x in self.itl_s]
            if self.thread_cpu_s is not None and self.has_cpu:
                data["thread_cpu_ms"] = self.thread_cpu_s * 1e3
        check = self.clock_check()
        data["clock_check"] = check.as_dict() if check is not None else None
        data["engine"] = self.engine
        return data


@dataclass
class ScenarioResult:
    """All runs of one scenario on one backend, and their statistics."""

    scenario: Scenario
    prompt: Prompt | None
    warmup: int
    runs: list[RunRecord] = field(default_factory=list)
    error: str | None = None
    tokenize_s: Stats | None = None
    detokenize_s: Stats | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    def stats(self, metric: str) -> Stats:
        """Statistics of one of :data:`RUN_METRICS` over the timed runs."""
        if not self.ok:
            raise BenchmarkError(f"{self.scenario.name}: no statistics, the scenario failed: {self.error}")
        return Stats(r.figures()[metric] for r in self.runs)

    def itl_ms(self) -> Stats:
        """Inter-token latencies of all timed runs, pooled."""
        if not self.ok:
            raise BenchmarkError(f"{self.scenario.name}: no statistics, the scenario failed: {self.error}")
        return Stats(x * 1e3 for r in self.runs for x in r.itl_s)

    def engine_stats(self) -> dict[str, Stats]:
        """llama.cpp's own per-run prefill / decode / sampling figures, where it reported them."""
        runs = [r.engine for r in self.runs if r.engine]
        if not self.ok or len(runs) != len(self.runs):
            return {}
        out = {
            "prefill_ms": Stats(e["t_p_eval_ms"] for e in runs),
            "decode_ms_per_token": Stats(e["t_eval_ms"] / max(e["n_eval"], 1) for e in runs),
            "prefill_tps": Stats(e["n_p_eval"] / e["t_p_eval_ms"] * 1e3 for e in runs if e["t_p_eval_ms"] > 0),
            "decode_tps": Stats(e["n_eval"] / e["t_eval_ms"] * 1e3 for e in runs if e["t_eval_ms"] > 0),
        }
        if all("t_sample_ms" in e for e in runs):
            out["sample_ms_per_token"] = Stats(e["t_sample_ms"] / max(e["n_sample"], 1) for e in runs)
        return out

    def breakdown(self) -> list[dict[str, Any]]:
        """Median time of each stage of a run and where the figure comes from."""
        if not self.ok:
            return []
        rows: list[dict[str, Any]] = []
        if self.tokenize_s is not None:
            rows.append(_stage("tokenize (prompt text)", self.tokenize_s.median * 1e3, "timed backend.tokenize()"))
        source = self.provenance()["ttft_ms"]
        stream = "token receipts" if source == HARNESS_CLOCK else "token timestamps"
        rows.append(_stage("prefill + first token (TTFT)", self.stats("ttft_ms").median, f"{stream} ({source})"))
        rows.append(_stage("decode, per token (TpT)", self.stats("tpt_ms").median, f"{stream} ({source})"))
        engine = self.engine_stats()
        if engine:
            rows.append(_stage("prefill (engine)", engine["prefill_ms"].median, "llama.cpp t_p_eval_ms"))
            rows.append(
                _stage(
                    "decode forward, per token (engine)",
                    engine["decode_ms_per_token"].median,
                    "llama.cpp t_eval_ms",
                )
            )
            if "sample_ms_per_token" in engine:
                rows.append(
                    _stage(
                        "sampling, per token (engine)",
                        engine["sample_ms_per_token"].median,
                        "llama.cpp t_sample_ms",
                    )
                )
        if self.detokenize_s is not None:
            rows.append(
                _stage("detokenize (generated ids)", self.detokenize_s.median * 1e3, "timed backend.detokenize()")
            )
        return rows

    @property
    def buffered(self) -> str | None:
        """Why the adapter's stream holds the whole response (its per-token figures are its own), or None."""
        return self.runs[0].buffered if self.runs else None

    def provenance(self) -> dict[str, str]:
        """Each figure's source: :data:`~pytest_minerva.timing.clock.PROVENANCES`."""
        sources = self.runs[0].provenance() if self.runs else provenance(received=True, buffered=None)
        sources.update(tokenize_ms=HARNESS_CLOCK, detokenize_ms=HARNESS_CLOCK)
        if self.engine_stats():
            sources["engine_stats"] = ENGINE_TIMERS
        return sources

    def clock_check(self) -> dict[str, Any] | None:
        """The adapter's timestamps against the harness's receipts over the recorded runs: the
        largest and median lag of a claim behind its receipt, and the median claimed and
        observed E2E; the run that failed the check, if one did."""
        checked = [(r, check) for r in self.runs if (check := r.clock_check()) is not None]
        if not checked:
            return None
        lags = [(t - c) * 1e3 for r, _ in checked for c, t in zip(r.token_times_s, r.received_s, strict=True)]
        failed = next((r.run for r, check in checked if check.problem), None)
        return {
            "runs": len(checked),
            "max_lag_ms": max(lags),
            "median_lag_ms": statistics.median(lags),
            "claimed_e2e_ms": statistics.median(check.claimed_e2e_s * 1e3 for _, check in checked),
            "observed_e2e_ms": statistics.median(check.observed_e2e_s * 1e3 for _, check in checked),
            "failed_run": failed,
        }

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "scenario": self.scenario.name,
            "prompt_tokens": self.scenario.prompt_tokens,
            "generate_tokens": self.scenario.generate_tokens,
            "prompt_file": self.scenario.prompt_file,
            "prompt_repeats": self.prompt.repeats if self.prompt else None,
            "warmup": self.warmup,
            "error": self.error,
            "stats": {},
            "itl_ms": None,
            "engine_stats": {},
            "breakdown": self.breakdown(),
            "buffered": self.buffered,
            "provenance": self.provenance(),
            "clock_check": self.clock_check(),
            "runs": [r.as_dict() for r in self.runs],
        }
        if self.ok:
            data["stats"] = {m: self.stats(m).as_dict() for m in RUN_METRICS}
            if all(r.has_cpu for r in self.runs):
                data["stats"].update({m: self.stats(m).as_dict() for m in CPU_METRICS})
            if all(r.has_cpu and r.runqueue_wait_s is not None for r in self.runs):
                data["stats"][RUNQUEUE_WAIT] = self.stats(RUNQUEUE_WAIT).as_dict()
            data["itl_ms"] = self.itl_ms().as_dict()
            data["engine_stats"] = {k: v.as_dict() for k, v in self.engine_stats().items()}
        if self.tokenize_s is not None:
            data["tokenize_ms"] = Stats(x * 1e3 for x in self.tokenize_s.data).as_dict()
        if self.detokenize_s is not None:
            data["detokenize_ms"] = Stats(x * 1e3 for x in self.detokenize_s.data).as_dict()
        return data


def _stage(name: str, median_ms: float, source: str) -> dict[str, Any]:
    return {"operation": name, "median_ms": median_ms, "source": source}


def _engine_counters(backend: Backend) -> Callable[[], dict[str, Any]] | None:
    return backend.perf_counters if isinstance(backend, PerfCounters) else None


def _reset_engine_counters(backend: Backend) -> None:
    if isinstance(backend, PerfCounters):
        backend.reset_perf_counters()


def timed_run(backend: Backend, prompt_ids: Sequence[int], max_tokens: int, run: int = 1) -> RunRecord:
    """Generate ``max_tokens`` tokens once and record the request time and every token event
    with the harness's receipt of it (taken in the worker for an isolated backend)."""
    request = GenerationRequest(tuple(prompt_ids), max_tokens, temperature=0.0, ignore_eos=True)
    counters = _engine_counters(backend)
    buffered = backend.stream_buffering() if isinstance(backend, BufferedStream) else None
    in_worker = backend.stream_received if isinstance(backend, ReceivedStream) else None
    cpu: list[float] | None = [] if in_worker is None and buffered is None else None
    gc.collect()
    if counters is not None:
        _reset_engine_counters(backend)
    scheduled = scheduler_times() if cpu is not None else None
    thread_cpu_s = time.thread_time()
    request_cpu_s = time.process_time()
    request_s = time.perf_counter()
    received = in_worker(request) if in_worker is not None else receive(backend.stream(request), cpu)
    thread_cpu_s = time.thread_time() - thread_cpu_s
    rescheduled = scheduler_times() if scheduled is not None else None
    engine = counters() if counters is not None else None
    return RunRecord(
        run=run,
        prompt_tokens=len(prompt_ids),
        requested_tokens=max_tokens,
        request_s=request_s,
        token_times_s=tuple(e.time_s for e, _ in received),
        token_ids=tuple(e.token for e, _ in received),
        finish_reason=received[-1][0].finish_reason if received else None,
        engine=engine,
        received_s=tuple(t for _, t in received),
        buffered=str(buffered) if buffered is not None else None,
        backend=backend.name,
        request_cpu_s=request_cpu_s if cpu is not None else None,
        cpu_s=tuple(cpu or ()),
        thread_cpu_s=thread_cpu_s if cpu is not None else None,
        runqueue_wait_s=rescheduled[1] - scheduled[1] if scheduled and rescheduled else None,
    )


def _seconds(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def run_scenario(
    backend: Backend,
    scenario: Scenario,
    *,
    runs: int = 5,
    warmup: int = 1,
    on_run: Callable[[], None] | None = None,
) -> ScenarioResult:
    """Warm up, then time ``runs`` generations of ``scenario``; failures land in ``.error``.

    ``on_run`` is called after each warm-up and timed run (a progress bar), never
    while a run is being timed.
    """
    if runs < 1 or warmup < 0:
        raise MinervaError(f"runs must be at least 1 and warmup at least 0, got runs={runs}, warmup={warmup}")
    if scenario.generate_tokens < 2:
        raise MinervaError(f"{scenario.name}: TpT needs at least 2 generated tokens")
    try:
        prompt = build_prompt(backend, scenario)
    except MinervaError as exc:
        return ScenarioResult(scenario, None, warmup, error=str(exc))
    result = ScenarioResult(scenario, prompt, warmup)
    try:
        result.tokenize_s = Stats(_seconds(lambda: backend.tokenize(prompt.text)) for _ in range(runs))
        for i in range(warmup):
            record = timed_run(backend, prompt.ids, scenario.generate_tokens, run=i + 1)
            if on_run is not None:
                on_run()
            # A warm-up's figures are never used, so only its stream is checked; a timed run that
            # fails the clock check is kept, with the check's figures, in the JSON.
            problem = record.stream_problem()
            if problem:
                result.error = f"warm-up {problem}"
                return result
        for i in range(runs):
            record = timed_run(backend, prompt.ids, scenario.generate_tokens, run=i + 1)
            result.runs.append(record)
            if on_run is not None:
                on_run()
            problem = record.problem()
            if problem:
                result.error = problem
                return result
        result.detokenize_s = Stats(_seconds(partial(backend.detokenize, r.token_ids)) for r in result.runs)
    except MinervaError as exc:
        result.error = str(exc)
    return result


__all__ = [
    "CPU_METRICS",
    "RUNQUEUE_WAIT",
    "RUN_METRICS",
    "BenchmarkError",
    "RunRecord",
    "ScenarioResult",
    "run_scenario",
    "timed_run",
]
