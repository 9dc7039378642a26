"""Models the user names by path: ``--model some/file.gguf`` or a model directory.

:func:`select_models` turns ``--model`` values into model specs: a catalog name or alias
is looked up; anything that looks like a path is checked (:func:`explicit_model_path`)
and becomes a one-off catalog entry (:func:`model_from_path`) whose files the resolver
finds at that path. Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are
refused with :class:`~pytest_minerva.errors.UnsafeFile`: they are never unpickled.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pytest_minerva.errors import PathEscape, UnknownModel, UnsafeFile
from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec


def _sanitize_name(stem: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return name[:100]


def pickled_weights(directory: Path) -> list[Path]:
    """Pickled checkpoints (``pytorch_model.bin``, ``*.pt``...) directly inside ``directory``."""
    from pytest_minerva.formats import PICKLE_SUFFIXES

    try:
        return sorted(p for p in directory.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
    except OSError:
        return []


def refuse_pickled(path: Path) -> None:
    """Raise :class:`UnsafeFile` for a pickled checkpoint file (a GGUF named ``.bin`` is fine)."""
    from pytest_minerva.formats import PICKLE_SUFFIXES, pickle_refusal

    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return
    try:
        with open(path, "rb") as handle:
            if handle.read(4) == b"GGUF":
                return
    except OSError:
        pass
    raise UnsafeFile(f"{path}: {pickle_refusal(path)}")


def model_from_path(path: Path) -> ModelSpec:
    """A one-off catalog entry for ``--model some/file.gguf`` or a model directory.

    Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused with
    :class:`~pytest_minerva.errors.UnsafeFile`: they are never unpickled.
    """
    from pytest_minerva import formats

    path = path.expanduser().resolve()
    if not path.exists():
        raise UnknownModel(f"{path}: no such file or directory")
    if path.is_file():
        refuse_pickled(path)
    artifacts: list[ArtifactSpec] = []
    architecture = "unknown"
    if path.is_file():
        summary = formats.verify(path)
        architecture = summary.architecture or architecture
        if summary.format == "gguf":
            artifacts.append(ArtifactSpec("gguf", summary.file_type, files=(path.name,), primary=True))
            artifacts.append(ArtifactSpec("safetensors", "f32", derive_from="gguf"))
            artifacts.append(ArtifactSpec("mlx", "f32", derive_from="safetensors"))
        else:
            raise UnknownModel(
                f"{path}: a single {summary.format} file is not a model; pass its directory "
                "(with config.json and the tokenizer files)"
            )
        root = path.parent
    else:
        root = path
        ggufs = sorted(root.glob("*.gguf"))
        for i, gguf_path in enumerate(ggufs):
            summary = formats.verify(gguf_path)
            architecture = summary.architecture or architecture
            artifacts.append(ArtifactSpec("gguf", summary.file_type, files=(gguf_path.name,), primary=i == 0))
        has_weights = any(root.glob("*.safetensors")) and (root / "config.json").is_file()
        if has_weights:
            summary = formats.verify(root)
            architecture = summary.architecture or architecture
            fmt = "mlx" if formats.is_mlx_directory(root) else "safetensors"
            artifacts.append(ArtifactSpec(fmt, summary.file_type, primary=True))
        present = {a.format for a in artifacts}
        if not present:
            pickled = pickled_weights(root)
            if pickled:
                raise UnsafeFile(f"{pickled[0]}: {formats.pickle_refusal(pickled[0])}")
            raise UnknownModel(f"{root}: no model found (expected *.gguf, or config.json with *.safetensors)")
        if "safetensors" not in present and "gguf" in present:
            artifacts.append(ArtifactSpec("safetensors", "f32", derive_from="gguf"))
            present.add("safetensors")
        if "mlx" not in present and "safetensors" in present:
            artifacts.append(ArtifactSpec("mlx", "f32", derive_from="safetensors"))
    return ModelSpec(
        name=_sanitize_name(path.stem if path.is_file() else path.name),
        architecture=architecture,
        description=f"local model at {path}",
        artifacts=tuple(artifacts),
        explicit_path=root,
    )


def explicit_model_path(raw: str) -> Path:
    """The path a ``--model`` value names, if it is a model file or directory; else a clear error.

    An explicit path must be a ``.gguf`` file (or a directory holding a model): a value
    like ``../../etc/passwd`` is refused before anything reads the file.
    """
    path = Path(raw).expanduser()
    if not path.exists():
        raise UnknownModel(
            f"--model {raw}: no such file or directory, and not a catalog name (names use lower-case letters, "
            "digits, '.', '_' and '-', never '/' or '..')"
        )
    if path.is_dir():
        return path
    refuse_pickled(path)
    if not path.is_file():
        raise PathEscape(f"--model {raw}: not a regular file or a directory")
    with open(path, "rb") as handle:
        is_gguf = handle.read(4) == b"GGUF"
    if not is_gguf and path.suffix.lower() not in (".gguf", ".safetensors"):
        raise PathEscape(
            f"--model {raw}: not a model file; a path must be a .gguf file or a model directory "
            "(config.json with *.safetensors)"
        )
    return path


def select_models(catalog: Catalog, names: list[str]) -> list[ModelSpec]:
    """Turn ``--model`` values (catalog names, aliases or paths) into model specs."""
    selected: list[ModelSpec] = []
    for raw in names:
        model = catalog.find(raw)
        if model is None:
            looks_like_path = (
                "/" in raw
                or os.sep in raw
                or raw.startswith((".", "~"))
                or raw.endswith((".gguf", ".safetensors"))
                or Path(raw).exists()
            )
            if not looks_like_path:
                catalog.get(raw)
            model = model_from_path(explicit_model_path(raw))
            catalog.add(model)
        if model.name not in {m.name for m in selected}:
            selected.append(model)
    return selected
