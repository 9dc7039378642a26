"""The fixtures tests use, and how the matrix parametrizes them.

- ``backend``: a loaded :class:`~pytest_minerva.backends.base.Backend`, one per matrix case.
- ``backend_pair``: a :class:`LoadedPair` (reference and candidate) for the equivalence suite.
- ``model_artifact``: a :class:`~pytest_minerva.models.resolve.ResolvedArtifact` per model x variant.
- ``gguf_model``, ``safetensors_model``, ``mlx_model``: the same, one format each.
- ``minerva_session``: the run's :class:`~pytest_minerva.session.MinervaSession`.

Missing models, devices and libraries skip with a reason; a corrupt file fails with the
file's name and the problem.

The plugin is dormant until it is used: this module imports nothing heavy, and the run's
session is built by :func:`get_session` the first time a minerva option, a test using one of
these fixtures, or a plugin asks for it. A project's own fixture of the same name wins: the
matrix parametrizes only the fixtures defined here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from pytest_minerva.errors import ArtifactMissing, BackendUnavailable, MinervaError
from pytest_minerva.markers import matrix_filter

if TYPE_CHECKING:
    from pytest_minerva.backends.base import Backend
    from pytest_minerva.matrix import Case, Pair
    from pytest_minerva.models.resolve import ResolvedArtifact
    from pytest_minerva.serving.server import LlamaCppServer
    from pytest_minerva.session import MinervaSession

#: Where the run's session lives once it is built.
SESSION_KEY = pytest.StashKey["MinervaSession"]()
#: The short option names (``--model``, ...) the user's conftest or another plugin kept.
SHORT_FORMS_TAKEN_KEY = pytest.StashKey[list[str]]()
#: The names of the fixtures this module defines, which the matrix parametrizes.
MATRIX_FIXTURES = ("backend", "backend_pair", "model_artifact", "gguf_model", "safetensors_model", "mlx_model")

__all__ = [
    "LoadedPair",
    "backend",
    "backend_pair",
    "default_gguf",
    "gguf_model",
    "minerva_llama_server",
    "minerva_session",
    "mlx_model",
    "model_artifact",
    "safetensors_model",
]

ARTIFACT_FIXTURES = {
    "model_artifact": None,
    "gguf_model": "gguf",
    "safetensors_model": "safetensors",
    "mlx_model": "mlx",
}


@dataclass
class LoadedPair:
    """Two loaded backends that must agree, and how they relate."""

    pair: Pair
    reference: Backend
    candidate: Backend
    reference_artifact: ResolvedArtifact
    candidate_artifact: ResolvedArtifact

    @property
    def same_weights(self) -> bool:
        """True when both run the same numbers (one side was derived from the other's file)."""
        return self.reference_artifact.same_weights_as(self.candidate_artifact)

    @property
    def id(self) -> str:
        return self.pair.id

    def __repr__(self) -> str:
        # Hypothesis prints the arguments of a failing example; the whole catalog entry is noise.
        return f"LoadedPair({self.pair.id})"


def get_session(config: pytest.Config, *, at_configure: bool = False) -> MinervaSession:
    """The run's session, built on first use: the ``pytest_minerva`` entry points are loaded,
    the settings read (command line over ini over defaults) and the matrix's markers registered.

    Settings that cannot work (an unknown model, an unusable cache directory) are a usage error
    at configure time; when a test's fixture starts the plugin later, they stop the run
    (exit status 4) rather than fail every test that uses the plugin, one traceback each."""
    found = config.stash.get(SESSION_KEY, None)
    if found is not None:
        return found
    if not config.pluginmanager.has_plugin("minerva-fixtures"):
        raise pytest.UsageError("pytest-minerva is not configured (was the plugin disabled with -p no:minerva?)")
    from pytest_minerva import markers
    from pytest_minerva.hookspecs import ENTRY_POINT_GROUP
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session

    config.pluginmanager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    try:
        session = build_session(Settings.from_config(config), config.hook, config=config)
    except MinervaError as exc:
        if at_configure:
            raise pytest.UsageError(str(exc)) from None
        problem = str(exc)
    else:
        config.stash[SESSION_KEY] = session
        markers.register_case_markers(config, session.registry)
        return session
    pytest.exit(f"pytest-minerva: {problem}", returncode=pytest.ExitCode.USAGE_ERROR)


def active_session(config: pytest.Config) -> MinervaSession | None:
    """The session if the plugin has started work in this run, else None (dormant)."""
    return config.stash.get(SESSION_KEY, None)


def owns_fixture(definition: Any, name: str) -> bool:
    """Whether the fixture ``name`` that this test gets is the one defined here (a project's own
    fixture of the same name, in a conftest or the test module, overrides ours)."""
    info = getattr(definition, "_fixtureinfo", None)
    defs = info.name2fixturedefs.get(name) if info is not None else None
    if not defs:
        return False
    return getattr(defs[-1].func, "__module__", None) == __name__


def uses_plugin(item: pytest.Item) -> bool:
    """Whether ``item`` was parametrized by the matrix or uses one of this module's fixtures."""
    names = getattr(item, "fixturenames", ())
    return any(owns_fixture(item, name) for name in names if name in _OUR_FIXTURES)


def _skip_param(reason: str) -> Any:
    return pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-case")


def parametrize(metafunc: pytest.Metafunc) -> None:
    """Parametrize the matrix fixtures a test function asks for."""
    wanted = {name for name in metafunc.fixturenames if name in MATRIX_FIXTURES}
    wanted = {name for name in wanted if owns_fixture(metafunc.definition, name)}
    for mark in metafunc.definition.iter_markers("parametrize"):
        # A test that parametrizes one of these names itself keeps its own values.
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        wanted -= {n.strip() for n in names.split(",")} if isinstance(names, str) else set(names)
    if not wanted & {"backend", "backend_pair", *ARTIFACT_FIXTURES}:
        return
    session = get_session(metafunc.config)
    limits = matrix_filter(metafunc)

    def keep_case(case: Case) -> bool:
        if limits["models"] is not None and case.model.name not in limits["models"]:
            return False
        if limits["formats"] is not None and case.artifact.format not in limits["formats"]:
            return False
        return limits["backends"] is None or case.backend is None or case.backend.name in limits["backends"]

    if "backend" in wanted:
        cases = [c for c in session.cases() if keep_case(c)]
        params = [pytest.param(c, id=c.id, marks=c.marks()) for c in cases]
        metafunc.parametrize(
            "backend",
            params or [_skip_param(_empty_reason(session, "backend", limits))],
            indirect=True,
            scope="session",
        )
    if "backend_pair" in wanted:
        found = [p for p in session.pairs(limits["pairs"]) if keep_case(p.reference) and keep_case(p.candidate)]
        params = [pytest.param(p, id=p.id, marks=p.marks()) for p in found]
        metafunc.parametrize(
            "backend_pair",
            params or [_skip_param(_empty_reason(session, "backend pair", limits))],
            indirect=True,
        )
    for name, fmt in ARTIFACT_FIXTURES.items():
        if name in wanted:
            cases = [c for c in session.artifact_cases([fmt] if fmt else None) if keep_case(c)]
            params = [pytest.param(c, id=c.id, marks=c.marks()) for c in cases]
            metafunc.parametrize(
                name,
                params or [_skip_param(_empty_reason(session, f"{fmt or 'model'} artifact", limits))],
                indirect=True,
                scope="session",
            )


def _empty_reason(session: MinervaSession, what: str, limits: dict[str, list[str] | None]) -> str:
    models = ", ".join(m.name for m in session.models) or "none"
    backends = ", ".join(b.name for b in session.backends) or "none"
    restricted = {k: v for k, v in limits.items() if v is not None}
    extra = f"; the test restricts {restricted}" if restricted else ""
    return f"no {what} to run for models [{models}] and backends [{backends}]{extra}"


def _skip_or_fail(skip: type[MinervaError], exc: MinervaError) -> NoReturn:
    # Outside the ``except`` block, so the report is the one line and not a chained traceback.
    if isinstance(exc, skip):
        pytest.skip(str(exc))
    pytest.fail(str(exc), pytrace=False)


def resolve_or_skip(session: MinervaSession, case: Case) -> ResolvedArtifact:
    try:
        return session.resolve(case)
    except MinervaError as exc:
        error = exc
    _skip_or_fail(ArtifactMissing, error)


def load_or_skip(session: MinervaSession, case: Case) -> Backend:
    reason = session.check_runnable(case)
    if reason:
        pytest.skip(reason)
    artifact = resolve_or_skip(session, case)
    try:
        return session.backend(case, artifact)
    except MinervaError as exc:
        error = exc
    _skip_or_fail(BackendUnavailable, error)


@pytest.fixture(scope="session")
def minerva_session(request: pytest.FixtureRequest) -> MinervaSession:
    """The run's catalog, resolver, selected models and loaded backends."""
    return get_session(request.config)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """A loaded backend for one matrix case (model x format x backend x device)."""
    case: Case | None = getattr(request, "param", None)
    if case is None:
        pytest.fail("the backend fixture is parametrized by pytest-minerva; it cannot be used unparametrized")
    session = get_session(request.config)
    loaded = load_or_skip(session, case)
    try:
        yield loaded
    finally:
        session.release(case)


@pytest.fixture
def backend_pair(request: pytest.FixtureRequest) -> LoadedPair:
    """A reference and a candidate backend that must compute the same function."""
    pair: Pair | None = getattr(request, "param", None)
    if pair is None:
        pytest.fail("the backend_pair fixture is parametrized by pytest-minerva; it cannot be used unparametrized")
    session = get_session(request.config)
    reference = load_or_skip(session, pair.reference)
    candidate = load_or_skip(session, pair.candidate)
    return LoadedPair(pair, reference, candidate, session.resolve(pair.reference), session.resolve(pair.candidate))


def _artifact_fixture(request: pytest.FixtureRequest) -> ResolvedArtifact:
    case: Case | None = getattr(request, "param", None)
    if case is None:
        pytest.fail(f"{request.fixturename} is parametrized by pytest-minerva; it cannot be used unparametrized")
    return resolve_or_skip(get_session(request.config), case)


@pytest.fixture(scope="session")
def model_artifact(request: pytest.FixtureRequest) -> ResolvedArtifact:
    """A checked artifact for one model x format x quantization."""
    return _artifact_fixture(request)


@pytest.fixture(scope="session")
def gguf_model(request: pytest.FixtureRequest) -> ResolvedArtifact:
    """A checked GGUF file, one per model and quantization."""
    return _artifact_fixture(request)


@pytest.fixture(scope="session")
def safetensors_model(request: pytest.FixtureRequest) -> ResolvedArtifact:
    """A checked SafeTensors directory (derived from the GGUF when the model has none)."""
    return _artifact_fixture(request)


@pytest.fixture(scope="session")
def mlx_model(request: pytest.FixtureRequest) -> ResolvedArtifact:
    """A checked MLX directory (derived from SafeTensors when the model has none)."""
    return _artifact_fixture(request)


def default_gguf(session: MinervaSession | None = None) -> Path:
    """The GGUF of the session's first model that has one (the catalog's default models
    without a session), resolved and checked like every other artifact."""
    if session is None:
        from pytest_minerva.options import Settings
        from pytest_minerva.session import build_session

        session = build_session(Settings())
    for model in session.models:
        for spec in model.artifacts:
            if spec.format == "gguf":
                return Path(session.resolver.resolve(model, spec).path)
    raise MinervaError(f"none of the models [{', '.join(m.name for m in session.models)}] has a GGUF to serve")


@pytest.fixture(scope="session")
def minerva_llama_server(request: pytest.FixtureRequest) -> Iterator[LlamaCppServer]:
    """``llama_cpp.server`` on a free loopback port with one thread, serving the run's first
    GGUF model; stopped even when tests fail."""
    from pytest_minerva.serving.server import serve_gguf, server_unavailable_reason

    reason = server_unavailable_reason()
    if reason:
        pytest.skip(reason)
    try:
        path = default_gguf(get_session(request.config))
    except MinervaError as exc:
        pytest.skip(str(exc))
    with serve_gguf(path, threads=1, n_ctx=2048) as server:
        yield server


#: Every fixture this module defines (what :func:`uses_plugin` looks for).
_OUR_FIXTURES = (*MATRIX_FIXTURES, "minerva_session", "minerva_llama_server")
