"""The numerics history: one pair's equivalence figures over the fixed prompts, and how the gate judges them.

The figures come from :func:`pytest_minerva.equivalence.runner.measure_numerics`, the code the
equivalence suite's comparisons use; the last test perturbs a real engine's RoPE base by 1% and
checks that the history sees the step while the suite's tolerance still accepts it.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_minerva.compare.gate import DEFAULT_NUMERICS_FACTOR, Row, judge_rows, merge_rows
from pytest_minerva.equivalence.metrics import compare_logits
from pytest_minerva.equivalence.runner import NonFiniteLogits, PairNumerics


def _reports(lengths: tuple[int, ...], seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(lengths):
        ref = rng.normal(size=(n, 50)).astype(np.float32)
        cand = ref + rng.normal(scale=0.3 * (i + 1), size=ref.shape).astype(np.float32)
        out[f"p{i}"] = compare_logits(ref, cand)
    return out


def test_the_pair_figures_pool_every_position_of_every_prompt() -> None:
    reports = _reports((5, 17, 48))
    numerics = PairNumerics.from_reports(reports)  # type: ignore[arg-type]
    kl = np.concatenate([r.kl for r in reports.values()])  # type: ignore[attr-defined]
    top1 = np.concatenate([r.top1_match for r in reports.values()])  # type: ignore[attr-defined]
    dlogit = np.concatenate([r.dlogit for r in reports.values()])  # type: ignore[attr-defined]
    assert numerics.positions == 70
    assert numerics.kl_mean == pytest.approx(float(kl.mean()), rel=1e-12)
    assert numerics.kl_max == pytest.approx(float(kl.max()), rel=1e-12)
    assert numerics.top1_agreement == pytest.approx(float(top1.mean()), rel=1e-12)
    assert numerics.max_dlogit == pytest.approx(float(dlogit.max()), rel=1e-12)
    assert set(numerics.per_prompt) == {"p0", "p1", "p2"}
    assert numerics.per_prompt["p2"]["kl_mean"] == pytest.approx(reports["p2"].kl_mean)  # type: ignore[attr-defined]
    assert list(numerics.figures()) == ["kl_mean", "kl_max", "top1_agreement", "max_dlogit"]


def test_identical_logits_give_exactly_zero() -> None:
    ref = np.random.default_rng(1).normal(size=(8, 40)).astype(np.float32)
    numerics = PairNumerics.from_reports({"p": compare_logits(ref, ref.copy())})
    assert numerics.figures() == {"kl_mean": 0.0, "kl_max": 0.0, "top1_agreement": 1.0, "max_dlogit": 0.0}


def test_non_finite_logits_name_the_prompt_instead_of_becoming_a_figure() -> None:
    ref = np.zeros((4, 10), dtype=np.float32)
    cand = ref.copy()
    cand[2, 3] = np.nan
    with pytest.raises(NonFiniteLogits, match=r"prompt 'code': non-finite logits at positions \[2\]"):
        PairNumerics.from_reports({"code": compare_logits(ref, cand)})
    with pytest.raises(ValueError, match="no prompt"):
        PairNumerics.from_reports({})


TIMING = "bench_generation.Generation.track_tpot_ms('smollm2-135m', 'llama_cpp', 'short')"
KL = "bench_numerics.Numerics.track_kl_max('smollm2-135m', 'safetensors-transformers vs gguf-llama_cpp')"
ZERO = "bench_numerics.Numerics.track_kl_mean('smollm2-135m', 'safetensors-transformers vs gguf-transformers')"


def test_numerics_rows_come_from_their_own_comparison_and_timing_rows_from_theirs() -> None:
    # asv compare at the timing factor (1.1) does not mark a 7% larger KL; at 1.05 it does.
    timing = [Row(TIMING, "12.0ms", "12.1ms", "1.01"), Row(KL, "0.0236", "0.0253", "1.07")]
    numerics = [Row(TIMING, "12.0ms", "12.1ms", "1.01"), Row(KL, "0.0236", "0.0253", "1.07", mark="+")]
    rows = merge_rows(timing, numerics, DEFAULT_NUMERICS_FACTOR)
    assert [(r.benchmark, r.mark) for r in rows] == [(TIMING, ""), (KL, "+")]
    assert rows[1].note == "numerics, factor 1.05 (changed)"
    status, kind, reason = judge_rows(rows, 1.1, DEFAULT_NUMERICS_FACTOR)
    assert (status, kind) == ("regression", "numerics")
    assert reason.startswith("1 numerics figure(s) worse beyond factor 1.05 (or no longer 0): bench_numerics")


def test_a_numerics_change_within_its_factor_does_not_fail_even_where_asv_called_it_worse() -> None:
    # A user who sets --numerics-factor 1.5 accepts a 20% larger KL that asv's 1.1 marked "+".
    timing = [Row(TIMING, "12.0ms", "12.1ms", "1.01"), Row(KL, "0.0236", "0.0283", "1.20", mark="+")]
    numerics = [Row(TIMING, "12.0ms", "12.1ms", "1.01"), Row(KL, "0.0236", "0.0283", "1.20")]
    rows = merge_rows(timing, numerics, 1.5)
    assert judge_rows(rows, 1.1, 1.5)[:2] == ("ok", "no-regression")


def test_a_slowdown_and_a_numerics_change_are_both_named() -> None:
    rows = [Row(TIMING, "12ms", "20ms", "1.67", mark="+"), Row(ZERO, "0", "1e-09", "n/a", mark="+")]
    status, kind, reason = judge_rows(rows, 1.1, 1.05)
    assert (status, kind) == ("regression", "regression")
    assert "1 benchmark(s) slower beyond factor 1.1" in reason and "(or no longer 0): " + ZERO in reason


def test_a_newly_failing_benchmark_is_an_error_and_a_closer_pair_an_improvement() -> None:
    assert judge_rows([Row(KL, "0.02", "failed", "n/a", mark="!")], 1.1, 1.05)[:2] == ("error", "failed-benchmark")
    assert judge_rows([Row(KL, "0.02", "0.01", "0.50", mark="-")], 1.1, 1.05)[:2] == ("ok", "improved")


# The Done-means of the numerics history, in process: a real engine whose RoPE base is off by 1%.

ROPE_SCALE = 1.01


@pytest.fixture(scope="module")
def rope_step() -> dict[str, object]:
    """transformers (float32 SafeTensors, the reference) against llama.cpp on SmolLM2's Q4_1 GGUF,
    measured twice as it is, then with llama.cpp's RoPE base (``rope_freq_base``) 1% above the
    model's: the figures, and each prompt's report for the perturbed engine."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    import llama_cpp

    from pytest_minerva.derive.gguf_header import read_gguf_header
    from pytest_minerva.equivalence import runner
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session

    settings = Settings(models=["smollm2-135m"], backends=["transformers", "llama_cpp"], threads=1, isolate=False)
    session = build_session(settings)
    try:
        pair = next(p for p in session.pairs() if p.candidate.backend and p.candidate.backend.name == "llama_cpp")
        skip = session.check_runnable(pair.reference) or session.check_runnable(pair.candidate)
        if skip:
            pytest.skip(skip)
        artifact = session.resolve(pair.candidate)
        header = read_gguf_header(artifact.path)
        theta = float(header.fields.get(header.key("rope.freq_base"), 10000.0))
        reference = session.backend(pair.reference)
        options = session.load_options("cpu")
        measured = []
        for _ in range(2):
            candidate = session.build_backend(pair.candidate, artifact, options)
            try:
                measured.append(runner.measure_numerics(reference, candidate))
            finally:
                candidate.close()
        original = llama_cpp.Llama.__init__

        def off_by_one_percent(self: object, *args: object, **kwargs: object) -> None:
            kwargs["rope_freq_base"] = theta * ROPE_SCALE
            original(self, *args, **kwargs)  # type: ignore[arg-type]

        llama_cpp.Llama.__init__ = off_by_one_percent  # type: ignore[method-assign]
        try:
            perturbed = session.build_backend(pair.candidate, artifact, options)
        finally:
            llama_cpp.Llama.__init__ = original  # type: ignore[method-assign]
        try:
            stepped = runner.measure_numerics(reference, perturbed)
            reports = {p.name: runner.compare(reference, perturbed, p) for p in runner.prompts(reference)}
        finally:
            perturbed.close()
        profile = runner.profile_for(pair.reference, pair.candidate, True, settings.tolerances)
        return {"before": measured, "after": stepped, "reports": reports, "profile": profile, "theta": theta}
    finally:
        session.close()


