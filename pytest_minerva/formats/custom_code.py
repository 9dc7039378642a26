"""Models that would run their own Python code when loaded are refused before an engine reads them.

A Hugging Face model directory can name classes in ``*.py`` files it ships (``auto_map`` in
``config.json`` or ``tokenizer_config.json``), and mlx-lm builds a model from the file that
``model_file`` names. transformers then asks on stdin whether to run that code, and runs it
on a ``y``. Minerva never runs a model's code: :func:`refuse_custom_code` raises a one-line
:class:`~pytest_minerva.errors.UnsafeFile` first, and every engine call passes
``trust_remote_code=False`` too, so a model this check misses makes the engine raise, not prompt.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container
from pathlib import Path
from typing import Any

from pytest_minerva.errors import FormatError, UnsafeFile, os_problem
from pytest_minerva.formats.common import quote, read_json_file

#: The files loaders read from a model directory, and the keys in them that name code to import.
CODE_KEYS: dict[str, tuple[str, ...]] = {
    "config.json": ("auto_map", "model_file"),
    "tokenizer_config.json": ("auto_map",),
    "processor_config.json": ("auto_map",),
    "preprocessor_config.json": ("auto_map",),
}

_REFUSAL = "minerva never runs code a model ships, so the model is refused"


def _read_config(path: Path, name: str) -> Any:
    """The parsed JSON of ``path``; None when it is absent. Anything but a regular file is refused:
    an engine opening a FIFO named ``config.json`` would wait forever."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FormatError(path, os_problem(exc)) from None
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(path, f"{name} is not a regular file")
    return read_json_file(path, str(path), name)


def _named_code(value: Any) -> str:
    """What a code key names, shortened for one line: ``evil.EvilConfig`` or the first ``auto_map`` entry."""
    if isinstance(value, dict) and value:
        key, target = next(iter(value.items()))
        return quote(f"{key}: {target}", 60) + (f" and {len(value) - 1} more" if len(value) > 1 else "")
    return quote(str(value), 60)


def custom_code_problem(directory: str | Path, known_model_types: Container[str] | None = None) -> str | None:
    """Why loading ``directory`` would run the model's own code, or None when it would not.

    ``known_model_types`` are the ``config.json`` ``model_type`` values the loading engine
    implements itself (transformers' ``CONFIG_MAPPING``); a model of another type can only be
    built by its own code. Without it, only code the files declare is looked for.
    """
    root = Path(directory)
    config: Any = None
    for name, keys in CODE_KEYS.items():
        data = _read_config(root / name, name)
        if name == "config.json":
            config = data
        if not isinstance(data, dict):
            continue
        for key in keys:
            if key in data:
                return f"{name} names code the model ships ({key} {_named_code(data[key])}); {_REFUSAL}"
    if known_model_types is not None and isinstance(config, dict) and "model_type" in config:
        model_type = config["model_type"]
        if not isinstance(model_type, str) or model_type not in known_model_types:
            return (
                f"config.json model_type {quote(str(model_type), 60)} is not an architecture the engine implements; "
                f"only the model's own code could build it, and {_REFUSAL}"
            )
    return None


def refuse_custom_code(directory: str | Path, known_model_types: Container[str] | None = None) -> None:
    """Raise :class:`~pytest_minerva.errors.UnsafeFile` (one line naming ``directory``) when
    :func:`custom_code_problem` finds a reason; malformed config files raise FormatError."""
    problem = custom_code_problem(directory, known_model_types)
    if problem is not None:
        raise UnsafeFile(f"{directory}: {problem}")
