"""Golden numerics: drift is reported precisely, and an update shows what changed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from pytest_minerva.equivalence import golden
from pytest_minerva.errors import FormatError

DOC = {
    "schema_version": golden.SCHEMA_VERSION,
    "versions": {"llama-cpp-python": "0.3.36"},
    "prompts": [
        {
            "prompt": "short",
            "ids": [1, 40, 716],
            "top": [
                {"position": 2, "ids": [5, 9, 2, 7, 1, 3, 4, 8], "logits": [9.5, 9.0, 8.0, 7.5, 7.0, 6.0, 5.5, 5.0]},
            ],
            "greedy": [5, 12, 13],
        }
    ],
}


def test_identical_documents_do_not_drift() -> None:
    assert not golden.compare(DOC, copy.deepcopy(DOC))


def test_small_logit_noise_within_atol_is_accepted() -> None:
    moved = copy.deepcopy(DOC)
    moved["prompts"][0]["top"][0]["logits"][3] += golden.LOGIT_ATOL / 2
    assert not golden.compare(DOC, moved)


def test_logit_shift_beyond_atol_is_reported() -> None:
    moved = copy.deepcopy(DOC)
    moved["prompts"][0]["top"][0]["logits"][1] += 0.01
    (problem,) = golden.compare(DOC, moved).problems
    assert "moved by up to 0.01" in problem
    assert "position 2" in problem


def test_changed_top1_and_greedy_are_reported() -> None:
    moved = copy.deepcopy(DOC)
    row = moved["prompts"][0]["top"][0]
    row["ids"][0], row["ids"][1] = row["ids"][1], row["ids"][0]
    moved["prompts"][0]["greedy"] = [9, 12, 13]
    problems = golden.compare(DOC, moved).problems
    assert any("top-1 token 5 became 9" in p for p in problems)
    assert any("greedy continuation [5, 12, 13] became [9, 12, 13]" in p for p in problems)


def test_tokenization_change_is_reported_before_anything_else() -> None:
    moved = copy.deepcopy(DOC)
    moved["prompts"][0]["ids"] = [1, 41, 716]
    assert golden.compare(DOC, moved).problems == ["prompt short: tokenization changed (first difference at token 1)"]


def test_diff_shows_the_changed_lines() -> None:
    moved = copy.deepcopy(DOC)
    moved["prompts"][0]["greedy"] = [5, 12, 14]
    text = golden.diff(golden.render(DOC), golden.render(moved), "case.json")
    assert "--- case.json (golden)" in text
    removed = [line[1:].strip() for line in text.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in text.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert removed == ["13"]
    assert added == ["14"]


def test_load_rejects_a_file_that_is_not_a_golden_document(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(FormatError, match=r"x\.json: not a golden numerics file"):
        golden.load(bad)
    bad.write_text("{")
    with pytest.raises(FormatError, match="not valid JSON"):
        golden.load(bad)


def test_committed_golden_files_load() -> None:
    files = sorted(golden.golden_dir().glob("*.json"))
    assert files, "no golden files are committed"
    for path in files:
        assert golden.load(path)["prompts"]
