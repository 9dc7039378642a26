"""Per-run state: catalog, backends, resolver, selected matrix, and loaded backends.

:func:`build_session` is the one way to make a :class:`MinervaSession`: the pytest plugin
calls it with pytest's hook relay (``pytest_minerva.fixtures.get_session`` keeps it); the
``minerva`` command line, the asv suite and the tools call it without one and get the relay
of :func:`pytest_minerva.hookspecs.hook_relay`, so a backend or model that an installed
package registers by entry point is seen everywhere.

Backends are loaded through :meth:`MinervaSession.build_backend`, which applies the
guards of :mod:`pytest_minerva.guards`: a memory check before the load, a time
limit on the load and on every generation, and, for every engine that runs native code,
a worker process shared by that engine's models (``--minerva-no-isolate`` loads them here).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import pytest

from pytest_minerva.backends import BackendRegistry, BackendSpec, builtin_registry
from pytest_minerva.backends.base import Backend, LoadOptions
from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
from pytest_minerva.errors import BackendUnavailable, MinervaError, printable
from pytest_minerva.guards import (
    IsolatedBackend,
    Limits,
    WorkerPool,
    artifact_bytes,
    check_memory,
    keep_stderr,
    load_guarded,
)
from pytest_minerva.hardware import Hardware, detect
from pytest_minerva.matrix import Case, Pair, artifact_cases, backend_cases, pairs
from pytest_minerva.models.catalog import Catalog, ModelSpec
from pytest_minerva.models.local import select_models
from pytest_minerva.models.resolve import ResolvedArtifact, Resolver
from pytest_minerva.options import Settings

MAX_LOADED_BACKENDS = 4


@dataclass
class MinervaSession:
    settings: Settings
    catalog: Catalog
    registry: BackendRegistry
    resolver: Resolver
    hook: Any = None
    #: pytest's config under pytest, else None (the hooks that take ``config`` get None).
    config: pytest.Config | None = None
    models: list[ModelSpec] = field(default_factory=list)
    backends: list[BackendSpec] = field(default_factory=list)
    #: The artifacts this run resolved, by id (the plugin lists them in its summary).
    used: dict[str, ResolvedArtifact] = field(default_factory=dict)
    _loaded: OrderedDict[tuple[str, str, str], Backend] = field(default_factory=OrderedDict)
    _hardware: Hardware | None = None
    pool: WorkerPool = field(default_factory=WorkerPool)
    #: Backends that run in this process although isolation was due, and why (for the summary).
    in_process: dict[str, str] = field(default_factory=dict)

    @property
    def hardware(self) -> Hardware:
        if self._hardware is None:
            self._hardware = detect()
        return self._hardware

    def devices_for(self, backend: BackendSpec) -> list[str]:
        """Devices to run ``backend`` on: explicit ones as asked (absent ones skip later), or auto."""
        explicit = [d for d in self.settings.devices if d != "auto"]
        if explicit:
            return [d for d in explicit if d in backend.devices] or explicit[:0]
        return [d for d in self.hardware.available_devices() if d in backend.devices]

    def cases(self, formats: list[str] | None = None, backends: list[str] | None = None) -> list[Case]:
        specs = [b for b in self.backends if backends is None or b.name in backends]
        devices = {b.name: self.devices_for(b) for b in specs}
        return backend_cases(self.models, specs, devices, formats)

    def artifact_cases(self, formats: list[str] | None = None) -> list[Case]:
        return artifact_cases(self.models, formats)

    def pairs(self, kinds: list[str] | None = None) -> list[Pair]:
        all_cases = backend_cases(self.models, self.backends, {b.name: self.devices_for(b) for b in self.backends})
        return pairs(all_cases, kinds) if kinds else pairs(all_cases)

    def resolve(self, case: Case) -> ResolvedArtifact:
        artifact = self.resolver.resolve(case.model, case.artifact)
        self.used.setdefault(artifact.id, artifact)
        return artifact

    def machine_info(self) -> dict[str, Any]:
        """The facts of this machine that go into every results document: hardware, OS,
        Python, then what ``pytest_minerva_generate_machine_info`` hooks add, then the edits
        of ``pytest_minerva_update_machine_info`` hooks."""
        return self._machine_info()[0]

    def _machine_info(self) -> tuple[dict[str, Any], list[str]]:
        """The machine info, and the keys the hooks added or edited."""
        from pytest_minerva.storage.results import machine_info

        base = machine_info()
        extra: dict[str, Any] = {}
        if self.hook is not None:
            for facts in self.hook.pytest_minerva_generate_machine_info(config=self.config, session=self):
                if isinstance(facts, dict):
                    extra.update(facts)
        info = {**base, **extra}
        if self.hook is not None:
            self.hook.pytest_minerva_update_machine_info(config=self.config, session=self, machine_info=info)
        hooked = [k for k in info if k in extra or k not in base or info[k] != base[k]]
        return info, hooked

    def _machine_hooks(self) -> bool:
        """Whether any plugin implements a machine-info hook (the header reads them only then)."""
        if self.hook is None:
            return False
        names = ("pytest_minerva_generate_machine_info", "pytest_minerva_update_machine_info")
        return any(getattr(self.hook, name).get_hookimpls() for name in names)

    def update_report(self, report: dict[str, Any]) -> dict[str, Any]:
        """Let ``pytest_minerva_update_report`` hooks edit a results document before it is written."""
        if self.hook is not None:
            self.hook.pytest_minerva_update_report(config=self.config, session=self, report=report)
        return report

    def load_options(self, device: str) -> LoadOptions:
        extra: dict[str, object] = {}
        if self.settings.endpoint:
            extra["endpoint"] = self.settings.endpoint
        if self.settings.api_key_env:
            extra["api_key_env"] = self.settings.api_key_env
        return LoadOptions(device=device, threads=self.settings.threads or default_threads(), extra=extra)

    def check_runnable(self, case: Case) -> str | None:
        """Why ``case`` cannot run here (absent device or library), or ``None``."""
        assert case.backend is not None and case.device is not None
        if not self.hardware.has(case.device):
            return f"{case.id}: {self.hardware.missing_reason(case.device)}"
        return case.backend.unavailable_reason()

    def limits(self, artifact: ResolvedArtifact) -> Limits:
        """Time limits for loading and running ``artifact``: ``--minerva-timeout``, or scaled to its size."""
        timeout: float | None = self.settings.timeout_s
        return Limits.for_size(artifact_bytes(artifact.path), timeout)

    def isolates(self, spec: BackendSpec) -> bool:
        """Whether ``spec`` runs in a worker: ``--minerva-isolate`` / ``--minerva-no-isolate``,
        else every backend whose spec says it runs native code."""
        return spec.native if self.settings.isolate is None else self.settings.isolate

    def _local_make_backend(self) -> str | None:
        """A ``pytest_minerva_make_backend`` implementation that a worker cannot run (one from a
        conftest or a plugin object rather than a ``pytest_minerva`` entry point), or None."""
        if self.hook is None:
            return None
        caller = getattr(self.hook, "pytest_minerva_make_backend", None)
        impls = caller.get_hookimpls() if caller is not None else []
        from_entry_points = {ep.module for ep in importlib.metadata.entry_points(group="pytest_minerva")}
        for impl in impls:
            module = getattr(impl.plugin, "__name__", "")
            if module.split(":")[0] not in from_entry_points and module != "pytest_minerva.hookspecs":
                return str(getattr(impl.plugin, "__file__", None) or impl.plugin_name)
        return None

    def build_backend(self, case: Case, artifact: ResolvedArtifact, options: LoadOptions) -> Backend:
        """Load ``artifact`` for ``case`` under the run's guards.

        Skips (:class:`~pytest_minerva.guards.NotEnoughMemory`, a BackendUnavailable)
        when the load cannot fit in free memory. An engine that runs native code is loaded in
        the session's worker process for that engine (:meth:`isolates`), where the
        ``pytest_minerva_make_backend`` hooks of entry-point plugins run; a crash there fails
        the step with :class:`~pytest_minerva.guards.WorkerCrashed` and the session goes on.
        A backend the worker cannot build (its class lives in a conftest, or a conftest makes
        it) is loaded here instead, and the summary says so. In this process every load and
        generation still has its time limit.
        """
        assert case.backend is not None
        spec = case.backend
        what = f"{spec.name} on {options.device} with {artifact.id}"
        needed = check_memory(what, spec, artifact, options)
        limits = self.limits(artifact)
        local_hook = self._local_make_backend() if self.isolates(spec) else None
        if local_hook is not None:
            self.in_process.setdefault(spec.name, f"a pytest_minerva_make_backend hook in {local_hook} builds it")
        elif self.isolates(spec):
            try:
                return IsolatedBackend(spec, artifact, options, limits, what=what, needed=needed, pool=self.pool)
            except BackendUnavailable as exc:
                if self.settings.isolate or not self._importable_here(spec):
                    raise
                self.in_process.setdefault(spec.name, f"its worker could not build it ({str(exc).splitlines()[0]})")

        def build() -> Backend:
            built = None
            if self.hook is not None:
                built = self.hook.pytest_minerva_make_backend(spec=spec, artifact=artifact, options=options)
            return built if built is not None else spec.build(artifact, options)

        return load_guarded(what, build, limits, needed=needed, device=options.device)

    @staticmethod
    def _importable_here(spec: BackendSpec) -> bool:
        try:
            spec.factory()
        except BackendUnavailable:
            return False
        return True

    def backend(self, case: Case, artifact: ResolvedArtifact | None = None) -> Backend:
        """A loaded backend for ``case``, shared between tests; at most a few stay loaded.
        ``artifact`` is ``case``'s artifact where the caller resolved it already."""
        assert case.backend is not None and case.device is not None
        key = (case.model.name, case.artifact.variant, f"{case.backend.name}@{case.device}")
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        if artifact is None:
            artifact = self.resolve(case)
        built = self.build_backend(case, artifact, self.load_options(case.device))
        self._loaded[key] = built
        while len(self._loaded) > MAX_LOADED_BACKENDS:
            _, old = self._loaded.popitem(last=False)
            old.close()
        return built

    def release(self, case: Case) -> None:
        assert case.backend is not None
        key = (case.model.name, case.artifact.variant, f"{case.backend.name}@{case.device}")
        loaded = self._loaded.pop(key, None)
        if loaded is not None:
            loaded.close()

    def close(self) -> None:
        while self._loaded:
            _, backend = self._loaded.popitem()
            try:
                backend.close()
            except Exception:  # a failing close must not hide the test results
                continue
        self.pool.close()

    def versions(self) -> dict[str, str]:
        """Versions of the backend libraries, read from package metadata (nothing is imported)."""
        found = {"pytest-minerva": _version("pytest-minerva")}
        for spec in self.backends:
            found.update(spec.versions())
        return {k: v for k, v in found.items() if v}

    def _identity_lines(self, model: ModelSpec) -> list[str]:
        """Header lines on what ``model``'s files are: for a ``--model PATH`` model, the identity facts
        its header states; for a catalog model, each file here whose bytes are not the catalog's
        pinned ones ("unpinned", with the reason). Nothing is derived, generated or assembled for this
        (an assembled file is checked against its pin when it is built)."""
        from pytest_minerva.models.identity import describe_facts

        lines = []
        for spec in model.artifacts:
            if spec.derive_from or spec.generator or spec.assemble or (model.generator and not model.explicit_path):
                continue
            try:
                found = self.resolver.locate(model, spec)
                if found is None:
                    continue
                path, _source = found
                if model.explicit_path is not None:
                    # Resolution is memoized: the tests get this checked artifact without a second look.
                    facts = describe_facts(self.resolver.resolve(model, spec).facts)
                    lines.append(f"minerva: {model.name} is {printable(path)}: {facts}")
                    continue
                why = self.resolver.pin_problem(path, spec)
            except (MinervaError, OSError) as exc:
                lines.append(f"minerva: {model.name}: {_header_problem(exc)}")
                continue
            if why:
                what = f"{model.name} {spec.format}" + (f" {spec.quant}" if spec.quant else "")
                lines.append(f"minerva: UNPINNED {what} at {printable(path)}: {why}")
        return lines

    def report_header(self) -> list[str]:
        lines = [f"minerva: hardware: {self.hardware.header_line()}"]
        names = ", ".join(m.name for m in self.models) or "none"
        lines.append(f"minerva: models: {names}; cache: {self.resolver.cache.root}")
        backends = []
        for spec in self.backends:
            versions = spec.versions()
            reason = spec.unavailable_reason()
            state = "not installed" if reason else ", ".join(f"{k} {v}" for k, v in versions.items()) or "installed"
            devices = "/".join(self.devices_for(spec)) or "no device"
            backends.append(f"{spec.name} ({state}; {devices})")
        lines.append(f"minerva: backends: {'; '.join(backends)}")
        for model in self.models:
            lines.extend(self._identity_lines(model))
        if self._machine_hooks():
            info, hooked = self._machine_info()
            if hooked:
                lines.append("minerva: machine: " + ", ".join(f"{k}={info[k]}" for k in hooked))
        return lines


