"""pytest entry point: hook implementations and option registration only.

The plugin loads into every pytest run of the environment it is installed in, so it stays
dormant until it is used: it registers its ``--minerva-…`` options, the short forms the user
has not taken, and the ``minerva`` marker, and does nothing else (no hardware probe, no
header, no marker effects) unless the run names a minerva option or collects a test that
uses one of its fixtures. The logic lives in the modules these hooks call: options,
markers, fixtures (which builds the session), matrix, session.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_minerva import fixtures as _fixtures
from pytest_minerva import hookspecs, markers, options
from pytest_minerva.errors import LogitsUnavailable


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> Generator[None, None, None]:
    """After the user's conftests have added their options: the short forms that are free."""
    yield
    early_config.stash[_fixtures.SHORT_FORMS_TAKEN_KEY] = options.add_short_forms(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_fixtures, "minerva-fixtures")
    markers.register_namespace(config)
    if options.explicitly_configured(config):
        _fixtures.get_session(config, at_configure=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = _fixtures.active_session(config)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = _fixtures.active_session(config)
    if session is None:
        return []
    lines = session.report_header()
    for short in config.stash.get(_fixtures.SHORT_FORMS_TAKEN_KEY, []):
        lines.append(f"minerva: --{short} is defined by your conftest or another plugin; ours is --minerva-{short}")
    return lines


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    _fixtures.parametrize(metafunc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Device markers this machine cannot honour skip, on the tests the plugin serves only."""
    session = _fixtures.active_session(config)
    if session is None:
        return
    for item in items:
        if not _fixtures.uses_plugin(item):
            continue
        reason = markers.hardware_skip_reason(item, session.hardware)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A test that needs full logits from a backend that has none (a served model) is skipped, not failed."""
    try:
        return (yield)
    except LogitsUnavailable as exc:
        pytest.skip(str(exc))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = _fixtures.active_session(config)
    if session is None:
        return
    if session.pool.crashes or session.in_process:
        terminalreporter.section("minerva engines")
        for name, first in session.pool.crashes.items():
            terminalreporter.write_line(
                f"{name} crashed: {first}; the tests that touched it failed, the others ran. "
                f"Check this engine's build with: minerva doctor --backend {name}",
                red=True,
            )
        for name, why in session.in_process.items():
            terminalreporter.write_line(f"{name} ran in this process, without crash isolation: {why}", yellow=True)
    if not session.used:
        return
    terminalreporter.section("minerva artifacts")
    for artifact in session.used.values():
        terminalreporter.write_line(artifact.describe())
