"""Marker registration, and the skips that hardware markers imply.

The plugin takes no marker name from a project that does not use it: at start-up it
registers only ``minerva`` (its own namespace). The format, backend and device markers are
registered when the plugin starts work (a minerva option, or a test using one of its
fixtures), and their skips apply only to the tests it parametrized or serves. Markers of
this repository's own tests (``slow``, ``fuzz``, ``asv``) live in its pyproject and conftest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_minerva.backends import BackendRegistry
    from pytest_minerva.hardware import Hardware

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
NAMESPACE_MARKER = (
    "minerva",
    "minerva(formats=[...], backends=[...], pairs=[...], models=[...]): restrict the matrix that "
    "parametrizes this test",
)


def register_namespace(config: pytest.Config) -> None:
    """The one marker registered in every run: ``minerva``, the plugin's own name."""
    name, text = NAMESPACE_MARKER
    config.addinivalue_line("markers", f"{name}: {text}")


def register_case_markers(config: pytest.Config, registry: BackendRegistry) -> list[str]:
    """The markers the matrix applies to its cases (format, backend, device); returns their names."""
    from pytest_minerva.models.catalog import FORMATS

    assert set(FORMAT_MARKERS) == set(FORMATS)
    names = []
    for name, text in {**FORMAT_MARKERS, **HARDWARE_MARKERS}.items():
        config.addinivalue_line("markers", f"{name}: {text}")
        names.append(name)
    for spec in registry:
        config.addinivalue_line("markers", f"{spec.name}: case runs on the {spec.name} backend (applied automatically)")
        names.append(spec.name)
    return names


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
