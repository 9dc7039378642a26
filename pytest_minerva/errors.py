"""Exceptions that carry a user-facing, one-line explanation."""

from __future__ import annotations

import errno
import unicodedata
from collections.abc import Iterable
from pathlib import Path

#: Unicode categories that can move the cursor, recolour a terminal, reorder text or end a line.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(value: object, limit: int | None = None) -> str:
    """``value`` as one line that is safe to print, log or put in a report.

    Strings read from a model file (architecture, names, config values, shard names), a
    server's answer or a path can carry ANSI escapes, newlines, carriage returns or bidi
    overrides that forge output lines (``evil.gguf: ok``) or recolour a terminal. Each
    such character is shown as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``);
    everything else is kept. ``limit`` caps the length *after* escaping, ending in ``...``.
    Applying it twice changes nothing.
    """
    text = str(value)
    if text.isprintable():
        out = text
    else:
        out = "".join(
            ch.encode("unicode_escape").decode("ascii")
            if ch != " " and unicodedata.category(ch) in _UNSAFE_CATEGORIES
            else ch
            for ch in text
        )
    if limit is not None and len(out) > limit:
        out = out[: max(limit - 3, 0)] + "..."
    return out


#: How a symlink loop reads in a one-line error (Python 3.11's ``Path.resolve`` reports one as
#: ``RuntimeError``, so callers also use it without an ``OSError`` in hand).
SYMLINK_LOOP = "a symlink loop (too many levels of symbolic links)"


def os_problem(exc: OSError) -> str:
    """What an :class:`OSError` on a path means, in words for a one-line message."""
    if exc.errno == errno.ELOOP:
        return SYMLINK_LOOP
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


class EscapedLines(str):
    """Text of several lines, each already passed through :func:`printable`.

    A crash report quotes the engine's last stderr lines: they stay one per line, but
    each is escaped, so no line of it can carry an escape sequence or forge another.
    :class:`MinervaError` keeps such a message's line breaks.
    """

    @classmethod
    def of(cls, *heading: object, quoted: Iterable[object] = (), indent: str = "    ") -> EscapedLines:
        """Each of ``heading`` on its own line, then each of ``quoted`` indented (``(nothing)`` if none)."""
        body = [indent + printable(line) for line in quoted] or [indent + "(nothing)"]
        return cls("\n".join([*(printable(line) for line in heading), *body]))


class MinervaError(Exception):
    """Base class: ``str(err)`` is a complete, one-line message for a user.

    Every string argument passes through :func:`printable`, so a message that quotes a
    file, a path or a server cannot forge terminal lines or carry escape sequences
    (:class:`EscapedLines`, whose lines were each escaped, keeps its line breaks).
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(printable(a) if isinstance(a, str) and not isinstance(a, EscapedLines) else a for a in args))


class FormatError(MinervaError):
    """A model file is malformed. The message names the file and the exact problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return (type(self), (self.path, self.problem))


class ArtifactMissing(MinervaError):
    """A catalog artifact is not available locally; the message says how to get it."""


class UnknownModel(MinervaError):
    """A ``--model`` name is neither a catalog entry nor an existing path."""


class BackendUnavailable(MinervaError):
    """A backend cannot run here (package not installed, device absent)."""


class UnsafeFile(MinervaError):
    """A file would require unpickling or another unsafe load; it is refused."""


class PathEscape(MinervaError):
    """A name or catalog path tries to leave the directory it must stay in."""


class LogitsUnavailable(MinervaError):
    """The backend cannot return full logits (a served model); the message says what it offers instead.

    A suite test that needs full logits is skipped with this message, not failed.
    """
