"""Hooks through which other packages extend pytest-minerva.

Implement them in a ``conftest.py`` or in a plugin module. A package can also list
its module under the ``pytest_minerva`` entry-point group so that the ``minerva``
command line (which does not run pytest) sees it too::

    [project.entry-points.pytest_minerva]
    myengine = "myengine_minerva.hooks"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_minerva.backends import BackendRegistry, BackendSpec
    from pytest_minerva.backends.base import Backend, LoadOptions
    from pytest_minerva.catalog import ArtifactSpec, Catalog, ModelSpec
    from pytest_minerva.resolve import ResolvedArtifact, Resolver


@pytest.hookspec
def pytest_minerva_register_backends(registry: BackendRegistry) -> None:
    """Add :class:`~pytest_minerva.backends.BackendSpec` entries with ``registry.add(...)``.

    A spec names the formats and devices the backend handles and a lazy
    ``"module:Class"`` target, so nothing heavy is imported until a test needs it.
    """


@pytest.hookspec
def pytest_minerva_register_models(catalog: Catalog) -> None:
    """Add :class:`~pytest_minerva.catalog.ModelSpec` entries with ``catalog.add(...)``."""


@pytest.hookspec(firstresult=True)
def pytest_minerva_make_backend(spec: BackendSpec, artifact: ResolvedArtifact, options: LoadOptions) -> Backend | None:
    """Build and load a backend; return ``None`` to fall through to the default loader."""


@pytest.hookspec(firstresult=True)
def pytest_minerva_resolve_model(model: ModelSpec, spec: ArtifactSpec, resolver: Resolver) -> ResolvedArtifact | None:
    """Locate an artifact your own way (a private store, a network share); ``None`` falls through."""


@pytest.hookspec
def pytest_minerva_generate_machine_info(config: pytest.Config) -> dict[str, Any] | None:
    """Return extra machine facts to merge into reports and the pytest header."""


@pytest.hookspec
def pytest_minerva_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Edit the machine info in place before it is stored."""


@pytest.hookspec
def pytest_minerva_update_report(config: pytest.Config, report: dict[str, Any]) -> None:
    """Edit a results document (benchmark or equivalence JSON) in place before it is written."""
