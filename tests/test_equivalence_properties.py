"""Properties every equivalence metric must keep, whatever the logits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minerva.equivalence import (
    EquivalenceReport,
    compare_logits,
    greedy_agreement,
    kl_divergence,
    log_softmax,
    topk_overlap,
)

# Multiples of 1/8 in [-30, 30] plus integer shifts stay exact in float32 and float64, so
# shifting a row cannot create or break ties: ranking metrics must then be exactly unchanged.
_EIGHTHS = st.integers(min_value=-240, max_value=240).map(lambda i: i / 8)


@st.composite
def logits_pairs(draw: st.DrawFn, *, masked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two (positions, vocab) float32 arrays of equal shape; ``masked`` adds shared -inf tokens."""
    positions = draw(st.integers(min_value=1, max_value=5))
    vocab = draw(st.integers(min_value=2, max_value=24))
    cells = st.lists(_EIGHTHS, min_size=positions * vocab, max_size=positions * vocab)
    ref = np.array(draw(cells), dtype=np.float32).reshape(positions, vocab)
    cand = np.array(draw(cells), dtype=np.float32).reshape(positions, vocab)
    if masked:
        mask = np.array(draw(st.lists(st.booleans(), min_size=vocab, max_size=vocab)))
        mask[draw(st.integers(min_value=0, max_value=vocab - 1))] = False
        ref[:, mask] = -np.inf
        cand[:, mask] = -np.inf
    return ref, cand


def _shifts(data: st.DataObject, positions: int) -> np.ndarray:
    values = data.draw(st.lists(st.integers(-500, 500), min_size=positions, max_size=positions))
    return np.array(values, dtype=np.float32)[:, None]


def _summary(report: EquivalenceReport) -> dict[str, float]:
    """The summary numbers; positions of maxima are left out (near-ties may move them)."""
    values = {
        "kl_mean": report.kl_mean,
        "kl_p99": report.kl_p99,
        "kl_max": report.kl_max,
        "max_dlogit": report.max_dlogit,
        "nmse": report.nmse,
        "excess_vocab_mass": report.excess_vocab_mass,
    }
    if report.dp_rms is not None:
        values["dp_rms"] = report.dp_rms
    return values


@given(logits_pairs(masked=True))
def test_kl_is_non_negative_and_zero_against_itself(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cand = pair
    kl = kl_divergence(ref, cand)
    assert np.all(kl >= 0)
    assert np.all(np.isfinite(kl))
    assert np.all(kl_divergence(ref, ref) == 0.0)
    assert np.all(kl_divergence(cand, cand) == 0.0)


@given(logits_pairs(masked=True))
def test_log_softmax_rows_are_distributions(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, _ = pair
    probs = np.exp(log_softmax(ref))
    assert probs.sum(axis=1) == pytest.approx(np.ones(ref.shape[0]), rel=1e-12)


@given(logits_pairs(masked=True), st.data())
def test_every_metric_is_invariant_under_per_row_shifts(
    pair: tuple[np.ndarray, np.ndarray], data: st.DataObject
) -> None:
    ref, cand = pair
    tokens = data.draw(st.lists(st.integers(0, ref.shape[1] - 1), min_size=ref.shape[0], max_size=ref.shape[0]))
    base = compare_logits(ref, cand, tokens=tokens, topk=(1, 3, 5))
    for shifted_ref, shifted_cand in (
        (ref + _shifts(data, ref.shape[0]), cand),
        (ref, cand + _shifts(data, cand.shape[0])),
    ):
        moved = compare_logits(shifted_ref, shifted_cand, tokens=tokens, topk=(1, 3, 5))
        assert moved.top1_agreement == base.top1_agreement
        assert moved.topk_overlap == base.topk_overlap
        assert np.array_equal(moved.reference_top_ids, base.reference_top_ids)
        assert np.array_equal(moved.candidate_top_ids, base.candidate_top_ids)
        assert _summary(moved) == pytest.approx(_summary(base), rel=1e-9, abs=1e-9)


@given(logits_pairs(), st.integers(min_value=1, max_value=30))
def test_topk_overlap_is_a_symmetric_rate(pair: tuple[np.ndarray, np.ndarray], k: int) -> None:
    ref, cand = pair
    forward = topk_overlap(ref, cand, k)
    assert 0.0 <= forward <= 1.0
    assert forward == topk_overlap(cand, ref, k)
    assert topk_overlap(ref, ref, k) == 1.0


@given(logits_pairs(masked=True))
def test_identical_inputs_agree_perfectly(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, _ = pair
    report = compare_logits(ref, ref.copy())
    assert report.top1_agreement == 1.0
    assert report.topk_overlap == {5: 1.0, 10: 1.0}
    assert report.kl_mean == report.kl_max == 0.0
    assert report.max_dlogit == 0.0
    assert report.nmse == 0.0


@given(logits_pairs())
def test_kl_summary_is_ordered(pair: tuple[np.ndarray, np.ndarray]) -> None:
    report = compare_logits(*pair)
    assert report.kl.min() <= report.kl_mean <= report.kl_max
    assert report.kl.min() <= report.kl_p99 <= report.kl_max
    assert report.kl[report.kl_max_position] == report.kl_max


_TOKEN_SEQS = st.lists(st.integers(min_value=0, max_value=3), max_size=12)


@given(_TOKEN_SEQS, _TOKEN_SEQS)
def test_greedy_prefix_properties(a: list[int], b: list[int]) -> None:
    result = greedy_agreement(a, b)
    assert result.prefix_length <= min(len(a), len(b))
    assert a[: result.prefix_length] == b[: result.prefix_length]
    assert greedy_agreement(b, a).prefix_length == result.prefix_length
    assert greedy_agreement(a, a).prefix_length == len(a)
    assert greedy_agreement(a, a).first_divergence is None
    if result.first_divergence is None:
        assert a == b
    else:
        at = result.first_divergence
        assert at == result.prefix_length
        assert at >= min(len(a), len(b)) or a[at] != b[at]
    assert greedy_agreement(a, a + b).prefix_length == len(a)
