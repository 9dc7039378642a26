"""Measure how far honest adapters' token timestamps sit from the harness's receipts, and what
taking the receipts costs; the bounds in ``pytest_minerva/timing/clock.py`` rest on these figures.

``gaps``
    For each backend and model: timed runs of each scenario, loaded as ``minerva bench`` loads
    it (in this process), through the session's in-process guard, and in an isolated worker
    (receipts taken there). Per run it records the largest lag of a claim behind its receipt,
    the claimed and observed end-to-end times, and the decode time (how long a stream must
    decode before a factor-0.8 compression exceeds the lag bound). Prints one markdown row per
    backend x model x loading, with the worst run.
``overhead``
    The receipt loop (:func:`pytest_minerva.timing.clock.receive`) against ``list()`` on a
    stream of ready-made events: nanoseconds per event, median of several passes.

Usage::

    python tools/measure_clock_gaps.py gaps --model smollm2-135m --model tiny-random-llama --runs 10
    python tools/measure_clock_gaps.py overhead --events 100000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from pytest_minerva.backends.base import TokenEvent
from pytest_minerva.errors import MinervaError
from pytest_minerva.options import Settings
from pytest_minerva.session import build_session
from pytest_minerva.timing import clock, harness, scenarios


def _held_ns(consume: Any, events: int, passes: int) -> tuple[float, float]:
    """Time the consumer holds control between two events of an adapter-like generator, from
    just before a ``yield`` to just after it resumes (the generator's own switch included): the
    median over passes of each pass's median and of its mean."""
    samples: list[float] = []
    event = TokenEvent(0, 1, "x", 0.0)
    clock = time.perf_counter

    def stream() -> Iterator[TokenEvent]:
        for _ in range(events):
            handed = clock()
            yield event
            samples.append(clock() - handed)

    medians, means = [], []
    for _ in range(passes):
        samples.clear()
        consume(stream())
        medians.append(statistics.median(samples) * 1e9)
        means.append(statistics.fmean(samples) * 1e9)
    return statistics.median(medians), statistics.median(means)


def overhead(events: int, passes: int) -> None:
    plain = _held_ns(list, events, passes)
    received = _held_ns(clock.receive, events, passes)
    one_by_one = _held_ns(lambda s: [pair for pair in clock.receipts(s)], events, passes)
    print(f"| between two events of a generator ({events} events, {passes} passes) | median ns | mean ns |")
    print("|---|---|---|")
    for name, (median, mean) in (
        ("list()", plain),
        ("receive()", received),
        ("receipts() (the worker's, before it writes the event)", one_by_one),
    ):
        print(f"| {name} | {median:.0f} | {mean:.0f} |")
    print(f"receive() holds control {received[0] - plain[0]:.0f} ns (median) longer per event than list()")


def _loadings(native: bool) -> list[tuple[str, bool | None]]:
    """How to load a backend: as ``minerva bench`` does, and for an engine of native code also
    as a pytest session does (in this process under the guard, and in a worker)."""
    if not native:
        return [("bench (in process)", None)]
    return [("bench (in process)", None), ("guarded (in process)", False), ("isolated worker", True)]


def _measure(
    model: str, backend: str, loading: str, isolate: bool | None, chosen: list[Any], runs: int
) -> list[dict[str, Any]]:
    settings = Settings(models=[model], backends=[backend], threads=1, isolate=bool(isolate))
    session = build_session(settings)
    try:
        spec = session.backends[0]
        # The backend's first format that the model has: GGUF for llama.cpp, SafeTensors for transformers.
        cases = next((found for fmt in spec.formats if (found := session.cases(formats=[fmt]))), [])
        if not cases:
            return []
        case = cases[0]
        reason = session.check_runnable(case)
        if reason:
            print(f"<!-- {model} {backend}: {reason} -->", file=sys.stderr)
            return []
        n_ctx = harness.needed_context(chosen, case.model.context_length)
        if isolate is None:
            loaded = harness.load_backend(session, case, n_ctx)
            backend_obj, close = loaded.backend, loaded.backend.close
        else:
            artifact = session.resolve(case)
            options = session.load_options("cpu")
            options.n_ctx = n_ctx
            backend_obj = session.build_backend(case, artifact, options)
            close = backend_obj.close
        rows = []
        try:
            for scenario in chosen:
                result = harness.run_scenario(backend_obj, scenario, runs=runs, warmup=1)
                for record in result.runs:
                    check = record.clock_check()
                    if check is None:
                        continue
                    lags = [r - c for c, r in zip(record.token_times_s, record.received_s, strict=True)]
                    rows.append(
                        {
                            "scenario": scenario.name,
                            "buffered": record.buffered,
                            "max_lag_ms": check.max_lag_s * 1e3,
                            "min_lag_ms": min(lags) * 1e3,
                            "e2e_gap_ms": (check.observed_e2e_s - check.claimed_e2e_s) * 1e3,
                            "observed_e2e_ms": check.observed_e2e_s * 1e3,
                            "decode_ms": (record.received_s[-1] - record.received_s[0]) * 1e3,
                            "problem": check.problem,
                        }
                    )
                if result.error:
                    print(f"<!-- {model} {backend} {loading} {scenario.name}: {result.error} -->", file=sys.stderr)
        finally:
            close()
        return rows
    finally:
        session.close()


def gaps(models: list[str], backends: list[str], scenario_names: list[str], runs: int) -> None:
    chosen = [scenarios.get(name) for name in scenario_names]
    print(
        "| model | backend | loaded | runs | worst lag ms | earliest lag ms | worst E2E gap ms "
        "| observed E2E ms (median) | decode ms (min) | flagged |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        for backend in backends:
            native = next(spec.native for spec in build_session(Settings(models=[], backends=[backend])).backends)
            for loading, isolate in _loadings(native):
                try:
                    rows = _measure(model, backend, loading, isolate, chosen, runs)
                except MinervaError as exc:
                    print(f"<!-- {model} {backend} {loading}: {exc} -->", file=sys.stderr)
                    continue
                if not rows:
                    continue
                print(
                    f"| {model} | {backend} | {loading} | {len(rows)} "
                    f"| {max(r['max_lag_ms'] for r in rows):.3f} | {min(r['min_lag_ms'] for r in rows):.4f} "
                    f"| {max(r['e2e_gap_ms'] for r in rows):.3f} "
                    f"| {statistics.median(r['observed_e2e_ms'] for r in rows):.1f} "
                    f"| {min(r['decode_ms'] for r in rows):.1f} | {sum(1 for r in rows if r['problem'])} |",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gaps")
    g.add_argument("--model", action="append", default=None)
    g.add_argument("--backend", action="append", default=None)
    g.add_argument("--scenario", action="append", default=None)
    g.add_argument("--runs", type=int, default=10)
    o = sub.add_parser("overhead")
    o.add_argument("--events", type=int, default=100_000)
    o.add_argument("--passes", type=int, default=15)
    args = parser.parse_args(argv)
    if args.what == "overhead":
        overhead(args.events, args.passes)
    else:
        gaps(
            args.model or ["smollm2-135m", "tiny-random-llama"],
            args.backend or ["llama_cpp", "transformers", "mlx_lm", "openai_http"],
            args.scenario or ["short", "medium"],
            args.runs,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
