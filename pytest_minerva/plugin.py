"""pytest entry point: hook implementations and option registration only.

The logic lives in the modules these hooks call: options, markers, session,
fixtures, matrix, resolve, backends, equivalence.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from pytest_minerva import fixtures as _fixtures
from pytest_minerva import hookspecs, markers, options
from pytest_minerva.errors import LogitsUnavailable, MinervaError
from pytest_minerva.hookspecs import ENTRY_POINT_GROUP
from pytest_minerva.session import SESSION_KEY, build_session


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    config.pluginmanager.register(_fixtures, "minerva-fixtures")
    settings = options.Settings.from_config(config)
    try:
        session = build_session(settings, config.hook, config=config)
    except MinervaError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SESSION_KEY] = session
    markers.register(config, session.registry)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash.get(SESSION_KEY, None)
    return session.report_header() if session is not None else []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    _fixtures.parametrize(metafunc)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    markexpr = str(config.getoption("markexpr", "") or "")
    for item in items:
        opt_in = markers.opt_in_skip_reason(item, markexpr)
        if opt_in:
            item.add_marker(pytest.mark.skip(reason=opt_in))
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        return
    for item in items:
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
    session = config.stash.get(SESSION_KEY, None)
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
