"""The shipped suite's golden numerics and tolerances can live in the user's own directory.

An installed package's data is read-only in spirit (site-packages), so ``--minerva-golden-dir``
takes the golden numerics, and ``--minerva-update-golden`` writes them, where the user says;
``--minerva-tolerances`` points the equivalence checks at the user's own tolerances file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_minerva.models.catalog import fixtures_dir

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

LLAMA_F32 = "tiny-random-llama-gguf-f32-llama_cpp-cpu"


@pytest.fixture
def runner(pytester: pytest.Pytester, tiny_gguf: Path) -> pytest.Pytester:
    """A pytester whose runs select llama.cpp on the tiny model's F32 GGUF (generated once)."""
    return pytester


def golden_run(runner: pytest.Pytester, golden: Path, *extra: str) -> pytest.RunResult:
    return runner.runpytest(
        "--pyargs",
        "pytest_minerva.suites.test_golden",
        "--minerva-model",
        "tiny-random-llama",
        "--minerva-backend",
        "llama_cpp",
        "-k",
        LLAMA_F32,
        "--minerva-golden-dir",
        str(golden),
        "-p",
        "no:cacheprovider",
        *extra,
    )


def test_golden_numerics_are_recorded_and_read_in_the_users_directory(runner: pytest.Pytester, tmp_path: Path) -> None:
    golden = tmp_path / "my-goldens"
    shipped = fixtures_dir() / "golden" / "numerics" / f"{LLAMA_F32}.json"
    shipped_before = shipped.read_bytes() if shipped.exists() else None
    empty = golden_run(runner, golden, "-rs")
    empty.assert_outcomes(skipped=1)  # nothing recorded there yet: skipped with the path to record into
    empty.stdout.fnmatch_lines([f"*no golden numerics for {LLAMA_F32}*my-goldens*"])
    golden_run(runner, golden, "--minerva-update-golden").assert_outcomes(passed=1)
    assert (golden / f"{LLAMA_F32}.json").is_file()
    golden_run(runner, golden).assert_outcomes(passed=1)
    assert (shipped.read_bytes() if shipped.exists() else None) == shipped_before  # the package's copy untouched


def test_the_equivalence_checks_read_the_users_tolerances_file(runner: pytest.Pytester, tmp_path: Path) -> None:
    mine = tmp_path / "my-tolerances.toml"
    mine.write_text("schema_version = [not toml\n", encoding="utf-8")
    result = runner.runpytest(
        "--pyargs",
        "pytest_minerva.suites.test_equivalence",
        "--minerva-model",
        "tiny-random-llama",
        "--minerva-backend",
        "llama_cpp",
        "-k",
        "test_logits_agree and q8_0",
        "--minerva-tolerances",
        str(mine),
        "-p",
        "no:cacheprovider",
    )
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) + outcomes.get("errors", 0) >= 1, result.stdout.str()
    assert str(mine) in result.stdout.str()  # the failure names the user's file
