"""Per-run state: catalog, backends, resolver, selected matrix, and loaded backends.

One :class:`MinervaSession` lives in ``config.stash[SESSION_KEY]``. It is also what the
``minerva`` command line builds, without pytest, from the same hooks.

Backends are loaded through :meth:`MinervaSession.build_backend`, which applies the
guards of :mod:`pytest_minerva.isolation`: a memory check before the load, a time
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
from pytest_minerva.catalog import Catalog, ModelSpec
from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
from pytest_minerva.errors import BackendUnavailable
from pytest_minerva.hardware import Hardware, detect
from pytest_minerva.isolation import (
    IsolatedBackend,
    Limits,
    WorkerPool,
    artifact_bytes,
    check_memory,
    keep_stderr,
    load_guarded,
)
from pytest_minerva.matrix import Case, Pair, artifact_cases, backend_cases, pairs
from pytest_minerva.options import Settings
from pytest_minerva.resolve import ResolvedArtifact, Resolver, select_models

SESSION_KEY = pytest.StashKey["MinervaSession"]()
MAX_LOADED_BACKENDS = 4


@dataclass
class UsedArtifact:
    artifact: ResolvedArtifact
    tests: int = 0


@dataclass
class MinervaSession:
    settings: Settings
    catalog: Catalog
    registry: BackendRegistry
    resolver: Resolver
    hook: Any = None
    models: list[ModelSpec] = field(default_factory=list)
    backends: list[BackendSpec] = field(default_factory=list)
    used: dict[str, UsedArtifact] = field(default_factory=dict)
    _loaded: OrderedDict[tuple[str, str, str], Backend] = field(default_factory=OrderedDict)
    _hardware: Hardware | None = None
    pool: WorkerPool = field(default_factory=WorkerPool)
    #: Backends that run in this process although isolation was due, and why (for the summary).
    in_process: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, hook: Any = None) -> MinervaSession:
        """Build the session; ``hook`` is a pluggy hook relay carrying the minerva hookspecs."""
        keep_stderr()
        catalog = Catalog.load()
        registry = builtin_registry()
        if hook is not None:
            hook.pytest_minerva_register_models(catalog=catalog)
            hook.pytest_minerva_register_backends(registry=registry)
        cache = ArtifactCache(settings.cache_dir or default_cache_dir())
        resolver = Resolver(
            cache,
            model_dir=settings.model_dir,
            derive=settings.derive,
            hook=hook.pytest_minerva_resolve_model if hook is not None else None,
        )
        session = cls(settings, catalog, registry, resolver, hook)
        session.models = select_models(catalog, settings.models or catalog.defaults())
        if settings.backends:
            session.backends = [registry.get(name) for name in settings.backends]
        else:
            session.backends = [spec for spec in registry if not spec.opt_in]
        return session

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
        used = self.used.setdefault(artifact.id, UsedArtifact(artifact))
        used.tests += 1
        return artifact

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

        Skips (:class:`~pytest_minerva.isolation.NotEnoughMemory`, a BackendUnavailable)
        when the load cannot fit in free memory. An engine that runs native code is loaded in
        the session's worker process for that engine (:meth:`isolates`), where the
        ``pytest_minerva_make_backend`` hooks of entry-point plugins run; a crash there fails
        the step with :class:`~pytest_minerva.isolation.WorkerCrashed` and the session goes on.
        A backend the worker cannot build (its class lives in a conftest, or a conftest makes
        it) is loaded here instead, and the summary says so. In this process every load and
        generation still has its time limit.
        """
        assert case.backend is not None
        spec = case.backend
        what = f"{spec.name} on {options.device} with {artifact.id}"
        needed = check_memory(what, spec.name, artifact, options)
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

    def backend(self, case: Case) -> Backend:
        """A loaded backend for ``case``, shared between tests; at most a few stay loaded."""
        assert case.backend is not None and case.device is not None
        key = (case.model.name, case.artifact.variant, f"{case.backend.name}@{case.device}")
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
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
        return lines


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
