"""``minerva compare``: the statistics, the ABBA schedule, results files, exit codes, and one real run."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from command_line import Ran, run_cli
from hypothesis import given
from hypothesis import strategies as st

from pytest_minerva.compare import (
    Criteria,
    Round,
    abba_orders,
    bench_command,
    compare_paired,
    compare_rounds,
    compare_unpaired,
    interleave,
    interpreter_of,
    judge,
    round_figures,
    run_samples,
    worktrees,
)
from pytest_minerva.errors import MinervaError
from pytest_minerva.stats.rank import mann_whitney_u, min_paired_rounds, unpaired_can_conclude, wilcoxon_signed_rank
from pytest_minerva.storage import results
from pytest_minerva.timing import scenarios
from pytest_minerva.timing.harness import RunRecord, ScenarioResult

REPO = Path(__file__).resolve().parent.parent
TABLE_HEADER = "| Benchmark | Figure | BASE median | HEAD median | HEAD/BASE | 95% CI | p | Verdict |"


# Wilcoxon signed-rank, exact: W+ of ranks 1..n; every sign pattern has probability 2**-n.


def test_wilcoxon_all_positive_is_twice_the_extreme_tail() -> None:
    assert wilcoxon_signed_rank([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 64)
    assert wilcoxon_signed_rank([-1, -2, -3, -4, -5, -6]) == pytest.approx(2 / 64)


def test_wilcoxon_mixed_signs_by_hand() -> None:
    # W+ = 1 + 3 + 4 + 5 = 13; P(W+ >= 13) = P(W+ <= 2) = 3/32 (the empty set, {1}, {2}).
    assert wilcoxon_signed_rank([1, -2, 3, 4, 5]) == pytest.approx(6 / 32)


def test_wilcoxon_drops_zeros_and_is_one_without_differences() -> None:
    assert wilcoxon_signed_rank([0, 0, 1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert wilcoxon_signed_rank([0.0, 0.0]) == 1.0
    assert wilcoxon_signed_rank([]) == 1.0


def test_wilcoxon_matches_scipy_reference_values() -> None:
    # From scipy 1.17.1: stats.wilcoxon(d, zero_method="wilcox", correction=True, method="approx" / "exact").
    assert wilcoxon_signed_rank([1, 1, -2, 3, 3, 0, 4, 5, -1, 6]) == pytest.approx(0.056925140231394014, rel=1e-12)
    assert wilcoxon_signed_rank([0.5, -0.25, 1, 2, -3, 4, 5.5, 6, 7, -8, 9, 10]) == pytest.approx(
        0.0771484375, rel=1e-12
    )


@given(st.lists(st.floats(-100, 100, allow_nan=False), min_size=1, max_size=60), st.floats(0.01, 100))
def test_wilcoxon_is_a_probability_symmetric_in_sign_and_scale_free(diffs: list[float], scale: float) -> None:
    p = wilcoxon_signed_rank(diffs)
    assert 0.0 <= p <= 1.0
    assert wilcoxon_signed_rank([-d for d in diffs]) == pytest.approx(p, abs=1e-12)
    if all(d == 0 or abs(d) * scale > 1e-300 for d in diffs) and len({abs(d) for d in diffs}) == len(
        {abs(d * scale) for d in diffs}
    ):
        assert wilcoxon_signed_rank([d * scale for d in diffs]) == pytest.approx(p, abs=1e-12)


def test_mann_whitney_exact_by_hand() -> None:
    # Complete separation: one ordering in C(6, 3) = 20 (or C(8, 4) = 70) per tail.
    assert mann_whitney_u([1, 2, 3], [4, 5, 6]) == pytest.approx(2 / 20)
    assert mann_whitney_u([5, 6, 7, 8], [1, 2, 3, 4]) == pytest.approx(2 / 70)


def test_mann_whitney_matches_scipy_reference_values() -> None:
    # From scipy 1.17.1: stats.mannwhitneyu(head, base, use_continuity=True, method="asymptotic" / "exact").
    assert mann_whitney_u([1, 2, 2, 3, 5, 6], [5, 6, 6, 7, 8, 9]) == pytest.approx(0.015202415878109048, rel=1e-12)
    assert mann_whitney_u([1.0, 1.9, 2.2, 3.0, 3.3, 4.1, 4.4], [2.5, 3.1, 4.7, 5.2, 6.6]) == pytest.approx(
        0.10606060606060606, rel=1e-12
    )


def test_mann_whitney_needs_both_sides() -> None:
    with pytest.raises(MinervaError, match="needs samples on both sides, got 0 and 2"):
        mann_whitney_u([], [1.0, 2.0])


def test_fewest_rounds_that_can_confirm() -> None:
    assert min_paired_rounds(0.95) == 6  # 2/2**5 = 0.0625 is not below 0.05; 2/2**6 is
    assert min_paired_rounds(0.99) == 8
    assert min_paired_rounds(0.90) == 5
    assert not unpaired_can_conclude(3, 3, 0.95)  # 2/C(6, 3) = 0.1
    assert unpaired_can_conclude(4, 4, 0.95)
    assert not unpaired_can_conclude(0, 5, 0.95)


@pytest.mark.parametrize(
    ("low", "high", "p", "worse", "expected"),
    [
        (1.021, 1.05, 0.01, True, "slower"),
        (1.021, 1.05, 0.2, True, "inconclusive"),  # the interval alone does not confirm it
        (1.01, 1.03, 0.01, True, "inconclusive"),  # straddles the threshold
        (1.005, 1.015, 0.01, True, "no change"),  # real but smaller than the threshold
        (0.99, 1.01, 0.9, True, "no change"),
        (0.90, 0.95, 0.01, True, "faster"),
        (0.90, 0.95, 0.01, False, "slower"),  # a rate that fell
        (1.05, 1.10, 0.01, False, "faster"),
        (0.90, 1.10, 0.5, True, "inconclusive"),
    ],
)
def test_judge(low: float, high: float, p: float, worse: bool, expected: str) -> None:
    assert judge(low, high, p, higher_is_worse=worse, criteria=Criteria(threshold=0.02)) == expected


BASE = [100.0, 103.0, 98.0, 101.0, 99.5, 100.5, 104.0, 97.0, 102.0, 100.2]


def test_exact_ten_percent_slowdown_is_slower_with_a_point_interval() -> None:
    result = compare_paired(BASE, [b * 1.1 for b in BASE], criteria=Criteria(), benchmark="b", figure="tpt_ms")
    assert result.ratio == pytest.approx(1.1)
    assert (result.ci_low, result.ci_high) == (pytest.approx(1.1), pytest.approx(1.1))
    assert result.p_value < 0.01
    assert result.verdict == "slower"
    assert result.slowdown == pytest.approx(1.1)
    assert result.base_median == pytest.approx(100.35)
    assert result.as_dict()["test"] == "wilcoxon-signed-rank"


def test_slowdown_seen_in_every_round_has_the_exact_extreme_p_value() -> None:
    head = [b * (1.1 + 0.001 * i) for i, b in enumerate(BASE)]
    result = compare_paired(BASE, head, criteria=Criteria(), figure="tpt_ms")
    assert result.p_value == pytest.approx(2 / 2**10)
    assert 1.1 <= result.ci_low <= result.ratio <= result.ci_high <= 1.11
    assert result.verdict == "slower"


def test_noisy_five_percent_slowdown_interval_brackets_it() -> None:
    noise = [1.01, 0.99, 1.005, 0.995, 1.0, 1.008, 0.992, 1.003, 0.997, 1.0]
    head = [b * 1.05 * e for b, e in zip(BASE, noise, strict=True)]
    result = compare_paired(BASE, head, criteria=Criteria(), figure="total_ms")
    assert result.ci_low <= result.ratio <= result.ci_high
    assert result.ci_low >= 1.05 * 0.99 and result.ci_high <= 1.05 * 1.01
    assert result.verdict == "slower"


def test_a_against_a_within_noise_is_no_change() -> None:
    noise = [1.004, 0.996, 1.002, 0.998, 1.0, 1.003, 0.997, 1.001, 0.999, 1.0]
    result = compare_paired(BASE, [b * e for b, e in zip(BASE, noise, strict=True)], criteria=Criteria())
    assert 0.996 <= result.ci_low <= result.ci_high <= 1.004
    assert result.verdict == "no change"


def test_large_noise_and_few_rounds_is_inconclusive() -> None:
    noise = [1.3, 0.8, 1.25, 0.85, 1.1, 0.95]
    result = compare_paired(BASE[:6], [b * e for b, e in zip(BASE, noise, strict=False)], criteria=Criteria())
    assert result.verdict == "inconclusive"


def test_directions_of_rates_and_times() -> None:
    slower_rate = compare_paired(BASE, [b / 1.1 for b in BASE], criteria=Criteria(), figure="decode_tps")
    assert (slower_rate.ratio, slower_rate.verdict) == (pytest.approx(1 / 1.1), "slower")
    assert slower_rate.slowdown == pytest.approx(1.1)
    faster_time = compare_paired(BASE, [b * 0.9 for b in BASE], criteria=Criteria(), figure="ttft_ms")
    assert faster_time.verdict == "faster"


def test_geomean_statistic_is_the_geometric_mean_of_ratios() -> None:
    head = [b * r for b, r in zip(BASE, [1.1, 1.2, 1.1, 1.2, 1.1, 1.2, 1.1, 1.2, 1.1, 1.2], strict=True)]
    result = compare_paired(BASE, head, criteria=Criteria(statistic="geomean"))
    assert result.ratio == pytest.approx(math.sqrt(1.1 * 1.2))
    assert 1.1 <= result.ci_low <= result.ci_high <= 1.2


def test_bootstrap_is_seeded() -> None:
    head = [b * e for b, e in zip(BASE, [1.03, 0.98, 1.06, 1.01, 0.97, 1.04, 1.0, 1.02, 0.99, 1.05], strict=True)]
    first = compare_paired(BASE, head, criteria=Criteria(seed=7))
    again = compare_paired(BASE, head, criteria=Criteria(seed=7))
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)


def test_unpaired_comparison_of_independent_runs() -> None:
    head = [b * 1.2 for b in BASE[:6]]
    result = compare_unpaired(BASE[:6], head, criteria=Criteria(), figure="tpt_ms")
    assert result.ratio == pytest.approx(1.2)
    assert result.p_value == pytest.approx(2 / math.comb(12, 6))
    assert result.verdict == "slower"
    assert result.as_dict()["test"] == "mann-whitney-u"


@pytest.mark.parametrize(
    ("base", "head", "message"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0], "b tpt_ms: a paired comparison needs one HEAD value per BASE value, got 3 and 2"),
        ([1.0, 0.0], [1.0, 2.0], "b tpt_ms: BASE: every value must be a positive, finite number, got 0.0"),
        ([1.0, 2.0], [1.0, math.nan], "b tpt_ms: HEAD: every value must be a positive, finite number, got nan"),
        ([1.0], [1.0], "b tpt_ms: BASE: needs at least 2 values, got 1"),
        ([1.0, True], [1.0, 2.0], "b tpt_ms: BASE: expected numbers, got True"),
    ],
)
def test_bad_samples_give_one_line_errors(base: list[float], head: list[float], message: str) -> None:
    with pytest.raises(MinervaError) as info:
        compare_paired(base, head, criteria=Criteria(), benchmark="b", figure="tpt_ms")
    assert str(info.value) == message


def test_bad_criteria_and_figures() -> None:
    with pytest.raises(MinervaError, match=r"confidence must be between 0 and 1, got 1\.5"):
        Criteria(confidence=1.5)
    with pytest.raises(MinervaError, match="statistic must be one of median, geomean, got 'mean'"):
        Criteria(statistic="mean")
    with pytest.raises(MinervaError, match="unknown figure 'speed'"):
        compare_paired([1.0, 2.0], [1.0, 2.0], criteria=Criteria(), figure="speed")


def test_abba_blocks_mirror_each_other_and_follow_the_seed() -> None:
    orders = abba_orders(20, seed=3)
    assert len(orders) == 20
    for first, second in zip(orders[::2], orders[1::2], strict=True):
        assert second == (first[1], first[0])
    assert orders.count(("base", "head")) == 10
    assert abba_orders(20, seed=3) == orders
    block_starts = {tuple(abba_orders(2, seed)[0]) for seed in range(20)}
    assert block_starts == {("base", "head"), ("head", "base")}
    assert len(abba_orders(7, seed=3)) == 7


def test_interleave_runs_each_side_once_per_round_in_schedule_order() -> None:
    calls: list[tuple[str, int]] = []

    def measure(side: str, index: int) -> dict[str, dict[str, float]]:
        calls.append((side, index))
        return {"bench": {"total_ms": 100.0 + index + (5 if side == "head" else 0)}}

    rounds = interleave(measure, 6, seed=1)
    assert [(r.index, r.order) for r in rounds] == list(enumerate(abba_orders(6, 1), start=1))
    assert calls == [(side, r.index) for r in rounds for side in r.order]
    assert [r.head["bench"]["total_ms"] - r.base["bench"]["total_ms"] for r in rounds] == [5.0] * 6


def test_compare_rounds_leaves_out_benchmarks_missing_from_a_round() -> None:
    def figures(value: float, extra: bool) -> dict[str, dict[str, float]]:
        out = {"a": {"total_ms": value}}
        if extra:
            out["b"] = {"total_ms": value}
        return out

    rounds = [Round(i, ("base", "head"), figures(100 + i, True), figures(110 + i, i != 3), 0.0) for i in range(1, 7)]
    comparisons, left_out = compare_rounds(rounds, Criteria(), figures=["total_ms"])
    assert [(c.benchmark, c.figure) for c in comparisons] == [("a", "total_ms")]
    assert left_out == ["b: not measured on both sides in every round"]


def _benchmark(tpt_ms: list[float], ttft_ms: float, name: str = "case-a") -> dict[str, Any]:
    """A results-file benchmark whose runs have these TpT figures (15 tokens, evenly spaced)."""
    runs = [
        RunRecord(
            run=i + 1,
            prompt_tokens=20,
            requested_tokens=15,
            request_s=0.0,
            token_times_s=tuple((ttft_ms + k * tpt) / 1e3 for k in range(15)),
            token_ids=tuple(range(15)),
            finish_reason="length",
        )
        for i, tpt in enumerate(tpt_ms)
    ]
    scenario = ScenarioResult(scenarios.get("short"), None, 1, runs=runs)
    return {
        "name": f"{name}::short",
        "case_id": name,
        "backend": "llama_cpp",
        "model": "m",
        "format": "gguf",
        "quant": "Q4_1",
        "device": "cpu",
        **scenario.as_dict(),
    }


def _write_results(path: Path, benchmarks: list[dict[str, Any]], backends: list[dict[str, Any]] | None = None) -> Path:
    ok = [
        {"case_id": b["case_id"], "backend": "llama_cpp", "model": "m", "format": "gguf", "device": "cpu"}
        | {"status": "ok", "reason": None}
        for b in benchmarks
    ]
    document = results.make_document(
        settings={}, backends=ok + (backends or []), benchmarks=benchmarks, versions={}, cwd=path.parent
    )
    return results.write_json(path, document)


TPT = [10.0, 10.4, 9.8, 10.1, 9.9, 10.2]


def test_round_figures_are_medians_of_the_runs_and_failures_are_listed(tmp_path: Path) -> None:
    unavailable = {
        "case_id": "case-x",
        "backend": "mlx_lm",
        "model": "m",
        "format": "mlx",
        "device": "cpu",
        "status": "unavailable",
        "reason": "mlx is not installed",
    }
    failed = {**unavailable, "case_id": "case-y", "status": "error", "reason": "failed to load: boom"}
    path = _write_results(tmp_path / "r.json", [_benchmark(TPT[:3], 50.0)], [unavailable, failed])
    figures, errors, notes = round_figures(results.load(path), ["tpt_ms", "ttft_ms"])
    assert figures == {"case-a::short": {"tpt_ms": pytest.approx(10.0), "ttft_ms": pytest.approx(50.0)}}
    assert errors == ["case-y: error: failed to load: boom"]
    assert notes == ["case-x: unavailable: mlx is not installed"]
    samples, _, _ = run_samples(results.load(path), ["tpt_ms"])
    assert samples["case-a::short"]["tpt_ms"] == pytest.approx(TPT[:3])


@pytest.fixture
def result_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    base = _write_results(tmp_path / "base.json", [_benchmark(TPT, 50.0)])
    slow = _write_results(tmp_path / "slow.json", [_benchmark([t * 1.2 for t in TPT], 50.0)])
    few = _write_results(tmp_path / "few.json", [_benchmark(TPT[:3], 50.0)])
    return base, slow, few


def test_results_files_with_a_slowdown_exit_1(result_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, slow, _ = result_files
    ran = run_cli("compare", "--results", str(base), str(slow), "--json", str(tmp_path / "c.json"))
    assert ran.code == 1, ran.err
    assert TABLE_HEADER in ran.out
    document = json.loads((tmp_path / "c.json").read_text())
    assert (document["status"], document["exit_code"], document["mode"]) == ("regression", 1, "results")
    verdicts = {c["figure"]: c["verdict"] for c in document["comparisons"]}
    assert verdicts == {"ttft_ms": "no change", "tpt_ms": "slower", "total_ms": "slower"}
    tpt = next(c for c in document["comparisons"] if c["figure"] == "tpt_ms")
    assert tpt["ratio"] == pytest.approx(1.2)
    assert tpt["p_value"] == pytest.approx(2 / math.comb(12, 6))
    assert document["reason"].startswith("HEAD is slower: case-a::short tpt_ms +20.0%")


def test_results_file_against_itself_exit_0(result_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, _, _ = result_files
    ran = run_cli("compare", "--results", str(base), str(base), "--json", str(tmp_path / "c.json"))
    assert ran.code == 0, ran.err
    document = json.loads((tmp_path / "c.json").read_text())
    assert document["status"] == "ok"
    # Unpaired, six runs of +-2% noise cannot show that two sides agree within 2%: only TTFT, constant here, can.
    verdicts = {c["figure"]: (c["ratio"], c["verdict"]) for c in document["comparisons"]}
    assert verdicts == {
        "ttft_ms": (pytest.approx(1.0), "no change"),
        "tpt_ms": (pytest.approx(1.0), "inconclusive"),
        "total_ms": (pytest.approx(1.0), "inconclusive"),
    }
    assert document["reason"] == "no confirmed regression in 3 comparisons (1 no change, 2 inconclusive)"


def test_results_with_too_few_runs_is_an_error(result_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, _, few = result_files
    ran = run_cli("compare", "--results", str(few), str(few), "--json", str(tmp_path / "c.json"))
    assert ran.code == 2
    assert ran.err == (
        f"minerva compare: case-a::short: 3 runs in {few} and 3 in {few} are too few for a test at 0.95 "
        "confidence (4 runs on each side is the least at 0.95)\n"
    )
    assert json.loads((tmp_path / "c.json").read_text())["status"] == "error"


def test_unreadable_results_files_are_one_line_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    ran = run_cli("compare", "--results", str(missing), str(missing))
    assert ran.code == 2
    assert ran.err.startswith(f"minerva compare: {missing}: cannot read benchmark results")
    assert ran.err.count("\n") == 1
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    ran = run_cli("compare", "--results", str(garbage), str(garbage), "--json", str(tmp_path / "c.json"))
    assert ran.code == 2
    assert ran.err == (
        f"minerva compare: {garbage}: not a valid benchmark results file: invalid JSON at line 1 column 2\n"
    )
    document = json.loads((tmp_path / "c.json").read_text())
    assert (document["status"], document["exit_code"]) == ("error", 2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "abc"], "argument --threshold: 'abc' is not a number"),
        (["--threshold", "-0.1"], "argument --threshold: '-0.1' must be a fraction from 0 to below 1"),
        (["--confidence", "1"], "argument --confidence: '1' must be a fraction from 0 to below 1"),
        (["--figure", "speed"], "argument --figure: unknown figure 'speed'"),
        (["--rounds", "0"], "argument --rounds: '0' must be at least 1"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], message: str) -> None:
    ran = run_cli("compare", "HEAD", "HEAD", *argv)
    assert ran.code == 2
    assert message in ran.err


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "--quiet"], check=True)
    for text in ("one", "two"):
        (repo / "version.txt").write_text(text)
        subprocess.run([*git, "add", "version.txt"], check=True)
        subprocess.run([*git, "commit", "--quiet", "-m", text], check=True)
    return repo


def test_setup_problems_exit_2_with_one_line(tiny_repo: Path, tmp_path: Path) -> None:
    common = ["--model", "smollm2-135m", "--repo", str(tiny_repo)]
    ran = run_cli("compare", "HEAD~1", "no-such-branch", *common, "--json", str(tmp_path / "c.json"))
    assert ran.code == 2
    assert ran.err == f"minerva compare: {tiny_repo}: HEAD 'no-such-branch' is not a commit in this repository\n"
    document = json.loads((tmp_path / "c.json").read_text())
    assert (document["status"], document["reason"]) == ("error", ran.err.removeprefix("minerva compare: ").strip())

    ran = run_cli("compare", "HEAD~1", "HEAD", *common, "--rounds", "5")
    assert ran.code == 2
    assert ran.err == (
        "minerva compare: --rounds 5 cannot confirm anything at 0.95 confidence: the signed-rank test needs at "
        "least 6 rounds\n"
    )
    ran = run_cli("compare", "HEAD~1", "HEAD", "--repo", str(tiny_repo))
    assert (ran.code, ran.err) == (2, "minerva compare: compare needs --model (or --command, or --results)\n")

    plain = tmp_path / "plain"
    plain.mkdir()
    ran = run_cli("compare", "HEAD~1", "HEAD", "--model", "m", "--repo", str(plain))
    assert ran.code == 2
    assert ran.err.startswith(f"minerva compare: {plain}: not inside a git repository")

    ran = run_cli("compare", sys.executable, "HEAD", "--model", "m", "--repo", str(tiny_repo))
    assert ran.code == 2
    assert "are not the same kind: give two git revisions or two interpreters" in ran.err


def test_a_build_that_writes_no_results_is_an_error(tiny_repo: Path, tmp_path: Path) -> None:
    ran = run_cli(
        "compare",
        "HEAD~1",
        "HEAD",
        "--repo",
        str(tiny_repo),
        "--rounds",
        "6",
        "--command",
        "{python} -c \"import sys; sys.exit('no model here {json}')\"",
        "--json",
        str(tmp_path / "c.json"),
    )
    assert ran.code == 2
    document = json.loads((tmp_path / "c.json").read_text())
    assert document["status"] == "error"
    assert document["errors"][0].startswith("round 1: ")
    assert "the benchmark command exited with 1 and wrote no results: no model here" in document["errors"][0]
    assert document["rounds"] == []
    listed = subprocess.run(["git", "-C", str(tiny_repo), "worktree", "list"], capture_output=True, text=True)
    assert len(listed.stdout.strip().splitlines()) == 1


def test_worktrees_check_out_each_revision_and_are_removed(tiny_repo: Path) -> None:
    commits = {
        role: subprocess.run(
            ["git", "-C", str(tiny_repo), "rev-parse", rev], capture_output=True, text=True, check=True
        ).stdout.strip()
        for role, rev in (("base", "HEAD~1"), ("head", "HEAD"))
    }
    with worktrees(tiny_repo, commits) as trees:
        assert (trees["base"] / "version.txt").read_text() == "one"
        assert (trees["head"] / "version.txt").read_text() == "two"
        scratch = trees["base"].parent
    assert not scratch.exists()
    listed = subprocess.run(["git", "-C", str(tiny_repo), "worktree", "list"], capture_output=True, text=True)
    assert len(listed.stdout.strip().splitlines()) == 1


def test_bench_command_and_custom_commands() -> None:
    args = argparse.Namespace(
        command=None,
        model="smollm2-135m",
        backend=["llama_cpp"],
        scenario=None,
        runs=3,
        warmup=1,
        threads=1,
        cache_dir=None,
        model_dir=None,
    )
    assert bench_command(args) == [
        "{python}",
        "-m",
        "pytest_minerva.commands",
        "bench",
        "--model",
        "smollm2-135m",
        "--backend",
        "llama_cpp",
        "--scenario",
        "short",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--no-kv-probe",
        "--json",
        "{json}",
        "--threads",
        "1",
    ]
    args.command = "{python} bench.py --out '{json}'"
    assert bench_command(args) == ["{python}", "bench.py", "--out", "{json}"]
    args.command = "{python} bench.py"
    with pytest.raises(MinervaError, match=r"--command must contain \{json\}"):
        bench_command(args)


def test_interpreters_from_paths(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    assert interpreter_of(str(venv), "BASE") == str(venv / "bin" / "python")
    assert interpreter_of(sys.executable, "BASE") == str(Path(sys.executable).absolute())
    with pytest.raises(MinervaError, match="HEAD is a directory but not a virtual environment"):
        interpreter_of(str(tmp_path), "HEAD")
    text = tmp_path / "notes.txt"
    text.write_text("")
    with pytest.raises(MinervaError, match="HEAD is not an executable Python interpreter"):
        interpreter_of(str(text), "HEAD")


# End to end: two revisions of this repository on the real model, through git worktrees.

SLOWDOWN_PATCH = """

