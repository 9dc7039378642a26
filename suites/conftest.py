"""Shared helpers of the regression suite; the matrix fixtures come from the plugin."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from pytest_minerva import hypothesis_profiles
from pytest_minerva.equivalence import load_known_divergences
from pytest_minerva.equivalence.tokenizer_corpus import load_tokenizer_divergences
from pytest_minerva.models.catalog import fixtures_dir

# The same profile as tests/conftest.py, for a run of suites/ alone: derandomized by default.
hypothesis_profiles.load()


def model_facts(model: str) -> list[dict[str, Any]]:
    """The prompts ``model`` must complete correctly (``fixtures/expectations.toml``)."""
    data = tomllib.loads((fixtures_dir() / "expectations.toml").read_text(encoding="utf-8"))
    return list(data.get("models", {}).get(model, {}).get("facts", []))


def mark_known_divergence(request: pytest.FixtureRequest, pair: Any) -> None:
    """Turn a pair recorded as a known engine divergence into a strict xfail.

    Strict: once the engine is fixed the test passes unexpectedly and fails the run, which
    is the signal to delete the entry from the tolerance file.
    """
    ref, cand = pair.reference, pair.candidate
    for divergence in load_known_divergences():
        if divergence.matches(ref.model.name, ref.backend.name, cand.backend.name):
            request.applymarker(pytest.mark.xfail(reason=divergence.reason(), strict=True))


def mark_tokenizer_divergence(request: pytest.FixtureRequest, pair: Any) -> None:
    """Turn a tokenizer recorded in ``fixtures/tokenizer_divergences.toml`` into a strict xfail."""
    cand = pair.candidate
    if cand.backend is None:
        return
    for divergence in load_tokenizer_divergences():
        if divergence.matches(cand.model.name, cand.artifact.format, cand.backend.name):
            request.applymarker(pytest.mark.xfail(reason=divergence.reason(), strict=True))
