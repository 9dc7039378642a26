"""Load generation against an OpenAI-compatible endpoint: concurrency sweeps and Poisson arrivals.

Every request streams over SSE (:func:`~pytest_minerva.serving.sse.stream_request`)
in its own thread, with a distinct prompt (:mod:`pytest_minerva.serving.workload`), and is
timed on arrival. Definitions:

in-flight (concurrency) ``c``
    a closed loop: ``c`` workers each send their next request as soon as the last
    one finished, until ``requests`` were sent or ``duration_s`` passed (a request
    already sent is always allowed to finish, bounded by its own timeouts).
request rate
    an open loop: request ``i`` is sent at ``t_i``, the sum of ``i`` exponential
    inter-arrival gaps of mean ``1 / rate`` drawn from ``random.Random(seed)``; the
    same seed gives the same schedule. No more than ``max_in_flight`` requests are
    outstanding: one that would exceed it is not sent and counted as ``dropped``.

Wall time, aggregate tokens/s, speedup and efficiency, and goodput under an SLO are
defined with :class:`~pytest_minerva.serving.load_results.LoadResult`, which holds
the requests of one load level.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pytest_minerva.errors import MinervaError
from pytest_minerva.serving.client import Endpoint
from pytest_minerva.serving.load_results import LoadResult, Slo, Sweep, merge
from pytest_minerva.serving.sse import StreamResult, stream_request

# ``Workload``, ``fit_prompts`` and ``rotated_prompts`` (like ``Slo`` above) stay importable as
# ``loadgen.<name>``: the asv suite (run against older commits too) and ``minerva serve-bench`` use them so.
from pytest_minerva.serving.workload import Workload
from pytest_minerva.serving.workload import fit_prompts as fit_prompts
from pytest_minerva.serving.workload import rotated_prompts as rotated_prompts
from pytest_minerva.stats.summary import Stats

DEFAULT_CONCURRENCY = (1, 2, 4, 8)


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
