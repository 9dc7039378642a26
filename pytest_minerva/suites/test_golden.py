"""Golden numerics: each case still computes the top-k logits it computed when they were recorded.

Upgrading llama-cpp-python, torch or mlx can move every engine at once, which the cross-backend
checks cannot see. ``--minerva-update-golden`` rewrites the files on purpose and prints the diff.
"""

from __future__ import annotations

import pytest

from pytest_minerva.backends.base import Backend
from pytest_minerva.equivalence import golden
from pytest_minerva.fixtures import get_session
from pytest_minerva.storage.atomic import atomic_write_text


def test_logits_match_golden(backend: Backend, request: pytest.FixtureRequest) -> None:
    case = request.node.callspec.params["backend"]
    session = get_session(request.config)
    path = golden.golden_path(case.id, session.settings.golden_dir)
    fresh = golden.record(backend, {k: v for k, v in session.versions().items() if k != "pytest-minerva"})
    new_text = golden.render(fresh)
    if session.settings.update_golden:
        old_text = path.read_text(encoding="utf-8") if path.exists() else ""
        if old_text != new_text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, new_text)
            print(golden.diff(old_text, new_text, path.name) if old_text else f"{path}: new golden file")
        return
    if not path.exists():
        pytest.skip(f"no golden numerics for {case.id}: record them with --minerva-update-golden ({path})")
    drift = golden.compare(golden.load(path), fresh)
    assert not drift, f"{case.id} drifted from {path}:\n" + "\n".join(drift.problems)
