"""Load generation against an OpenAI-compatible endpoint: concurrency sweeps and Poisson arrivals.

Every request streams over SSE (:func:`~pytest_minerva.serving.sse.stream_request`)
in its own thread, with a distinct prompt, and is timed on arrival. Definitions:

in-flight (concurrency) ``c``
    a closed loop: ``c`` workers each send their next request as soon as the last
    one finished, until ``requests`` were sent or ``duration_s`` passed (a request
    already sent is always allowed to finish, bounded by its own timeouts).
request rate
    an open loop: request ``i`` is sent at ``t_i``, the sum of ``i`` exponential
    inter-arrival gaps of mean ``1 / rate`` drawn from ``random.Random(seed)``; the
    same seed gives the same schedule. No more than ``max_in_flight`` requests are
    outstanding: one that would exceed it is not sent and counted as ``dropped``.
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

Failed requests are counted by reason and never averaged into a figure. Prompts are
distinct (the same text rotated by a different number of words, and with
:func:`fit_prompts` each starting with a different token) so that a server that
reuses a cached prompt prefix cannot skip the prefill.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pytest_minerva.errors import MinervaError
from pytest_minerva.serving.sse import Endpoint, StreamResult, Timeouts, stream_request
from pytest_minerva.timing.stats import Stats

#: Fields that make temperature 0 plain greedy decoding and keep generating past EOS.
FIXED_LENGTH_FIELDS: dict[str, Any] = {
    "temperature": 0.0,
    "top_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "ignore_eos": True,
}
DEFAULT_CONCURRENCY = (1, 2, 4, 8)


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


@dataclass(frozen=True)
class Workload:
    """What each request asks for: ``api``, prompts, ``max_tokens`` and extra JSON fields."""

    prompts: tuple[str, ...]
    max_tokens: int = 32
    api: str = "completions"
    model: str | None = None
    fields: dict[str, Any] = field(default_factory=lambda: dict(FIXED_LENGTH_FIELDS))
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise MinervaError("a workload needs at least one prompt")
        if self.max_tokens < 2:
            raise MinervaError(f"max_tokens must be at least 2 (TpT needs two tokens), got {self.max_tokens}")

    def payload(self, index: int) -> dict[str, Any]:
        text = self.prompts[index % len(self.prompts)]
        body: dict[str, Any] = {"max_tokens": self.max_tokens, **self.fields}
        if self.fields.get("ignore_eos"):
            body["min_tokens"] = self.max_tokens
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        if self.model:
            body["model"] = self.model
        body["stream_options"] = {"include_usage": True}
        return body


def rotated_prompts(text: str, count: int, words: int, *, step: int = 7) -> tuple[str, ...]:
    """``count`` distinct prompts of ``words`` words: ``text``'s words, prompt ``i`` starting at word ``i * step``."""
    pool = text.split()
    if not pool:
        raise MinervaError("the prompt text has no words")
    while len(pool) < words + step * count:
        pool = pool + pool
    return tuple(" ".join(pool[i * step : i * step + words]) for i in range(count))


def fit_prompts(
    prompts: Sequence[str],
    tokens: int,
    tokenize: Callable[[str], list[int]],
    detokenize: Callable[[Sequence[int]], str],
    *,
    max_skip: int = 64,
) -> tuple[str, ...]:
    """Each prompt cut to ``tokens`` tokens (as text), all starting with different tokens.

    A prompt whose first token another prompt already starts with drops leading
    tokens (at most ``max_skip``) until it starts with an unused one, so no two
    requests share a cached prefix. Raises if a prompt is too short for that.
    """
    out: list[str] = []
    used: set[int] = set()
    for i, text in enumerate(prompts):
        ids = tokenize(text)
        start = next((j for j in range(min(max_skip, len(ids))) if ids[j] not in used), None)
        if start is None:
            raise MinervaError(f"prompt {i}: none of its first {max_skip} tokens starts a prompt not yet used")
        if len(ids) - start < tokens:
            raise MinervaError(f"prompt {i} has {len(ids) - start} tokens left, fewer than the {tokens} asked for")
        used.add(ids[start])
        out.append(detokenize(ids[start : start + tokens]))
    return tuple(out)


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


def _finish(
    results: list[StreamResult], count: Callable[[str], list[int]] | None, max_tokens: int
) -> tuple[float, float] | None:
    for r in results:
        if r.ok:
            r.count_tokens(count, requested=max_tokens)
    if not results:
        return None
    return min(r.request_s for r in results), max(r.end_s or r.request_s for r in results)