import dataclasses as _dataclasses


def _busy_wait_after_each_token(stream):
    # The wait is part of producing the token: the event is stamped after it, so the adapter's
    # timestamps still agree with the harness's receipts (a wait after the stamp is a lie it catches).
    def slowed(self, request):
        for index, event in enumerate(stream(self, request)):
            if not index:  # the first token (TTFT) is left alone
                yield event
                continue
            until = time.perf_counter() + 0.010
            while time.perf_counter() < until:
                pass
            yield _dataclasses.replace(event, time_s=time.perf_counter())

    return slowed


LlamaCppBackend.stream = _busy_wait_after_each_token(LlamaCppBackend.stream)
"""


@pytest.fixture(scope="module")
def slow_clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of this repository's HEAD plus a commit that busy-waits 10 ms after each llama.cpp token."""
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout of pytest-minerva")
    session = build_session(Settings(models=["smollm2-135m"], backends=["llama_cpp"]))
    cases = session.cases(formats=["gguf"])
    if not cases:
        pytest.skip("smollm2-135m has no GGUF case for llama_cpp")
    reason = session.check_runnable(cases[0])
    if reason:
        pytest.skip(reason)
    try:
        session.resolve(cases[0])
    except MinervaError as exc:
        pytest.skip(str(exc))
    clone = tmp_path_factory.mktemp("compare") / "repo"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    adapter = clone / "pytest_minerva" / "backends" / "llama_cpp.py"
    adapter.write_text(adapter.read_text() + SLOWDOWN_PATCH)
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "commit", "--quiet", "-am", "busy-wait 10 ms per token"], check=True)
    return clone


