"""Exceptions that carry a user-facing, one-line explanation."""

from __future__ import annotations

from pathlib import Path


class MinervaError(Exception):
    """Base class: ``str(err)`` is a complete message for a user."""


class FormatError(MinervaError):
    """A model file is malformed. The message names the file and the exact problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


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
