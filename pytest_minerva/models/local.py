"""Models the user names by path: ``--model some/file.gguf`` or a model directory.

:func:`select_models` turns ``--model`` values into model specs: a catalog name or alias
is looked up; anything that looks like a path is checked (:func:`explicit_model_path`)
and becomes a one-off catalog entry (:func:`model_from_path`) whose files the resolver
finds at that path. Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are
refused with :class:`~pytest_minerva.errors.UnsafeFile`: they are never unpickled. Only
regular files are read (a FIFO or a device named as a model would block or never end), a
symlink in a model directory may not lead out of it, and a model that ships its own code
to run is refused before any engine sees it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pytest_minerva.errors import SYMLINK_LOOP, PathEscape, UnknownModel, UnsafeFile, os_problem, printable
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
    """Raise :class:`UnsafeFile` for a pickled checkpoint file (a GGUF named ``.bin`` is fine).

    Only a regular file is opened to look for the GGUF magic; anything else with a pickle
    suffix (a FIFO, a device) is refused unopened.
    """
    from pytest_minerva.errors import FormatError
    from pytest_minerva.formats import PICKLE_SUFFIXES, pickle_refusal, read_head

    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return
    try:
        if read_head(path, 4) == b"GGUF":
            return
    except FormatError:
        pass
    raise UnsafeFile(f"{path}: {pickle_refusal(path)}")


def _path_status(path: Path, shown: str) -> os.stat_result | None:
    """``os.stat(path)``, None when nothing is there; any other failure (symlink loop, name too
    long, permission) is a one-line :class:`UnknownModel` naming ``shown``."""
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise UnknownModel(f"{shown}: {os_problem(exc)}") from None
    except ValueError:
        raise UnknownModel(f"{shown}: not a usable path (it holds a NUL byte)") from None


def _real_path(path: Path) -> Path:
    """``path`` with symlinks resolved; a loop or another failure is a one-line :class:`UnknownModel`."""
    try:
        return path.expanduser().resolve(strict=True)
    except OSError as exc:
        raise UnknownModel(f"{path}: {os_problem(exc)}") from None
    except RuntimeError:
        # Python 3.11 reports a symlink loop met while resolving as RuntimeError.
        raise UnknownModel(f"{path}: {SYMLINK_LOOP}") from None


def _hf_snapshot_blobs(real_root: Path) -> Path | None:
    """The ``blobs/`` folder whose files a Hugging Face cache snapshot's symlinks point to, if ``real_root`` is one."""
    snapshots = real_root.parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith(("models--", "datasets--")):
        return snapshots.parent / "blobs"
    return None


def refuse_escaping_links(root: Path) -> None:
    """Raise :class:`PathEscape` when an entry of the model directory ``root`` is a symlink that
    leads outside it (a Hugging Face cache snapshot may link into its repository's ``blobs/``).

    A link named ``model.safetensors`` could point at any file of the user's: it would be
    read and described in an error. The message names the link, never the target.
    """
    real_root = _real_path(root)
    allowed = [real_root]
    blobs = _hf_snapshot_blobs(real_root)
    if blobs is not None:
        allowed.append(blobs)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UnknownModel(f"{root}: {os_problem(exc)}") from None
    for entry in entries:
        if not entry.is_symlink():
            continue
        target = Path(os.path.realpath(entry.path))
        if not any(target == place or place in target.parents for place in allowed):
            raise PathEscape(
                f"{Path(root) / entry.name}: a symlink that leads outside the model directory {root}; minerva reads "
                "only what the directory holds (copy the file in, or pass the directory it lives in)"
            )


def model_from_path(path: Path) -> ModelSpec:
    """A one-off catalog entry for ``--model some/file.gguf`` or a model directory.

    Pickled checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused with
    :class:`~pytest_minerva.errors.UnsafeFile`: they are never unpickled.
    """
    from pytest_minerva import formats
    from pytest_minerva.formats.custom_code import refuse_custom_code

    if _path_status(path.expanduser(), str(path)) is None:
        raise UnknownModel(f"{path}: no such file or directory")
    path = _real_path(path)
    status = _path_status(path, str(path))
    is_file = status is not None and stat.S_ISREG(status.st_mode)
    if status is None or not (is_file or stat.S_ISDIR(status.st_mode)):
        raise PathEscape(f"{path}: not a regular file or a directory")
    if is_file:
        refuse_pickled(path)
    artifacts: list[ArtifactSpec] = []
    architecture = "unknown"
    if is_file:
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
        refuse_escaping_links(root)
        refuse_custom_code(root)
        ggufs = sorted(root.glob("*.gguf"))
        for i, gguf_path in enumerate(ggufs):
            summary = formats.verify(gguf_path)
            architecture = summary.architecture or architecture
            artifacts.append(ArtifactSpec("gguf", summary.file_type, files=(gguf_path.name,), primary=i == 0))
        has_weights = any(root.glob("*.safetensors")) and formats.is_regular_file(root / "config.json")
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
        name=_sanitize_name(path.stem if is_file else path.name),
        architecture=architecture,
        description=f"local model at {printable(path)}",
        artifacts=tuple(artifacts),
        explicit_path=root,
    )


def explicit_model_path(raw: str) -> Path:
    """The path a ``--model`` value names, if it is a model file or directory; else a clear error.

    An explicit path must be a ``.gguf`` file (or a directory holding a model): a value
    like ``../../etc/passwd`` is refused before anything reads the file.
    """
    from pytest_minerva.formats import read_head

    path = Path(raw).expanduser()
    status = _path_status(path, f"--model {raw}")
    if status is None:
        raise UnknownModel(
            f"--model {raw}: no such file or directory, and not a catalog name (names use lower-case letters, "
            "digits, '.', '_' and '-', never '/' or '..')"
        )
    if stat.S_ISDIR(status.st_mode):
        return path
    if not stat.S_ISREG(status.st_mode):
        raise PathEscape(f"--model {raw}: not a regular file or a directory")
    refuse_pickled(path)
    is_gguf = read_head(path, 4, f"--model {raw}") == b"GGUF"
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
                or _path_status(Path(raw), raw) is not None
            )
            if not looks_like_path:
                catalog.get(raw)
            model = model_from_path(explicit_model_path(raw))
            catalog.add(model)
        if model.name not in {m.name for m in selected}:
            selected.append(model)
    return selected