def run_closed_loop(
    endpoint: Endpoint,
    workload: Workload,
    concurrency: int,
    requests: int,
    *,
    duration_s: float | None = None,
    slo: Slo | None = None,
    count: Callable[[str], list[int]] | None = None,
    first_index: int = 0,
) -> LoadResult:
    """``requests`` requests with ``concurrency`` in flight (1: sequential), stopping after ``duration_s``.

    Request ``k`` uses prompt ``first_index + k``. ``count(text)`` re-tokenizes
    generated text when the server gives no better count; it runs after all requests
    finished, so it adds no load during the run.
    """
    if concurrency < 1 or requests < 1:
        raise MinervaError(f"concurrency and requests must be at least 1, got {concurrency} and {requests}")
    lock = threading.Lock()
    state = {"next": 0, "not_sent": 0}
    results: list[StreamResult] = []
    start = time.perf_counter()
    deadline = start + duration_s if duration_s else math.inf

    def worker() -> None:
        while True:
            with lock:
                k = state["next"]
                if k >= requests:
                    return
                state["next"] += 1
                if time.perf_counter() > deadline:
                    state["not_sent"] += 1
                    continue
            index = first_index + k
            result = stream_request(
                endpoint, workload.api, workload.payload(index), timeouts=workload.timeouts, tag=str(index)
            )
            with lock:
                results.append(result)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="minerva-load") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    span = _finish(results, count, workload.max_tokens)
    wall = span[1] - span[0] if span else 0.0
    results.sort(key=lambda r: r.request_s)
    return LoadResult("concurrency", concurrency, results, wall, not_sent=state["not_sent"], slo=slo or Slo())


def poisson_schedule(rate_rps: float, requests: int, seed: int) -> list[float]:
    """Send times in seconds from the start: cumulative exponential gaps of mean ``1 / rate_rps``."""
    if not rate_rps > 0:
        raise MinervaError(f"the request rate must be positive, got {rate_rps}")
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(requests):
        t += rng.expovariate(rate_rps)
        times.append(t)
    return times


def run_poisson(
    endpoint: Endpoint,
    workload: Workload,
    rate_rps: float,
    requests: int,
    *,
    seed: int = 0,
    duration_s: float | None = None,
    max_in_flight: int = 64,
    slo: Slo | None = None,
    count: Callable[[str], list[int]] | None = None,
    first_index: int = 0,
) -> LoadResult:
    """Open-loop Poisson arrivals at ``rate_rps``: at most ``requests`` sent, none after ``duration_s``."""
    schedule = poisson_schedule(rate_rps, requests, seed)
    results: list[StreamResult] = []
    lock = threading.Lock()
    in_flight = threading.Semaphore(max_in_flight)
    threads: list[threading.Thread] = []
    not_sent = dropped = 0
    start = time.perf_counter()

    def send(index: int) -> None:
        try:
            result = stream_request(
                endpoint, workload.api, workload.payload(index), timeouts=workload.timeouts, tag=str(index)
            )
            with lock:
                results.append(result)
        finally:
            in_flight.release()

    for k, at in enumerate(schedule):
        if duration_s is not None and at > duration_s:
            not_sent = len(schedule) - k
            break
        delay = start + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not in_flight.acquire(blocking=False):
            dropped += 1
            continue
        thread = threading.Thread(target=send, args=(first_index + k,), name=f"minerva-poisson-{k}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    span = _finish(results, count, workload.max_tokens)
    wall = span[1] - span[0] if span else 0.0
    results.sort(key=lambda r: r.request_s)
    return LoadResult("rate", rate_rps, results, wall, not_sent=not_sent, dropped=dropped, slo=slo or Slo(), seed=seed)


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


def concurrency_sweep(
    endpoint: Endpoint,
    workload: Workload,
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY,
    *,
    requests_per_level: Callable[[int], int] | int = lambda c: max(4, 2 * c),
    duration_s: float | None = None,
    slo: Slo | None = None,
    count: Callable[[str], list[int]] | None = None,
    on_level: Callable[[LoadResult], None] | None = None,
    warmup: int = 1,
    first_index: int = 0,
    rounds: int = 1,
) -> Sweep:
    """``warmup`` untimed requests, then a closed-loop run at each concurrency; prompts never repeat.

    With ``rounds`` above 1 the levels run again, in reverse order every other round,
    and each level's rounds are merged (:func:`merge`): on a machine whose load drifts,
    every level then sees the same mix of early and late conditions.
    """
    if rounds < 1:
        raise MinervaError(f"rounds must be at least 1, got {rounds}")
    for i in range(warmup):
        stream_request(endpoint, workload.api, workload.payload(first_index + i), timeouts=workload.timeouts)
    used = first_index + warmup
    runs: dict[int, list[LoadResult]] = {c: [] for c in concurrency}
    for round_index in range(rounds):
        order = list(concurrency) if round_index % 2 == 0 else list(reversed(concurrency))
        for c in order:
            n = requests_per_level(c) if callable(requests_per_level) else int(requests_per_level)
            result = run_closed_loop(
                endpoint, workload, c, n, duration_s=duration_s, slo=slo, count=count, first_index=used
            )
            used += n
            runs[c].append(result)
            if on_level is not None:
                on_level(result)
    return Sweep([merge(runs[c]) for c in concurrency], used)


@dataclass
class SequentialVsConcurrent:
    """The same requests sent one after another, then all at once."""

    sequential: LoadResult
    concurrent: LoadResult

    @property
    def wall_ratio(self) -> float | None:
        """Concurrent wall time over sequential: below 1 means concurrency finished the batch sooner."""
        if self.sequential.wall_s <= 0:
            return None
        return self.concurrent.wall_s / self.sequential.wall_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequential": self.sequential.as_dict(),
            "concurrent": self.concurrent.as_dict(),
            "wall_ratio": self.wall_ratio,
        }


