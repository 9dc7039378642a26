"""Backend registry: which engines exist, what they load, and how to build one lazily.

Built-in adapters are registered by ``"module:Class"`` strings so that importing
pytest-minerva never imports torch, mlx or llama_cpp. Third parties add theirs
through the ``pytest_minerva_register_backends`` hook::

    def pytest_minerva_register_backends(registry):
        registry.add(BackendSpec("myengine", formats=("gguf",), target="myengine.minerva:Backend"))
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pytest_minerva.backends.base import Backend, GenerationRequest, LoadOptions, TokenEvent
from pytest_minerva.errors import BackendUnavailable, MinervaError
from pytest_minerva.models.catalog import check_name

if TYPE_CHECKING:
    from pytest_minerva.models.resolve import ResolvedArtifact

__all__ = [
    "Backend",
    "BackendRegistry",
    "BackendSpec",
    "GenerationRequest",
    "LoadOptions",
    "TokenEvent",
    "builtin_registry",
]


@dataclass(frozen=True)
class BackendSpec:
    """How to find and build one backend.

    ``requires`` lists import names that must be importable (checked without
    importing them); ``distributions`` the PyPI names whose versions go into reports.
    ``opt_in`` backends run only when named with ``--backend`` (a served model, which
    starts a server per artifact, is not part of the default matrix). ``native`` says the
    engine runs native code in the process that loads it, where a segfault or abort would
    end that process: such backends run in a worker process by default
    (:mod:`pytest_minerva.guards`). Only a backend that is pure Python in this process
    (an HTTP client, say) should set it to False. ``crash_hint`` is what ``minerva doctor``
    tells a user whose engine crashed.
    """

    name: str
    formats: tuple[str, ...]
    target: str
    devices: tuple[str, ...] = ("cpu",)
    requires: tuple[str, ...] = ()
    distributions: tuple[str, ...] = ()
    install_hint: str = ""
    description: str = ""
    options: dict[str, object] = field(default_factory=dict)
    opt_in: bool = False
    native: bool = True
    crash_hint: str = ""
    #: Format -> the number format the engine computes in when it loads that format, where that
    #: is not the file's own (transformers dequantizes a GGUF to "f32"). Tolerance profiles are
    #: picked by it; a format left out is computed as it is stored (a GGUF engine that runs the
    #: quantized blocks, like llama.cpp).
    computes_in: dict[str, str] = field(default_factory=dict)
    #: Whether the engine holds every weight in ``LoadOptions.dtype`` whatever the file stores
    #: (transformers), so a load needs parameters x dtype bytes rather than the file's size.
    holds_weights_in_load_dtype: bool = False
    #: Pair kind -> format: the comparisons (see ``pytest_minerva.matrix.pairs``) in which this
    #: engine on that format's primary artifact is the reference the others are held to.
    reference_for: dict[str, str] = field(default_factory=dict)

    def missing_requirements(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def available(self) -> bool:
        return not self.missing_requirements()

    def unavailable_reason(self) -> str | None:
        missing = self.missing_requirements()
        if not missing:
            return None
        hint = f"; install it with {self.install_hint}" if self.install_hint else ""
        return f"backend {self.name} needs {', '.join(missing)}, which is not installed{hint}"

    def versions(self) -> dict[str, str]:
        found = {}
        for dist in self.distributions:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return found

    def factory(self) -> type[Backend]:
        from pytest_minerva.models.targets import load_target

        reason = self.unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        try:
            return load_target(self.target)  # type: ignore[no-any-return]
        except ImportError as exc:
            raise BackendUnavailable(f"backend {self.name}: cannot import {self.target}: {exc}") from None

    def build(self, artifact: ResolvedArtifact, options: LoadOptions) -> Backend:
        """Load ``artifact`` with this backend's default factory."""
        return self.factory()(artifact, options)  # type: ignore[call-arg]


class BackendRegistry:
    """Name -> :class:`BackendSpec`, in registration order."""

    def __init__(self) -> None:
        self._specs: dict[str, BackendSpec] = {}

    def add(self, spec: BackendSpec, *, replace: bool = False) -> None:
        check_name(spec.name, "backend name")
        if spec.name in self._specs and not replace:
            raise MinervaError(f"backend {spec.name!r} is already registered; pass replace=True to override")
        self._specs[spec.name] = spec

    def get(self, name: str) -> BackendSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self._specs) or "none"
            raise MinervaError(f"unknown backend {name!r}; registered: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[BackendSpec]:
        return iter(self._specs.values())

    def names(self) -> list[str]:
        return list(self._specs)

    def for_format(self, fmt: str) -> list[BackendSpec]:
        return [s for s in self._specs.values() if fmt in s.formats]


def builtin_registry() -> BackendRegistry:
    """A registry holding the adapters that ship with pytest-minerva."""
    registry = BackendRegistry()
    registry.add(
        BackendSpec(
            "llama_cpp",
            formats=("gguf",),
            target="pytest_minerva.backends.llama_cpp:LlamaCppBackend",
            devices=("cpu", "cuda", "metal"),
            requires=("llama_cpp",),
            distributions=("llama-cpp-python",),
            install_hint="pip install 'pytest-minerva[gguf]'",
            description="llama.cpp through llama-cpp-python",
            reference_for={"tokenizer": "gguf", "quantization": "gguf"},
            crash_hint="rebuild llama-cpp-python for this CPU (native off, its SIMD flags, AMX off) and "
            'smoke-check it: python -m pytest_minerva.backends.llama_cpp_build install --python "$(command -v python)"',
        )
    )
    registry.add(
        BackendSpec(
            "transformers",
            formats=("safetensors", "gguf"),
            target="pytest_minerva.backends.transformers:TransformersBackend",
            devices=("cpu", "cuda", "metal"),
            requires=("torch", "transformers"),
            distributions=("transformers", "torch", "accelerate", "gguf"),
            install_hint="pip install 'pytest-minerva[transformers]'",
            computes_in={"gguf": "f32"},
            holds_weights_in_load_dtype=True,
            reference_for={"cross-backend": "safetensors"},
            crash_hint="reinstall torch for this machine (CPU: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu)",
            description="Hugging Face transformers on torch (GGUF is dequantized on load)",
        )
    )
    registry.add(
        BackendSpec(
            "mlx_lm",
            formats=("mlx",),
            target="pytest_minerva.backends.mlx_lm:MlxLmBackend",
            devices=("cpu", "metal"),
            requires=("mlx", "mlx_lm"),
            distributions=("mlx", "mlx-lm"),
            install_hint="pip install 'pytest-minerva[mlx]'",
            description="Apple MLX through mlx-lm (the CPU build on Linux)",
        )
    )
    registry.add(
        BackendSpec(
            "openai_http",
            formats=("gguf",),
            target="pytest_minerva.backends.openai_http:OpenAIHttpBackend",
            devices=("cpu", "cuda", "metal"),
            requires=("llama_cpp",),
            distributions=("llama-cpp-python",),
            install_hint="pip install 'pytest-minerva[serve]'",
            description="any OpenAI-compatible server (--minerva-endpoint), else llama_cpp.server on loopback",
            opt_in=True,
            native=False,
        )
    )
    return registry
