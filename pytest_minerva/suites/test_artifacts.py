"""Every artifact of the selected models is found (or derived), is well formed, and is what the catalog says."""

from __future__ import annotations

from pytest_minerva.formats import verify
from pytest_minerva.models.resolve import ResolvedArtifact


def test_artifact_verifies(model_artifact: ResolvedArtifact) -> None:
    summary = verify(model_artifact.path)
    assert summary.tensor_count > 0
    expected = model_artifact.architecture
    assert summary.architecture == expected, (
        f"{model_artifact.path}: architecture {summary.architecture}, catalog says {expected}"
    )