def _header_problem(exc: Exception) -> str:
    return printable(f"{type(exc).__name__}: {exc}" if not isinstance(exc, MinervaError) else str(exc))


def build_session(settings: Settings, hook: Any = None, *, config: pytest.Config | None = None) -> MinervaSession:
    """The one way to build a session.

    ``hook`` is pytest's ``config.hook`` under pytest; elsewhere leave it out to get the relay
    of the minerva hookspecs and every installed ``pytest_minerva`` entry point. Hooks add
    models and backends to the catalog and registry before the run's selection is made.
    """
    from pytest_minerva.hookspecs import hook_relay

    keep_stderr()
    if hook is None:
        hook = hook_relay()
    catalog = Catalog.load()
    registry = builtin_registry()
    hook.pytest_minerva_register_models(catalog=catalog)
    hook.pytest_minerva_register_backends(registry=registry)
    cache = ArtifactCache(settings.cache_dir or default_cache_dir())
    cache.ensure_writable()
    resolver = Resolver(
        cache,
        model_dir=settings.model_dir,
        derive=settings.derive,
        hook=hook.pytest_minerva_resolve_model,
        catalog=list(catalog),
    )
    session = MinervaSession(settings, catalog, registry, resolver, hook, config)
    session.models = select_models(catalog, settings.models or catalog.defaults())
    if settings.backends:
        session.backends = [registry.get(name) for name in settings.backends]
    else:
        session.backends = [spec for spec in registry if not spec.opt_in]
    return session


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def default_threads() -> int:
    """Physical cores (hyper-threads slow llama.cpp down), at least 1."""
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:
        return max(1, os.cpu_count() or 1)
