"""Every tokenizer of every model splits text exactly as llama.cpp does on the model's GGUF.

The logits comparison feeds both sides the reference's ids, so it cannot see a tokenizer
difference; these tests do. Each runs on the ``tokenizer`` pairs: llama.cpp on the model's
primary GGUF (the reference) against every other case of the model (transformers on the
derived or shipped SafeTensors and on each GGUF, mlx_lm on MLX, llama.cpp on the other GGUF
variants).

- The committed corpus (``fixtures/tokenizer_corpus.json``) runs in full every time: whitespace
  runs before digits, numbers, indentation, CRLF, scripts, emoji, special-token syntax as text,
  long words, the empty string.
- Hypothesis explores generated text (:mod:`pytest_minerva.suites.test_tokenizer_generated`,
  which needs ``pytest-minerva[suite]``).

A tokenizer recorded in ``fixtures/tokenizer_divergences.toml`` (an engine's own bug) is a
strict xfail.
"""

from __future__ import annotations

import pytest

from pytest_minerva.equivalence.tokenizer_corpus import (
    CorpusCase,
    compare_on_corpus,
    describe_mismatches,
    load_corpus,
)
from pytest_minerva.fixtures import LoadedPair
from pytest_minerva.suites.support import mark_tokenizer_divergence


@pytest.fixture
def known_tokenizer_divergence(request: pytest.FixtureRequest, backend_pair: LoadedPair) -> None:
    """Mark the pair a strict xfail when its tokenizer is a recorded engine divergence."""
    mark_tokenizer_divergence(request, backend_pair.pair)


def pair_names(pair: LoadedPair) -> tuple[str, str]:
    return pair.pair.reference.id, pair.pair.candidate.id


@pytest.mark.minerva(pairs=["tokenizer"])
@pytest.mark.usefixtures("known_tokenizer_divergence")
def test_tokenizers_split_the_hard_cases_alike(backend_pair: LoadedPair) -> None:
    cases = load_corpus()
    mismatches = compare_on_corpus(backend_pair.reference, backend_pair.candidate, cases)
    assert not mismatches, describe_mismatches(mismatches, len(cases), *pair_names(backend_pair))


@pytest.mark.minerva(pairs=["tokenizer"])
def test_tokenizers_split_a_long_text_alike(backend_pair: LoadedPair) -> None:
    from pytest_minerva.timing.scenarios import prompt_text

    text = prompt_text("long.txt") * 3
    assert len(backend_pair.reference.tokenize(text)) > 1000
    case = CorpusCase(text, "prompts/long.txt three times")
    mismatches = compare_on_corpus(backend_pair.reference, backend_pair.candidate, [case])
    assert not mismatches, describe_mismatches(mismatches, 1, *pair_names(backend_pair))
