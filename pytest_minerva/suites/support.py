"""What the suite's tests share: the data files they read and the strict xfails they apply.

Every file comes from :func:`pytest_minerva.models.catalog.fixtures_dir` (``fixtures/`` in a
checkout, ``pytest_minerva/_fixtures`` in an installed package), so the suite reads the same data
wherever it runs. A test module imports this module, never the conftest.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

import pytest

from pytest_minerva.equivalence import load_known_divergences
from pytest_minerva.equivalence.tokenizer_corpus import load_tokenizer_divergences
from pytest_minerva.matrix import Pair
from pytest_minerva.models.catalog import fixtures_dir

KV_CACHE_FILE = "kv_cache.toml"


def model_facts(model: str) -> list[dict[str, Any]]:
    """The prompts ``model`` must complete correctly (``fixtures/expectations.toml``)."""
    data = tomllib.loads((fixtures_dir() / "expectations.toml").read_text(encoding="utf-8"))
    return list(data.get("models", {}).get(model, {}).get("facts", []))


@dataclass(frozen=True)
class KvCacheBounds:
    """How far decoding with the KV cache may move from one full forward pass (``fixtures/kv_cache.toml``)."""

    max_dlogit: float
    top1_agreement: float


def kv_cache_bounds(backend: str) -> KvCacheBounds:
    """The bounds of ``backend``: its own table under ``[backends]``, else ``[default]``."""
    data = tomllib.loads((fixtures_dir() / KV_CACHE_FILE).read_text(encoding="utf-8"))
    table = {**data["default"], **data.get("backends", {}).get(backend, {})}
    return KvCacheBounds(max_dlogit=float(table["max_dlogit"]), top1_agreement=float(table["top1_agreement"]))


def mark_known_divergence(request: pytest.FixtureRequest, pair: Pair) -> None:
    """Turn a pair recorded as a known engine divergence into a strict xfail.

    Strict (set here, so it holds without this repository's ``xfail_strict``): once the engine is
    fixed the test passes unexpectedly and fails the run, which is the signal to delete the entry
    from the tolerance file.
    """
    ref, cand = pair.reference, pair.candidate
    if ref.backend is None or cand.backend is None:
        return
    from pytest_minerva.fixtures import get_session

    for divergence in load_known_divergences(get_session(request.config).settings.tolerances):
        if divergence.matches(ref.model.name, ref.backend.name, cand.backend.name):
            request.applymarker(pytest.mark.xfail(reason=divergence.reason(), strict=True))


def mark_tokenizer_divergence(request: pytest.FixtureRequest, pair: Pair) -> None:
    """Turn a tokenizer recorded in ``fixtures/tokenizer_divergences.toml`` into a strict xfail."""
    cand = pair.candidate
    if cand.backend is None:
        return
    for divergence in load_tokenizer_divergences():
        if divergence.matches(cand.model.name, cand.artifact.format, cand.backend.name):
            request.applymarker(pytest.mark.xfail(reason=divergence.reason(), strict=True))
