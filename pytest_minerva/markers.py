"""Marker registration, and the skips that hardware markers imply."""

from __future__ import annotations

import pytest

from pytest_minerva.backends import BackendRegistry
from pytest_minerva.hardware import Hardware
from pytest_minerva.models.catalog import FORMATS

FORMAT_MARKERS = {
    "gguf": "case runs a GGUF artifact (applied automatically to matrix cases)",
    "safetensors": "case runs a SafeTensors artifact (applied automatically)",
    "mlx": "case runs an MLX artifact (applied automatically)",
}
HARDWARE_MARKERS = {
    "cpu": "case runs on the CPU (applied automatically)",
    "cuda": "case needs an NVIDIA CUDA device; skipped with a reason where there is none",
    "metal": "case needs Apple Metal; skipped with a reason elsewhere",
}
OTHER_MARKERS = {
    "slow": "takes more than a few seconds; deselect with -m 'not slow'",
    "fuzz": "the long fuzzing run (thousands of cases); runs only with -m fuzz",
    "asv": "end-to-end asv runs in temporary git repositories (minutes); runs only with -m asv",
    "minerva": "minerva(formats=[...], backends=[...], pairs=[...], models=[...]): restrict the matrix "
    "that parametrizes this test",
}


def register(config: pytest.Config, registry: BackendRegistry) -> None:
    assert set(FORMAT_MARKERS) == set(FORMATS)
    for name, text in {**FORMAT_MARKERS, **HARDWARE_MARKERS, **OTHER_MARKERS}.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    for spec in registry:
        config.addinivalue_line("markers", f"{spec.name}: case runs on the {spec.name} backend (applied automatically)")


#: Markers whose tests run only when the ``-m`` expression names them (long runs).
OPT_IN_MARKERS = ("fuzz", "asv")


def opt_in_skip_reason(item: pytest.Item, markexpr: str) -> str | None:
    """Why an opt-in test (e.g. the thousands-of-cases fuzz run) is skipped in this run."""
    for name in OPT_IN_MARKERS:
        if item.get_closest_marker(name) is not None and name not in markexpr:
            return f"'{name}' tests run only when selected: add -m {name}"
    return None


def hardware_skip_reason(item: pytest.Item, hardware: Hardware) -> str | None:
    """A reason to skip ``item`` when it is marked for a device this machine lacks."""
    for device in ("cuda", "metal"):
        if item.get_closest_marker(device) is not None and not hardware.has(device):
            return f"{device} marker: {hardware.missing_reason(device)}"
    return None


def matrix_filter(item_or_definition: pytest.Metafunc) -> dict[str, list[str] | None]:
    """The ``minerva(...)`` marker's restrictions for a test being parametrized."""
    marker = item_or_definition.definition.get_closest_marker("minerva")
    keys = ("formats", "backends", "pairs", "models")
    if marker is None:
        return dict.fromkeys(keys)
    unknown = set(marker.kwargs) - set(keys)
    if unknown or marker.args:
        raise pytest.UsageError(
            f"{item_or_definition.definition.nodeid}: minerva marker takes only keyword arguments "
            f"{', '.join(keys)}; got {sorted(unknown) or list(marker.args)}"
        )
    return {k: (list(marker.kwargs[k]) if k in marker.kwargs else None) for k in keys}
