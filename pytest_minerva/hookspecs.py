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

# ``session`` below is the run's pytest_minerva.session.MinervaSession; it is typed Any so
# that this module, which the session imports, imports nothing above it.

#: The entry-point group through which installed packages add hook implementations.
ENTRY_POINT_GROUP = "pytest_minerva"

if TYPE_CHECKING:
    from pytest_minerva.backends import BackendRegistry, BackendSpec
    from pytest_minerva.backends.base import Backend, LoadOptions
    from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec
    from pytest_minerva.models.resolve import ResolvedArtifact, Resolver


@pytest.hookspec
def pytest_minerva_register_backends(registry: BackendRegistry) -> None:
    """Add :class:`~pytest_minerva.backends.BackendSpec` entries with ``registry.add(...)``.

    A spec names the formats and devices the backend handles and a lazy
    ``"module:Class"`` target, so nothing heavy is imported until a test needs it.
    """


@pytest.hookspec
def pytest_minerva_register_models(catalog: Catalog) -> None:
    """Add :class:`~pytest_minerva.models.catalog.ModelSpec` entries with ``catalog.add(...)``."""


@pytest.hookspec(firstresult=True)
def pytest_minerva_make_backend(spec: BackendSpec, artifact: ResolvedArtifact, options: LoadOptions) -> Backend | None:
    """Build and load a backend; return ``None`` to fall through to the default loader."""


@pytest.hookspec(firstresult=True)
def pytest_minerva_resolve_model(model: ModelSpec, spec: ArtifactSpec, resolver: Resolver) -> ResolvedArtifact | None:
    """Locate an artifact your own way (a private store, a network share); ``None`` falls through."""


@pytest.hookspec
def pytest_minerva_generate_machine_info(config: pytest.Config | None, session: Any) -> dict[str, Any] | None:
    """Return extra machine facts to merge into every results document's ``machine_info``
    and into the pytest header. ``config`` is None under the ``minerva`` command and asv."""


@pytest.hookspec
def pytest_minerva_update_machine_info(
    config: pytest.Config | None, session: Any, machine_info: dict[str, Any]
) -> None:
    """Edit the machine info in place, after every generate hook's facts are merged."""


@pytest.hookspec
def pytest_minerva_update_report(config: pytest.Config | None, session: Any, report: dict[str, Any]) -> None:
    """Edit a results document (``minerva bench``, ``serve-bench`` or ``compare`` JSON) in place
    before it is written."""


def hook_relay() -> Any:
    """The hook relay outside pytest (the ``minerva`` command, asv, a worker process):
    these hookspecs and the implementations of every ``pytest_minerva`` entry point."""
    import pluggy

    import pytest_minerva.hookspecs as specs

    manager = pluggy.PluginManager("pytest")
    manager.add_hookspecs(specs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return manager.hook
