"""Hooks through which other packages extend pytest-minerva.

Implement them in a ``conftest.py`` or in a plugin module, marked ``@pytest.hookimpl`` or
not, as pytest allows. A package can also list its module under the ``pytest_minerva``
entry-point group so that the ``minerva`` command line (which does not run pytest), asv and
the worker processes see it too, with the same implementations (:func:`hook_relay`)::

    [project.entry-points.pytest_minerva]
    myengine = "myengine_minerva.hooks"
"""

from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any

import pluggy
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


#: The prefix of every hook above. Outside pytest only functions with this prefix are hooks: any
#: other ``pytest_*`` function of an entry-point module belongs to pytest.
HOOK_PREFIX = "pytest_minerva_"


class RelayManager(pluggy.PluginManager):
    """pytest's rule for finding hook implementations, narrowed to this package's hooks.

    A plain :class:`pluggy.PluginManager` sees only functions marked ``@pytest.hookimpl``;
    pytest's own manager also takes unmarked ``pytest_*`` functions. A module written the
    way the README shows (unmarked) must extend the ``minerva`` command as it extends pytest.
    """

    def __init__(self) -> None:
        super().__init__("pytest")

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> pluggy.HookimplOpts | None:
        if not name.startswith(HOOK_PREFIX):
            return None
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is not None:
            return opts
        # As pytest does (_pytest.config.PytestPluginManager.parse_hookimpl_opts): only routines.
        if not inspect.isroutine(getattr(plugin, name, None)):
            return None
        return {
            "wrapper": False,
            "hookwrapper": False,
            "optionalhook": False,
            "tryfirst": False,
            "trylast": False,
            "specname": None,
        }

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        except pluggy.PluginValidationError as exc:
            # pluggy's first line repeats the plugin's name; the rest quotes the definition and the fault.
            lines = str(exc).splitlines()
            raise _invalid_plugin(name, plugin, " ".join(" ".join(lines[1:] or lines).split())) from None


def hook_relay() -> Any:
    """The hook relay outside pytest (the ``minerva`` command, asv, a worker process):
    these hookspecs and the implementations of every ``pytest_minerva`` entry point.

    The implementations are found as pytest finds them, marked or not. A ``pytest_minerva_*``
    function that is no hook here (a misspelt name), or whose arguments the hook does not
    have, is a :class:`~pytest_minerva.errors.MinervaError` naming the entry point.
    """
    import pytest_minerva.hookspecs as specs

    manager = RelayManager()
    manager.add_hookspecs(specs)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    callers = {name: getattr(manager.hook, name) for name in vars(manager.hook) if name.startswith(HOOK_PREFIX)}
    known = sorted(name for name, caller in callers.items() if caller.has_spec())
    for name, caller in callers.items():
        # What pluggy's check_pending refuses (pytest runs it after collection), said in one line.
        unknown = [] if caller.has_spec() else [impl for impl in caller.get_hookimpls() if not impl.optionalhook]
        if unknown:
            problem = f"{name}() is not a pytest-minerva hook{_hint(name, known)}"
            raise _invalid_plugin(unknown[0].plugin_name, unknown[0].plugin, problem)
    return manager.hook


def _invalid_plugin(name: str | None, plugin: Any, problem: str) -> Exception:
    from pytest_minerva.errors import MinervaError

    module = getattr(plugin, "__name__", repr(plugin))
    return MinervaError(f"{ENTRY_POINT_GROUP} entry point {name!r} ({module}): {problem}")


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]}?" if close else f"; the hooks are {', '.join(known)}"