def test_the_figures_of_an_unchanged_engine_repeat_exactly(rope_step: dict[str, object]) -> None:
    first, second = rope_step["before"]  # type: ignore[misc]
    assert first.figures() == second.figures()  # no noise: a history step is the code's doing


def test_a_rope_base_off_by_one_percent_is_a_step_in_the_history(rope_step: dict[str, object]) -> None:
    before = rope_step["before"][0].figures()  # type: ignore[index]
    after = rope_step["after"].figures()  # type: ignore[attr-defined]
    assert before != after
    # asv's rule at the gate's numerics factor: a lower-is-better figure is worse when after > before * factor.
    worse = [
        name for name in ("kl_mean", "kl_max", "max_dlogit") if after[name] > before[name] * DEFAULT_NUMERICS_FACTOR
    ]
    if 1 - after["top1_agreement"] > (1 - before["top1_agreement"]) * DEFAULT_NUMERICS_FACTOR:
        worse.append("top1_agreement")
    assert worse, f"theta {rope_step['theta']} x {ROPE_SCALE}: {before} -> {after}, no figure worse by 5%"


def test_the_equivalence_suite_still_accepts_the_perturbed_engine(rope_step: dict[str, object]) -> None:
    # What test_logits_agree checks, prompt by prompt: the tolerance lets the 1% error through.
    profile = rope_step["profile"]
    for name, report in rope_step["reports"].items():  # type: ignore[attr-defined]
        assert profile.check(report) == [], name  # type: ignore[attr-defined]


def test_asv_continuous_output_with_only_a_numerics_row_worse_is_a_numerics_regression() -> None:
    from pytest_minerva.compare.gate import classify_asv

    output = f"| + | 0.0236 | 0.0270 | 1.14 | {KL} |\nPERFORMANCE DECREASED.\n"
    status, kind, reason = classify_asv(1, output, 1.1)
    assert (status, kind) == ("regression", "numerics")
    assert reason == f"1 numerics figure(s) worse beyond factor 1.1 (or no longer 0): {KL}"
