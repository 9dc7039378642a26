"""Micro-benchmarks of single backend operations, timed by pytest-benchmark.

Run them with ``python -m pytest --pyargs pytest_minerva.suites.test_microbench --benchmark-only`` (add ``--model`` and
``--backend`` to narrow the matrix); pytest-benchmark's own options (``--benchmark-json``,
``--benchmark-autosave``, ``--benchmark-compare``) then store and compare the timings.

They are skipped unless ``--benchmark-only`` is given. pytest-benchmark runs benchmarks
in every ordinary ``pytest`` run unless ``--benchmark-skip`` is passed, which would add
many timed rounds per backend to each correctness run; opting in is the cheaper default.
The end-to-end figures (TTFT, TpT, throughput) come from ``minerva bench``, not from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pytest_minerva.backends.base import Backend, GenerationRequest, TokenEvent
from pytest_minerva.timing import scenarios

pytestmark = pytest.mark.skipif(
    "not config.getoption('benchmark_only', False)",
    reason="micro-benchmarks run only with --benchmark-only",
)

DECODE_ROUNDS = 50
DECODE_WARMUP = 5


def _close(stream: Iterator[TokenEvent]) -> None:
    """Stop a generation part way (the Protocol says iterator; the adapters return generators)."""
    close = getattr(stream, "close", None)
    if close is not None:
        close()


def test_tokenize(benchmark: Any, backend: Backend) -> None:
    text = scenarios.prompt_text("medium.txt")
    ids = benchmark(backend.tokenize, text)
    benchmark.extra_info["tokens"] = len(ids)
    assert ids == backend.tokenize(text)
    assert len(ids) > 100


def test_detokenize(benchmark: Any, backend: Backend) -> None:
    text = scenarios.prompt_text("medium.txt")
    ids = backend.tokenize(text)
    decoded = benchmark(backend.detokenize, ids)
    benchmark.extra_info["tokens"] = len(ids)
    assert decoded == backend.detokenize(ids)
    assert decoded.strip()


def test_first_token(benchmark: Any, backend: Backend) -> None:
    """Prefill of a 100-token prompt plus sampling the first token."""
    prompt = scenarios.build_prompt(backend, scenarios.SCENARIOS["medium"])
    request = GenerationRequest(prompt.ids, 2, ignore_eos=True)

    def first_token() -> TokenEvent:
        stream = backend.stream(request)
        event = next(stream)
        _close(stream)
        return event

    event = benchmark.pedantic(first_token, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info["prompt_tokens"] = len(prompt.ids)
    assert event.index == 0


def test_decode_step(benchmark: Any, backend: Backend) -> None:
    """One generated token on a live stream: a decode forward pass plus sampling, at context 33 to 88."""
    prompt = scenarios.build_prompt(backend, scenarios.get("sweep-32"))
    total = 1 + DECODE_WARMUP + DECODE_ROUNDS
    stream: Iterator[TokenEvent] = backend.stream(GenerationRequest(prompt.ids, total, ignore_eos=True))
    try:
        assert next(stream).index == 0  # the prefill, not timed
        event = benchmark.pedantic(
            lambda: next(stream), rounds=DECODE_ROUNDS, iterations=1, warmup_rounds=DECODE_WARMUP
        )
    finally:
        _close(stream)
    benchmark.extra_info["context_tokens"] = len(prompt.ids) + total - 1
    assert event.index == total - 1  # every round was exactly one token
