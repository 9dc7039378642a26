"""What every backend must do on every artifact it runs: one test, the whole matrix.

Each test runs once per case (model x format x backend x device); ids read like
``test_logits_are_finite[smollm2-135m-gguf-llama_cpp-cpu]``.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_minerva.backends.base import Backend, GenerationRequest
from pytest_minerva.equivalence import compare_logits
from pytest_minerva.equivalence.runner import greedy, prompts
from pytest_minerva.suites.support import kv_cache_bounds
from pytest_minerva.timing.scenarios import prompt_text

ROUNDTRIP_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "def main():\n    print('hello, world')\n",
    "Numbers 3.14159 and 2026-11-22, symbols #@!$%",
)


def test_tokenizer_roundtrip(backend: Backend) -> None:
    for text in ROUNDTRIP_TEXTS:
        ids = backend.tokenize(text)
        assert ids, f"{backend.name} tokenized {text!r} to nothing"
        assert all(0 <= i < backend.vocab_size for i in ids), f"{backend.name}: ids outside the vocabulary"
        assert backend.detokenize(ids) == text


def test_logits_are_finite_and_depend_on_the_input(backend: Backend) -> None:
    first, second = prompts(backend)[:2]
    logits = backend.logits(first.ids)
    assert logits.dtype == np.float32
    assert logits.shape == (len(first.ids), backend.vocab_size)
    assert np.isfinite(logits).all(), f"{backend.name}: non-finite logits at rows {np.where(~np.isfinite(logits))[0]}"
    # A backend that ignores its input (or returns one row for all) cannot pass these.
    assert float(np.std(logits[-1])) > 0.1, "the last row's logits are flat"
    assert not np.allclose(logits[-1], logits[-2], atol=1e-3), "two positions gave the same logits"
    other = backend.logits(second.ids)
    assert not np.allclose(logits[-1], other[-1], atol=1e-3), "two different prompts gave the same logits"


def test_logits_are_deterministic(backend: Backend) -> None:
    prompt = prompts(backend)[0]
    first = backend.logits(prompt.ids)
    second = backend.logits(prompt.ids)
    np.testing.assert_array_equal(first, second, err_msg=f"{backend.name}: two identical forward passes differ")


def test_generation_gives_the_exact_count_past_eos(backend: Backend) -> None:
    prompt = prompts(backend)[0]
    wanted = 12
    request = GenerationRequest(prompt_ids=prompt.ids, max_tokens=wanted, ignore_eos=True)
    events = list(backend.stream(request))
    assert [e.index for e in events] == list(range(wanted))
    times = [e.time_s for e in events]
    assert times == sorted(times), "token timestamps go backwards"
    assert all(0 <= e.token < backend.vocab_size for e in events)


def test_seeded_sampling_is_reproducible(backend: Backend) -> None:
    prompt = prompts(backend)[1]

    def sample(seed: int) -> list[int]:
        request = GenerationRequest(prompt_ids=prompt.ids, max_tokens=10, temperature=1.0, seed=seed)
        return [e.token for e in backend.stream(request)]

    assert sample(1234) == sample(1234)


def test_greedy_stream_follows_the_logits(backend: Backend) -> None:
    """Each streamed greedy token is the argmax of the logits the backend gives for that step."""
    prompt = prompts(backend)[1]
    generated = greedy(backend, prompt.ids, 8)
    ids = list(prompt.ids) + generated
    steps = backend.incremental_logits(ids, len(prompt.ids))
    chosen = np.argmax(steps[len(prompt.ids) - 1 : -1], axis=-1)
    assert chosen.tolist() == generated, f"{backend.name}: streamed {generated}, argmax of the logits {chosen.tolist()}"


def test_kv_cache_matches_full_forward(backend: Backend) -> None:
    prompt = prompts(backend)[2]
    prefix = len(prompt.ids) // 3
    full = backend.logits(prompt.ids)
    steps = backend.incremental_logits(prompt.ids, prefix)
    report = compare_logits(full[prefix:], steps[prefix:])
    dlogit, top1 = report.metric_value("max_dlogit"), report.metric_value("top1_agreement")
    bounds = kv_cache_bounds(backend.name)  # fixtures/kv_cache.toml: each engine's measured bounds
    print(f"{backend.name}: kv-cache vs full forward: max |dlogit| {dlogit:.3g}, top-1 {top1:.3f}")
    assert dlogit is not None and top1 is not None
    assert dlogit <= bounds.max_dlogit, (
        f"{backend.name}: decoding with the KV cache moves logits by up to {dlogit:.3g} "
        f"(bound {bounds.max_dlogit:g}, fixtures/kv_cache.toml) against a full forward pass"
    )
    assert top1 >= bounds.top1_agreement, (
        f"{backend.name}: KV-cache decoding picks a different top-1 token at {1 - top1:.1%} of positions"
    )


def test_batched_generation_equals_one_at_a_time(backend: Backend) -> None:
    generate_batch = getattr(backend, "generate_batch", None)
    if generate_batch is None:
        pytest.skip(f"{backend.name} does not batch")
    texts = [prompt_text(name) for name in ("short.txt", "medium.txt", "code.txt")]
    batch = [backend.tokenize(t)[:n] for t, n in zip(texts, (9, 23, 16), strict=True)]
    together = generate_batch(batch, 6)
    alone = [greedy(backend, ids, 6) for ids in batch]
    assert together == alone
