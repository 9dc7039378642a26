"""Every backend gives the same token ids for the same text.

The logits comparison feeds both sides the reference's ids, so it cannot see a tokenizer
difference; this test does, on generated text: unicode, whitespace runs, the empty string and
long inputs.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_minerva.fixtures import LoadedPair

TEXT = st.one_of(
    st.just(""),
    st.text(max_size=80),
    st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "Zs"]), max_size=120),
    st.text(alphabet=" \t\n", min_size=1, max_size=12),
    st.lists(st.sampled_from(["the", " cat", "\n", "  ", "日本", "é", "🙂", "123", "def", "(", ")"]), max_size=60).map(
        "".join
    ),
)


@pytest.mark.minerva(pairs=["cross-backend"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_backends_tokenize_alike(backend_pair: LoadedPair, text: str) -> None:
    ref, cand = backend_pair.reference, backend_pair.candidate
    assert ref.tokenize(text) == cand.tokenize(text)


@pytest.mark.minerva(pairs=["cross-backend"])
def test_backends_tokenize_a_long_text_alike(backend_pair: LoadedPair) -> None:
    from pytest_minerva.timing.scenarios import prompt_text

    text = prompt_text("long.txt") * 3
    ref, cand = backend_pair.reference, backend_pair.candidate
    ref_ids, cand_ids = ref.tokenize(text), cand.tokenize(text)
    assert len(ref_ids) > 1000
    assert ref_ids == cand_ids
