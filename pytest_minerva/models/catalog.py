"""The model catalog: which models exist, in which formats, and where each comes from.

The catalog is data (``fixtures/models.toml``); this module parses and validates it.
Other packages add entries through the ``pytest_minerva_register_models`` hook.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError, PathEscape, UnknownModel, UnsafeFile

FORMATS = ("gguf", "safetensors", "mlx")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class CatalogError(MinervaError):
    """The catalog file is malformed; the message names the file and the entry."""


def fixtures_dir() -> Path:
    """The directory holding the committed catalog, prompts and golden files."""
    package = Path(__file__).resolve().parent.parent  # pytest_minerva/
    here = package
    for candidate in (package.parent / "fixtures", package / "_fixtures"):
        if (candidate / "models.toml").is_file():
            return candidate
    raise CatalogError(f"{here}: cannot find the fixtures directory holding models.toml")


def check_name(name: str, what: str = "model name") -> str:
    """Return ``name`` if it is a safe identifier, else raise :class:`PathEscape`."""
    if not NAME_PATTERN.match(name):
        raise PathEscape(
            f"{what} {name!r} is not allowed: use lower-case letters, digits, '.', '_' and '-' "
            "(it becomes a directory name, so '/', '..' and absolute paths are refused)"
        )
    if ".." in name:
        raise PathEscape(f"{what} {name!r} is not allowed: it contains '..'")
    return name


def check_file_name(name: str, where: str) -> str:
    """A file named by the catalog must be a plain name: no directories, no '..', no pickles."""
    if not _FILE_PATTERN.match(name) or ".." in name:
        raise PathEscape(f"{where}: file name {name!r} must be a plain file name without '/' or '..'")
    from pytest_minerva.formats import PICKLE_SUFFIXES, pickle_refusal

    if Path(name).suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeFile(f"{where}: file {name!r}: {pickle_refusal(name)}")
    return name


def check_artifact(spec: ArtifactSpec, where: str) -> ArtifactSpec:
    """Refuse an artifact whose file names could leave its directory or are pickled checkpoints."""
    for name in spec.files:
        check_file_name(str(name), where)
    if spec.package_path is not None:
        check_file_name(str(spec.package_path), where)
    return spec


@dataclass(frozen=True)
class ArtifactSpec:
    """One format/quantization of a model, and how to obtain it."""

    format: str
    quant: str | None = None
    files: tuple[str, ...] = ()
    hf_repo: str | None = None
    revision: str | None = None
    size: int | None = None
    sha256: str | None = None
    approx_size_mb: float | None = None
    package: str | None = None
    package_module: str | None = None
    package_path: str | None = None
    assemble: str | None = None
    derive_from: str | None = None
    generator: str | None = None
    primary: bool = False

    @property
    def variant(self) -> str:
        """``gguf-q4_1``-style id of this artifact within its model."""
        return f"{self.format}-{self.quant.lower()}" if self.quant else self.format

    @property
    def is_single_file(self) -> bool:
        return self.format == "gguf"


@dataclass(frozen=True)
class ModelSpec:
    """A catalog entry: one model and its artifacts."""

    name: str
    architecture: str
    description: str = ""
    license: str | None = None
    context_length: int | None = None
    aliases: tuple[str, ...] = ()
    default: bool = False
    generator: str | None = None
    seed: int | None = None
    artifacts: tuple[ArtifactSpec, ...] = ()
    explicit_path: Path | None = None
    #: Identity facts every file of this model states in its header (``[models.NAME.facts]``):
    #: block_count, embedding_length, head_count, head_count_kv, vocab_size
    #: (:mod:`pytest_minerva.models.identity`); ``architecture`` and ``context_length`` are keys of their own.
    facts: Mapping[str, int] = field(default_factory=dict)

    def variants(self, fmt: str) -> list[ArtifactSpec]:
        return [a for a in self.artifacts if a.format == fmt]

    def primary(self, fmt: str) -> ArtifactSpec | None:
        found = self.variants(fmt)
        for spec in found:
            if spec.primary:
                return spec
        return found[0] if found else None

    def artifact(self, fmt: str, quant: str | None = None) -> ArtifactSpec:
        if quant is None:
            spec = self.primary(fmt)
            if spec is None:
                raise UnknownModel(f"model {self.name!r} has no {fmt} artifact in the catalog")
            return spec
        for spec in self.variants(fmt):
            if spec.quant and spec.quant.lower() == quant.lower():
                return spec
        known = ", ".join(a.quant or "-" for a in self.variants(fmt)) or "none"
        raise UnknownModel(f"model {self.name!r} has no {fmt} {quant}; known: {known}")


_ARTIFACT_KEYS = {f for f in ArtifactSpec.__dataclass_fields__}
_MODEL_KEYS = {f for f in ModelSpec.__dataclass_fields__} - {"name", "artifacts", "explicit_path"}
#: The facts a ``[models.NAME.facts]`` table may state.
FACT_KEYS = ("block_count", "embedding_length", "head_count", "head_count_kv", "vocab_size")


def _facts_from_table(table: Any, where: str) -> dict[str, int]:
    if not isinstance(table, dict):
        raise CatalogError(f"{where}: facts must be a table of {', '.join(FACT_KEYS)}")
    unknown = sorted(set(table) - set(FACT_KEYS))
    if unknown:
        raise CatalogError(f"{where}: unknown fact(s) {unknown}; known: {', '.join(FACT_KEYS)}")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CatalogError(f"{where}: fact {key} must be a whole number of 1 or more, got {value!r}")
    return dict(table)


def _artifact_from_table(table: Mapping[str, Any], where: str) -> ArtifactSpec:
    unknown = set(table) - _ARTIFACT_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {sorted(unknown)}")
    fmt = table.get("format")
    if fmt not in FORMATS:
        raise CatalogError(f"{where}: format must be one of {FORMATS}, got {fmt!r}")
    files = tuple(check_file_name(str(f), where) for f in table.get("files", ()))
    sha = table.get("sha256")
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", str(sha)):
        raise CatalogError(f"{where}: sha256 must be 64 lower-case hex digits")
    if table.get("package_path") is not None:
        check_file_name(str(table["package_path"]), where)
    kwargs = dict(table)
    kwargs["files"] = files
    return ArtifactSpec(**kwargs)


def _model_from_table(name: str, table: Mapping[str, Any], where: str) -> ModelSpec:
    check_name(name)
    artifacts_raw = table.get("artifacts", [])
    unknown = set(table) - _MODEL_KEYS - {"artifacts"}
    if unknown:
        raise CatalogError(f"{where}: model {name!r} has unknown key(s) {sorted(unknown)}")
    if "architecture" not in table:
        raise CatalogError(f"{where}: model {name!r} needs an 'architecture'")
    artifacts = tuple(
        _artifact_from_table(a, f"{where}: model {name!r} artifact #{i + 1}") for i, a in enumerate(artifacts_raw)
    )
    formats_present = {a.format for a in artifacts}
    for art in artifacts:
        if art.derive_from and art.derive_from not in formats_present:
            raise CatalogError(f"{where}: model {name!r} derives {art.format} from {art.derive_from}, which it lacks")
    kwargs = {k: v for k, v in table.items() if k != "artifacts"}
    kwargs["aliases"] = tuple(check_name(a, "alias") for a in kwargs.get("aliases", ()))
    kwargs["facts"] = _facts_from_table(kwargs.get("facts", {}), f"{where}: model {name!r}")
    return ModelSpec(name=name, artifacts=artifacts, **kwargs)


def parse_catalog(text: str, where: str) -> dict[str, ModelSpec]:
    """Parse catalog TOML; errors name ``where`` and the offending entry."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{where}: not valid TOML: {exc}") from None
    models = data.get("models")
    if not isinstance(models, dict):
        raise CatalogError(f"{where}: expected a [models.NAME] table")
    return {name: _model_from_table(name, table, where) for name, table in models.items()}


