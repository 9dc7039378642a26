"""Check model files before anything loads them: GGUF, SafeTensors, and model directories.

:func:`verify` reads only what it needs (the header, the tensor table and, with
``deep=True``, the tensor data in bounded chunks) and either returns a
:class:`ModelSummary` or raises :class:`~pytest_minerva.errors.FormatError` with one
line naming the file and the problem. Lengths and counts declared by the file are
checked against the bytes actually present before anything is allocated for them,
so a hostile file cannot make the checker hang or exhaust memory.

The parsers read through a :class:`ByteSource`, so a test can check bytes held in
memory (:class:`MemorySource`) that stand for a much larger file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TextIO

from pytest_minerva.errors import FormatError, os_problem, printable
from pytest_minerva.formats.common import (
    CHECKER_BUG,
    MAX_JSON_BYTES,
    METADATA_BUDGET,
    PICKLE_SUFFIXES,
    WINDOW,
    ByteSource,
    CheckerBug,
    FileSource,
    MemorySource,
    ModelSummary,
    OmittedValue,
    TensorInfo,
    count_nonfinite,
    is_regular_file,
    looks_pickled,
    mlx_quantization,
    nonfinite_problem,
    open_regular,
    parse_json,
    pickle_refusal,
    quote,
    read_head,
    read_json_file,
)

__all__ = [
    "CHECKER_BUG",
    "MAX_JSON_BYTES",
    "METADATA_BUDGET",
    "PICKLE_SUFFIXES",
    "WINDOW",
    "ByteSource",
    "CheckerBug",
    "FileSource",
    "MemorySource",
    "ModelSummary",
    "OmittedValue",
    "TensorInfo",
    "count_nonfinite",
    "detect_format",
    "is_mlx_directory",
    "is_regular_file",
    "looks_pickled",
    "mlx_quantization",
    "nonfinite_problem",
    "open_regular",
    "os_problem",
    "parse_json",
    "pickle_refusal",
    "quote",
    "read_head",
    "read_json_file",
    "verify",
    "verify_command",
    "verify_source",
]


def _sniff(path: Path, shown: str) -> str:
    with FileSource(path, shown) as source:
        head = source.read(0, min(source.size, 9))
    if head[:4] == b"GGUF" or path.suffix.lower() == ".gguf":
        return "gguf"
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise FormatError(shown, pickle_refusal(path))
    if path.suffix.lower() == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        return "safetensors"
    if looks_pickled(head):
        raise FormatError(shown, pickle_refusal(path))
    raise FormatError(shown, f"not a GGUF or SafeTensors file (starts with {head[:8]!r})")


def _is_directory(path: Path, shown: str) -> bool:
    """Whether ``path`` is a directory; any ``stat`` failure (missing, loop, name too long) is a FormatError."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError as exc:
        raise FormatError(shown, os_problem(exc)) from None
    except ValueError:
        raise FormatError(shown, "not a usable path (it holds a NUL byte)") from None


def detect_format(path: str | Path) -> str:
    """``'gguf'``, ``'safetensors'`` or ``'mlx'`` (a directory in MLX layout); FormatError otherwise."""
    path = Path(path)
    shown = str(path)
    if _is_directory(path, shown):
        return "mlx" if is_mlx_directory(path) else "safetensors"
    return _sniff(path, shown)


def is_mlx_directory(path: str | Path) -> bool:
    """True for a directory written for MLX: its config.json has an mlx-style
    ``"quantization": {"group_size", "bits"}`` entry, or minerva-artifact.json says ``"format": "mlx"``."""
    root = Path(path)
    try:
        if not root.is_dir():
            return False
        marker = root / "minerva-artifact.json"
        if is_regular_file(marker):
            artifact = read_json_file(marker, str(marker), "minerva-artifact.json")
            if isinstance(artifact, dict) and artifact.get("format") == "mlx":
                return True
        config_path = root / "config.json"
        if is_regular_file(config_path):
            config = read_json_file(config_path, str(config_path), "config.json")
            return mlx_quantization(config) is not None
    except (FormatError, OSError):
        return False
    return False


def verify_source(source: ByteSource, path: str | Path, fmt: str, *, deep: bool = False) -> ModelSummary:
    """Check the bytes of one ``fmt`` file (``'gguf'`` or ``'safetensors'``) read from ``source``.

    Unlike :func:`verify`, an unexpected exception escapes unchanged, so fuzz tests see checker bugs.
    """
    if fmt == "gguf":
        from pytest_minerva.formats.gguf import check as check_gguf

        return check_gguf(source, path, deep=deep)
    if fmt == "safetensors":
        from pytest_minerva.formats.safetensors import check as check_safetensors

        return check_safetensors(source, path, deep=deep)
    raise ValueError(f"unknown format {fmt!r}")


def _verify_unguarded(path: Path, shown: str, deep: bool) -> ModelSummary:
    if _is_directory(path, shown):
        from pytest_minerva.formats.safetensors import check_directory

        return check_directory(path, shown, deep=deep)
    fmt = _sniff(path, shown)
    with FileSource(path, shown) as source:
        summary = verify_source(source, shown, fmt, deep=deep)
    summary.path = path
    return summary


def verify(path: str | Path, *, deep: bool = False) -> ModelSummary:
    """Check a .gguf file, a .safetensors file, or a model directory (config.json + *.safetensors).

    Returns what the file declares, or raises :class:`FormatError` whose message is one
    line naming the file and the problem. ``deep=True`` also scans float tensors and the
    scales of quantized blocks for NaN/Inf. Nothing else is ever raised: a bug in the
    checker itself surfaces as :class:`CheckerBug`, a FormatError saying so.
    """
    shown = str(path)
    try:
        return _verify_unguarded(Path(path), shown, deep)
    except FormatError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise CheckerBug(shown, f"{CHECKER_BUG} ({type(exc).__name__}: {detail}); please report it") from exc


def verify_command(paths: list[str], *, deep: bool, out: TextIO) -> int:
    """``minerva verify PATH...``: a summary per good file, one ``PATH: problem`` line per bad one.

    Returns 0 when every file is good, 1 when one is malformed, 2 when the checker itself failed.
    """
    status = 0
    for path in paths:
        try:
            summary = verify(path, deep=deep)
            text = summary.describe()
        except CheckerBug as exc:
            print(str(exc), file=out)
            status = 2
            continue
        except FormatError as exc:
            print(str(exc), file=out)
            status = max(status, 1)
            continue
        except Exception as exc:
            print(f"{printable(path)}: {CHECKER_BUG} ({type(exc).__name__}); please report it", file=out)
            status = 2
            continue
        print(text, file=out)
    return status