def sequential_vs_concurrent(
    endpoint: Endpoint,
    workload: Workload,
    requests: int,
    *,
    slo: Slo | None = None,
    count: Callable[[str], list[int]] | None = None,
    first_index: int = 0,
) -> SequentialVsConcurrent:
    """``requests`` requests with one in flight, then ``requests`` distinct ones all in flight."""
    sequential = run_closed_loop(endpoint, workload, 1, requests, slo=slo, count=count, first_index=first_index)
    concurrent = run_closed_loop(
        endpoint, workload, requests, requests, slo=slo, count=count, first_index=first_index + requests
    )
    return SequentialVsConcurrent(sequential, concurrent)


@dataclass
class ServedVsInProcess:
    """The same prompts generated through the server and by an in-process backend, interleaved.

    Ratios are ``served / in-process`` of the medians: above 1 for TTFT and TpT means
    the server is slower; below 1 for decode tokens/s means the same.
    """

    served: list[StreamResult]
    in_process: list[Any]
    backend: str

    def _medians(self) -> dict[str, dict[str, float | None]]:
        def median(values: list[float]) -> float | None:
            return Stats(values).median if values else None

        ok = [r for r in self.served if r.ok and r.tpt_s]
        runs = [r for r in self.in_process if r.problem() is None]
        return {
            "served": {
                "ttft_ms": median([r.ttft_s * 1e3 for r in ok if r.ttft_s is not None]),
                "tpt_ms": median([r.tpt_s * 1e3 for r in ok if r.tpt_s is not None]),
                "decode_tps": median([1 / r.tpt_s for r in ok if r.tpt_s]),
            },
            "in_process": {
                "ttft_ms": median([r.ttft_s * 1e3 for r in runs]),
                "tpt_ms": median([r.tpt_s * 1e3 for r in runs]),
                "decode_tps": median([r.decode_tps for r in runs]),
            },
        }

    def ratios(self) -> dict[str, float | None]:
        medians = self._medians()
        out: dict[str, float | None] = {}
        for metric in ("ttft_ms", "tpt_ms", "decode_tps"):
            served, local = medians["served"][metric], medians["in_process"][metric]
            out[metric] = served / local if served is not None and local else None
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "pairs": len(self.served),
            "served_failed": sum(1 for r in self.served if not r.ok),
            "in_process_failed": sum(1 for r in self.in_process if r.problem() is not None),
            "medians": self._medians(),
            "ratios_served_over_in_process": self.ratios(),
        }


def served_vs_in_process(
    endpoint: Endpoint,
    workload: Workload,
    backend: Any,
    requests: int,
    *,
    count: Callable[[str], list[int]] | None = None,
    first_index: int = 0,
    warmup: int = 1,
) -> ServedVsInProcess:
    """For each prompt: one served request, then the same prompt generated in-process (one at a time).

    The in-process run tokenizes the prompt text with its own tokenizer and times it
    with :func:`pytest_minerva.timing.harness.timed_run`, ignoring EOS like the server.
    """
    from pytest_minerva.timing.harness import timed_run

    def local(index: int) -> Any:
        ids = backend.tokenize(workload.prompts[index % len(workload.prompts)])
        return timed_run(backend, ids, workload.max_tokens)

    for i in range(warmup):
        stream_request(endpoint, workload.api, workload.payload(first_index + i), timeouts=workload.timeouts)
        local(first_index + i)
    served, in_process = [], []
    for k in range(requests):
        index = first_index + warmup + k
        result = stream_request(endpoint, workload.api, workload.payload(index), timeouts=workload.timeouts)
        served.append(result)
        in_process.append(local(index))
    _finish(served, count, workload.max_tokens)
    return ServedVsInProcess(served, in_process, getattr(backend, "name", "?"))
