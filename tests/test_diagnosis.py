"""Failure messages: a failed equivalence check must explain itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from pytest_minerva.equivalence import (
    DerivationRule,
    EquivalenceError,
    Measurement,
    Profile,
    ProfileNotCalibrated,
    assert_equivalent,
    compare_logits,
    derive_bounds,
    format_diagnosis,
)

WORDS = ["<s>", " the", " cat", " sat", " on", " mat", " dog", " ran", ".", " a"]
PROMPT = [0, 1, 2, 3, 4, 1, 5]  # "<s> the cat sat on the mat"
SOURCE = Path("/repo/fixtures/tolerances.toml")


def detokenize(ids: Sequence[int]) -> str:
    return "".join(WORDS[i] for i in ids)


def confident(next_ids: Sequence[int], vocab: int = len(WORDS), logit: float = 8.0) -> np.ndarray:
    """Logits that put most of the mass on one token per position."""
    out = np.zeros((len(next_ids), vocab), dtype=np.float32)
    out[np.arange(len(next_ids)), list(next_ids)] = logit
    return out


def reference_logits() -> np.ndarray:
    # Each row predicts the prompt's actual next token; the last row predicts ".".
    return confident([*PROMPT[1:], 8])


def profile(metrics: Sequence[str] = ("kl_mean", "kl_max", "top1_agreement", "top5_overlap")) -> Profile:
    runs = tuple(
        Measurement(
            model="smollm2-135m",
            reference="transformers 5.23.0 f32",
            candidate="llama-cpp-python 0.3.36 Q4_1",
            prompt_set=name,
            positions=64,
            date="2025-11-22T21:00:00Z",
            command=f"minerva calibrate same-weights-q4_1 --prompts {name}",
            values=values,
        )
        for name, values in (
            ("short", {"kl_mean": 0.004, "kl_max": 0.03, "top1_agreement": 1.0, "top5_overlap": 0.95,
                       "greedy_prefix": 32}),
            ("story", {"kl_mean": 0.006, "kl_max": 0.02, "top1_agreement": 0.9, "top5_overlap": 0.97,
                       "greedy_prefix": 20}),
        )
    )  # fmt: skip
    rule = DerivationRule(factor=2.0)
    return Profile(
        name="same-weights-q4_1",
        reference_precision="f32",
        candidate_precision="q4_1",
        same_weights=True,
        metrics=tuple(metrics),
        rule=rule,
        measurements=runs,
        bounds=derive_bounds(runs, rule, metrics),
        source=SOURCE,
    )


def two_wrong() -> np.ndarray:
    """The reference, except that positions 2 and 3 (worst) predict something else."""
    cand = reference_logits()
    cand[2] = confident([7])[0]
    cand[3] = confident([6], logit=10.0)[0]  # after "<s> the cat sat" it says " dog", not " on"
    return cand


def test_message_shows_metric_bound_position_context_and_both_top5() -> None:
    ref = reference_logits()
    cand = two_wrong()
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(
            ref, cand, profile=profile(), tokens=PROMPT, detokenize=detokenize,
            reference_name="transformers f32", candidate_name="llama.cpp Q4_1",
        )  # fmt: skip
    message = str(failed.value)
    report = failed.value.report
    assert isinstance(failed.value, AssertionError)
    assert message.startswith(
        "llama.cpp Q4_1 does not match transformers f32 under profile 'same-weights-q4_1': "
        "3 of 4 bound(s) violated over 7 position(s)"
    )
    assert f"  kl_mean = {report.kl_mean:.6g} (bound: at most 0.012); worst at position 3" in message
    assert f"  kl_max = {report.kl_max:.6g} (bound: at most 0.06); worst at position 3" in message
    assert f"  top1_agreement = {5 / 7:.6g} (bound: at least 0.8); worst at position 3" in message
    assert "top5_overlap" not in message
    assert "worst position for kl_mean: 3 of 7 (the prediction after token 3)" in message
    assert "  text up to here: '<s> the cat sat'" in message
    assert "  actual next token: ' on' (id 4), then ' the mat'" in message
    top, rest = (math.exp(8) / (math.exp(8) + 9), 1 / (math.exp(8) + 9))
    assert (
        f"  reference top-5: ' on' (id 4) p={top:.4g} | '<s>' (id 0) p={rest:.4g} | "
        f"' the' (id 1) p={rest:.4g} | ' cat' (id 2) p={rest:.4g} | ' sat' (id 3) p={rest:.4g}"
    ) in message
    top, rest = (math.exp(10) / (math.exp(10) + 9), 1 / (math.exp(10) + 9))
    assert f"  candidate top-5: ' dog' (id 6) p={top:.4g} | '<s>' (id 0) p={rest:.4g}" in message
    assert "top-1 differs, top-5 overlap 4/5" in message


def test_message_says_where_each_bound_came_from() -> None:
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(reference_logits(), two_wrong(), profile=profile(("kl_mean", "top1_agreement")))
    message = str(failed.value)
    assert f"bounds come from profile 'same-weights-q4_1' in {SOURCE}: bound = worst measured x 2" in message
    assert "  kl_mean bound 0.012 = 0.006 (worst of 2 run(s)) x 2, worst in run 2" in message
    assert "  top1_agreement bound 0.8 = 1 - (1 - 0.9 (worst of 2 run(s))) x 2, worst in run 2" in message
    assert (
        "  run 2: smollm2-135m: transformers 5.23.0 f32 vs llama-cpp-python 0.3.36 Q4_1, prompts 'story', "
        "2025-11-22T21:00:00Z; 64 positions; command: minerva calibrate same-weights-q4_1 --prompts story"
    ) in message
    assert "run 1:" not in message  # only the runs that set a violated bound


def test_without_tokens_or_detokenize_the_message_says_what_is_missing() -> None:
    ref = reference_logits()
    cand = confident([6] * 7)
    report = compare_logits(ref, cand)
    violations = profile().check(report)
    bare = format_diagnosis(report, violations)
    assert "text: unknown (pass tokens= and detokenize= to see the prompt around this position)" in bare
    assert "reference top-5: id 1 p=" in bare
    with_ids = format_diagnosis(report, violations, tokens=PROMPT)
    assert "  ids up to here: [0]" in with_ids or "  ids up to here: [0, 1" in with_ids
    assert "  actual next token: id " in with_ids


def test_a_failing_detokenize_does_not_hide_the_diagnosis() -> None:
    ref = reference_logits()
    cand = ref.copy()
    cand[2] = confident([7])[0]

    def broken(ids: Sequence[int]) -> str:
        raise KeyError("no vocab loaded")

    report = compare_logits(ref, cand, tokens=PROMPT)
    message = format_diagnosis(report, profile().check(report), tokens=PROMPT, detokenize=broken)
    assert "  ids up to here: [0, 1, 2]" in message
    assert "  actual next token: id 3, then ids [4, 1, 5]" in message
    assert "note: detokenize failed (KeyError: 'no vocab loaded'); showing ids" in message


def test_long_context_is_cut_with_an_ellipsis_and_last_position_has_no_next_token() -> None:
    tokens = [1, 2, 3, 4] * 10
    ref = confident([*tokens[1:], 8])
    cand = ref.copy()
    cand[-1] = confident([6])[0]
    report = compare_logits(ref, cand, tokens=tokens)
    message = format_diagnosis(report, profile().check(report), tokens=tokens, detokenize=detokenize, context_before=5)
    assert "worst position for kl_mean: 39 of 40" in message
    assert "  text up to here: ...' on the cat sat on'" in message
    assert "  (last position: no next token in the input)" in message


def test_non_distribution_rows_are_named_in_the_message() -> None:
    ref = reference_logits()
    cand = ref.copy()
    cand[2, 5] = np.nan
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(ref, cand, profile=profile(), tokens=PROMPT, detokenize=detokenize)
    message = str(failed.value)
    assert "candidate logits are not a distribution (NaN/+inf or all -inf) at 1 of 7 position(s), first [2]" in message
    assert "worst position for kl_mean: 2 of 7" in message
    assert "  here the candidate logits hold NaN/+inf or only -inf: not a distribution" in message
    assert "kl_mean = inf" in message


def test_greedy_divergence_is_shown_as_text() -> None:
    ref = reference_logits()
    prof = profile(("kl_mean", "greedy_prefix"))
    assert prof.bounds["greedy_prefix"] == 10.0  # floor(20 / 2)
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(
            ref, ref, profile=prof, tokens=PROMPT, detokenize=detokenize,
            reference_generation=[1, 2, 3, 4, 1, 5], candidate_generation=[1, 2, 6, 7, 8],
        )  # fmt: skip
    message = str(failed.value)
    assert "  greedy_prefix = 2 (bound: at least 10)" in message
    assert "greedy generations agree for 2 token(s), then diverge at generated token 2" in message
    assert "  common text: ' the cat'" in message
    assert "  reference generated ' sat' (id 3), continuing ' sat on the mat'" in message
    assert "  candidate generated ' dog' (id 6), continuing ' dog ran.'" in message


def test_padded_vocab_is_mentioned() -> None:
    ref = reference_logits()
    cand = np.concatenate([ref, np.zeros((7, 6), dtype=np.float32)], axis=1)
    cand[3] = np.concatenate([confident([6])[0], np.zeros(6, dtype=np.float32)])
    report = compare_logits(ref, cand, tokens=PROMPT)
    message = format_diagnosis(report, profile().check(report))
    assert "note: vocab sizes differ (reference 10, candidate 16); compared ids 0..9" in message
    assert f"held at most {report.excess_vocab_mass:.3g} of the probability" in message


def test_assert_equivalent_returns_the_report_when_within_bounds() -> None:
    class Output:
        logits = reference_logits()

    close = reference_logits() + 5.0
    report = assert_equivalent(Output(), close, profile=profile(), tokens=PROMPT)
    assert report.kl_max < 1e-12
    assert report.top1_agreement == 1.0
    assert report.dp_rms == pytest.approx(0.0, abs=1e-12)


def test_assert_equivalent_refuses_unusable_profiles_and_unchecked_metrics() -> None:
    bare = Profile("f32-vs-f16", "f32", "f16", False, ("kl_mean",), DerivationRule(), source=SOURCE)
    ref = reference_logits()
    with pytest.raises(ProfileNotCalibrated, match=f"^{SOURCE}: profile 'f32-vs-f16' has 0 measurement"):
        assert_equivalent(ref, ref, profile=bare)
    prof = profile(("kl_mean", "greedy_prefix"))
    with pytest.raises(ValueError, match="bounds greedy_prefix, which this comparison did not compute"):
        assert_equivalent(ref, ref, profile=prof)
    assert assert_equivalent(ref, ref, profile=prof, skip=["greedy_prefix"]).kl_max == 0.0


def test_error_carries_report_and_violations() -> None:
    ref = reference_logits()
    cand = confident([6] * 7)
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(ref, cand, profile=profile(), tokens=PROMPT)
    assert [v.metric for v in failed.value.violations] == [
        "kl_mean",
        "kl_max",
        "top1_agreement",
        "top5_overlap",
    ]
    assert failed.value.report.top1_agreement == 0.0
    expected = format_diagnosis(failed.value.report, failed.value.violations, profile=profile(), tokens=PROMPT)
    assert str(failed.value) == expected


def test_tiny_vocab_shows_every_token() -> None:
    ref = np.array([[2.0, 0.0], [0.0, 2.0]])
    cand = np.array([[0.0, 2.0], [0.0, 2.0]])
    report = compare_logits(ref, cand, tokens=[0, 1])
    message = format_diagnosis(report, profile(("kl_max",)).check(report), tokens=[0, 1], detokenize=detokenize)
    p = math.exp(2) / (math.exp(2) + 1)
    assert f"  reference top-5: '<s>' (id 0) p={p:.4g} | ' the' (id 1) p={1 - p:.4g}" in message
    assert "top-5 overlap 2/2, top-10 overlap 2/2" in message