@dataclass
class Catalog:
    """All known models, by name and alias."""

    models: dict[str, ModelSpec] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        path = path or fixtures_dir() / "models.toml"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read the catalog: {exc.strerror}") from None
        return cls(parse_catalog(text, str(path)))

    def add(self, model: ModelSpec) -> None:
        """Register a model (third-party catalogs call this from their hook).

        Raises :class:`~pytest_minerva.errors.PathEscape` for a name, alias or file name
        that could leave the model or cache directory, and
        :class:`~pytest_minerva.errors.UnsafeFile` for a pickled checkpoint.
        """
        check_name(model.name)
        for alias in model.aliases:
            check_name(alias, "alias")
        # A model given by path names files found by listing its directory, not catalog text.
        if model.explicit_path is None:
            for index, artifact in enumerate(model.artifacts):
                check_artifact(artifact, f"model {model.name!r} artifact #{index + 1}")
        self.models[model.name] = model

    def extend(self, models: Iterable[ModelSpec]) -> None:
        for model in models:
            self.add(model)

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self.models.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.find(name) is not None

    def find(self, name: str) -> ModelSpec | None:
        if name in self.models:
            return self.models[name]
        for model in self.models.values():
            if name in model.aliases:
                return model
        return None

    def get(self, name: str) -> ModelSpec:
        model = self.find(name)
        if model is None:
            known = ", ".join(sorted(self.models))
            raise UnknownModel(f"unknown model {name!r}: not a path and not in the catalog ({known})")
        return model

    def defaults(self) -> list[str]:
        return [m.name for m in self.models.values() if m.default]
