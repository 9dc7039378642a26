"""Helpers both derivers use: probe strings, tool versions for a manifest, reading JSON, an error's
first line, and the check that a converter's libraries are installed."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from pytest_minerva.errors import ArtifactMissing, FormatError

#: Strings whose token ids must survive every conversion unchanged (also in the tokenizer corpus).
TOKENIZER_PROBES = (
    "The capital of France is",
    " leading space and  two spaces",
    "Numbers 1234567, punctuation!? and a tab\there.",
    "Unicode: naïve café, Ελληνικά, 日本語, emoji 🙂",
    "line one\nline two\n\n",
)


def tool_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the distributions that did a conversion."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; :class:`FormatError` naming the file if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatError(path, f"cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise FormatError(path, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FormatError(path, "expected a JSON object")
    return data


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def require_modules(what: str, modules: tuple[str, ...], extra: str) -> None:
    """Raise :class:`~pytest_minerva.errors.ArtifactMissing` (a skip, in the suite) naming the
    extra to install when a converter's libraries are not importable here."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ArtifactMissing(
            f"{what} needs {', '.join(missing)}, which is not installed: pip install 'pytest-minerva[{extra}]'"
        )
