"""The argparse ``type=`` of every option: each refuses a bad value with one line, at parse time.

A bad value is argparse's usage error (exit 2) before a session is built or a model loads.
Every number has a bound, every path is checked by :mod:`pytest_minerva.storage.paths`, and
every callable carries a ``kind`` (``integer``, ``threads``, ``url``, ``output-file``...) that
the bad-argument tests read to choose the bad values they feed each option.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pytest_minerva.errors import MinervaError, printable
from pytest_minerva.storage import paths

_Type = TypeVar("_Type", bound=Callable[..., Any])


def kind(name: str) -> Callable[[_Type], _Type]:
    """Mark an argparse ``type=`` callable with the kind of value it takes (``text``, ``url``,
    ``output-file``...): the bad-argument tests feed each option bad values of its kind."""

    def mark(function: _Type) -> _Type:
        setattr(function, "kind", name)  # noqa: B010 - a function attribute mypy cannot see
        return function

    return mark


def _reject(value: str, problem: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(f"{value!r} {problem}")


@kind("text")
def plain_text(value: str) -> str:
    """A name, revision, label or command: not empty, and no control character (none is ever
    meant, and one can forge a terminal line)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("needs a value, got an empty string")
    if printable(value) != value:
        raise _reject(value, "holds a control character")
    return value


@kind("text")
def model_name(value: str) -> str:
    """``--model`` accepts a catalog name, an alias, or a path to a file or directory."""
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("--model needs a catalog name or a path, got an empty string")
    return plain_text(value)


@kind("name")
def backend_name(value: str) -> str:
    import re

    if not value.strip(" ,"):
        raise argparse.ArgumentTypeError("needs a backend name, got an empty string")
    for part in value.split(","):
        if part.strip() and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", part.strip()):
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a backend name (lower-case letters, digits, '.', '_', '-')"
            )
    return value


@kind("name")
def device_name(value: str) -> str:
    from pytest_minerva.hardware import DEVICES

    if not value.strip(" ,"):
        raise argparse.ArgumentTypeError(f"needs a device: auto, {', '.join(DEVICES)}")
    for part in value.split(","):
        part = part.strip()
        if part and part not in (*DEVICES, "auto"):
            raise argparse.ArgumentTypeError(f"unknown device {part!r}; choose from auto, {', '.join(DEVICES)}")
    return value


@kind("env-var")
def env_var_name(value: str) -> str:
    """The *name* of an environment variable (the value, a key, is never on the command line)."""
    if not (value.isascii() and value.replace("_", "a").isalnum() and not value[:1].isdigit()):
        raise _reject(value, "is not an environment variable name (letters, digits and '_')")
    return value


@kind("url")
def endpoint_url(value: str) -> str:
    """An ``http://`` or ``https://`` URL with a host, and a port if any in range."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(plain_text(value).strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _reject(value, f"is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _reject(value, "is not an http:// or https:// URL with a host")
    return value.strip()


@dataclass(frozen=True)
class Count:
    """An argparse type: a whole number from ``low`` to ``high``."""

    low: int
    high: int
    kind: str = "integer"
    why: str = ""  # said after "must be at most HIGH", e.g. where the bound comes from

    def __call__(self, value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise _reject(value, "is not an integer") from None
        if number < self.low:
            raise _reject(value, "must be 0 or more" if self.low == 0 else f"must be at least {self.low}")
        if number > self.high:
            raise _reject(value, f"must be at most {self.high}" + (f" ({self.why})" if self.why else ""))
        return number


@dataclass(frozen=True)
class Amount:
    """An argparse type: a finite number greater than ``low`` and at most ``high``."""

    high: float
    low: float = 0.0
    kind: str = "number"

    def __call__(self, value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise _reject(value, "is not a number") from None
        if not math.isfinite(number):
            raise _reject(value, "is not a finite number")
        if not number > self.low:
            raise _reject(value, f"must be greater than {self.low:g}")
        if number > self.high:
            raise _reject(value, f"must be at most {self.high:g}")
        return number


@dataclass(frozen=True)
class Counts:
    """An argparse type: comma-separated whole numbers, each one ``item`` accepts (``1,2,4,8``)."""

    item: Count
    kind: str = "integer-list"

    def __call__(self, value: str) -> list[int]:
        out = [self.item(part.strip()) for part in value.split(",") if part.strip()]
        if not out:
            raise argparse.ArgumentTypeError("needs at least one number, e.g. 1,2,4,8")
        return out


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity mask
        return os.cpu_count() or 1


#: ``--threads`` may ask for up to this many threads per usable CPU. Oversubscribing is a
#: real question to measure (how much llama.cpp loses with more threads than cores), and 4x
#: covers it; far more only creates threads the engine cannot use (100000 crashes llama.cpp).
THREADS_PER_CPU = 4


@dataclass(frozen=True)
class ThreadCount:
    """An argparse type: 1 to :data:`THREADS_PER_CPU` threads per usable CPU of this machine."""

    kind: str = "threads"
    low: int = 1

    @property
    def high(self) -> int:
        return THREADS_PER_CPU * usable_cpus()

    def __call__(self, value: str) -> int:
        why = f"{THREADS_PER_CPU} x the {usable_cpus()} CPUs this process may use"
        return Count(self.low, self.high, self.kind, why)(value)


# The bounds of the shared numeric options: generous for any real run, and far below what
# breaks an engine or the OS (a C int overflowing, a timer the kernel refuses, a thread storm).
# A subcommand's own numbers take a Count or Amount with their bound where they are declared.

#: The longest context, prompt or generation any option may ask for: no model has more.
MAX_CONTEXT = 1 << 20
thread_count = ThreadCount()
#: Timed runs per scenario or round, and untimed warm-up runs.
run_count = Count(1, 10_000)
warmup_count = Count(0, 1_000)
#: A seed for Python's and numpy's generators (numpy's legacy seeds stop at 2**32 - 1).
seed_value = Count(0, 2**32 - 1)
#: A time limit in seconds: one day covers any load, step or invocation.
timeout_seconds = Amount(86_400.0, kind="seconds")


@kind("scenario")
def scenario_name(value: str) -> str:
    from pytest_minerva.timing import scenarios

    name = value.strip()
    if name.startswith("sweep-") and name[6:].isdigit() and int(name[6:]) > MAX_CONTEXT:
        raise _reject(value, f"asks for a longer prompt than {MAX_CONTEXT} tokens")
    try:
        return scenarios.get(name).name
    except Exception as exc:  # a MinervaError naming the known scenarios
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class PathArg:
    """An argparse type: a path that ``check`` (from :mod:`pytest_minerva.storage.paths`) accepts."""

    check: Callable[[str], Path]
    kind: str

    def __call__(self, value: str) -> str:
        try:
            return str(self.check(value))
        except MinervaError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


output_file = PathArg(paths.check_output_file, "output-file")
input_file = PathArg(paths.check_input_file, "input-file")
input_directory = PathArg(paths.check_input_directory, "input-dir")
writable_directory = PathArg(paths.check_writable_directory, "writable-dir")
directory = PathArg(paths.check_directory_if_present, "directory")