def _real_compare(clone: Path, base: str, head: str, out: Path, rounds: int, *extra: str) -> tuple[Ran, dict[str, Any]]:
    ran = run_cli(
        "compare",
        base,
        head,
        "--repo",
        str(clone),
        "--model",
        "smollm2-135m",
        "--backend",
        "llama_cpp",
        "--scenario",
        "short",
        "--threads",
        "1",
        "--rounds",
        str(rounds),
        "--runs",
        "3",
        "--json",
        str(out),
        *extra,
    )
    return ran, json.loads(out.read_text())


@pytest.mark.slow
def test_real_slowdown_between_two_revisions_is_confirmed(slow_clone: Path, tmp_path: Path) -> None:
    """TpT grows by about 80%; 8 rounds, so one round reversed by a load spike still leaves p < 0.05."""
    ran, document = _real_compare(slow_clone, "HEAD~1", "HEAD", tmp_path / "slow.json", 8, "--threshold", "0.10")
    assert ran.code == 1, ran.out + ran.err
    assert document["status"] == "regression"
    verdicts = {c["figure"]: c for c in document["comparisons"]}
    assert verdicts["tpt_ms"]["verdict"] == "slower"
    assert verdicts["tpt_ms"]["ci_low"] > 1.10
    assert verdicts["ttft_ms"]["verdict"] != "slower"  # the busy-wait comes after the first token
    assert len(document["rounds"]) == 8
    for role, rev in (("base", "HEAD~1"), ("head", "HEAD")):
        commit = subprocess.run(
            ["git", "-C", str(slow_clone), "rev-parse", rev], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert document[role]["commit"] == commit
        assert f"{role}-{commit[:12]}" in document[role]["pytest_minerva_from"]
    listed = subprocess.run(["git", "-C", str(slow_clone), "worktree", "list"], capture_output=True, text=True)
    assert len(listed.stdout.strip().splitlines()) == 1


@pytest.mark.slow
def test_real_a_against_a_is_not_a_regression(slow_clone: Path, tmp_path: Path) -> None:
    """One revision against itself; the 10% threshold keeps a false alarm on this shared machine very unlikely."""
    ran, document = _real_compare(slow_clone, "HEAD~1", "HEAD~1", tmp_path / "aa.json", 6, "--threshold", "0.10")
    assert ran.code == 0, ran.out + ran.err
    assert document["status"] == "ok"
    assert all(c["verdict"] in ("no change", "inconclusive") for c in document["comparisons"])
    assert len(document["comparisons"]) == 3
    # Two worktrees of one commit: each side imported its own copy.
    assert document["base"]["pytest_minerva_from"] != document["head"]["pytest_minerva_from"]
