"""Every tokenizer of every model splits text exactly as llama.cpp does on the model's GGUF.

The logits comparison feeds both sides the reference's ids, so it cannot see a tokenizer
difference; these tests do. Each runs on the ``tokenizer`` pairs: llama.cpp on the model's
primary GGUF (the reference) against every other case of the model (transformers on the
derived or shipped SafeTensors and on each GGUF, mlx_lm on MLX, llama.cpp on the other GGUF
variants).

- The committed corpus (``fixtures/tokenizer_corpus.json``) runs in full every time: whitespace
  runs before digits, numbers, indentation, CRLF, scripts, emoji, special-token syntax as text,
  long words, the empty string.
- Hypothesis explores generated text; it is derandomized under the default ``ci`` profile, and
  every difference found so far is an explicit ``@example``.

A tokenizer recorded in ``fixtures/tokenizer_divergences.toml`` (an engine's own bug) is a
strict xfail.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_minerva.equivalence.tokenizer_corpus import (
    CorpusCase,
    compare_on_corpus,
    describe_mismatches,
    load_corpus,
)
from pytest_minerva.fixtures import LoadedPair
from suites.conftest import mark_tokenizer_divergence

TEXT = st.one_of(
    st.just(""),
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), max_size=120),
    st.text(alphabet=" \t\n", min_size=1, max_size=12),
    st.lists(st.sampled_from(["the", " cat", "\n", "  ", "日本", "é", "🙂", "123", "def", "(", ")"]), max_size=60).map(
        "".join
    ),
    st.lists(st.sampled_from([" ", "  ", "\t", "\n", "\r\n", "0", "7", "42", "x", "=", "▁", "</s>"]), max_size=20).map(
        "".join
    ),
)


@pytest.fixture
def known_tokenizer_divergence(request: pytest.FixtureRequest, backend_pair: LoadedPair) -> None:
    """Mark the pair a strict xfail when its tokenizer is a recorded engine divergence."""
    mark_tokenizer_divergence(request, backend_pair.pair)


def _names(pair: LoadedPair) -> tuple[str, str]:
    return pair.pair.reference.id, pair.pair.candidate.id


@pytest.mark.minerva(pairs=["tokenizer"])
@pytest.mark.usefixtures("known_tokenizer_divergence")
def test_tokenizers_split_the_hard_cases_alike(backend_pair: LoadedPair) -> None:
    cases = load_corpus()
    mismatches = compare_on_corpus(backend_pair.reference, backend_pair.candidate, cases)
    assert not mismatches, describe_mismatches(mismatches, len(cases), *_names(backend_pair))


@pytest.mark.minerva(pairs=["tokenizer"])
@pytest.mark.usefixtures("known_tokenizer_divergence")
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
# Differences found so far (issue 12 and the corpus runs); each stays an example for good.
@example(text="  0")
@example(text="a  1")
@example(text="x 12")
@example(text="   ")
@example(text="\n  3")
@example(text=" \r\n 1")
@example(text="    if a:\n        b()\n")
@example(text=" " * 40)
@example(text="</s>")
@example(text="\u2581\u2581 x")
def test_tokenizers_split_generated_text_alike(backend_pair: LoadedPair, text: str) -> None:
    mismatches = compare_on_corpus(backend_pair.reference, backend_pair.candidate, [CorpusCase(text, "generated")])
    assert not mismatches, describe_mismatches(mismatches, 1, *_names(backend_pair))


@pytest.mark.minerva(pairs=["tokenizer"])
def test_tokenizers_split_a_long_text_alike(backend_pair: LoadedPair) -> None:
    from pytest_minerva.timing.scenarios import prompt_text

    text = prompt_text("long.txt") * 3
    assert len(backend_pair.reference.tokenize(text)) > 1000
    case = CorpusCase(text, "prompts/long.txt three times")
    mismatches = compare_on_corpus(backend_pair.reference, backend_pair.candidate, [case])
    assert not mismatches, describe_mismatches(mismatches, 1, *_names(backend_pair))
