"""Every tokenizer splits Hypothesis-generated text exactly as llama.cpp does on the model's GGUF.

Hypothesis is an optional dependency of the shipped suite (``pip install 'pytest-minerva[suite]'``):
without it this module skips, and the committed corpus of :mod:`.test_tokenizer` still runs.
Generation is derandomized under the default ``ci`` profile, and every difference found so far
is an explicit ``@example``.
"""

from __future__ import annotations

import pytest

pytest.importorskip("hypothesis", reason="generated-text tokenizer checks need pytest-minerva[suite] (Hypothesis)")

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_minerva.equivalence.tokenizer_corpus import CorpusCase, compare_on_corpus, describe_mismatches
from pytest_minerva.fixtures import LoadedPair
from pytest_minerva.suites.support import mark_tokenizer_divergence
from pytest_minerva.suites.test_tokenizer import pair_names

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
    assert not mismatches, describe_mismatches(mismatches, 1, *pair_names(backend_pair))
