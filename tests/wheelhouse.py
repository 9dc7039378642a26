"""Commands with readable failures, and wheels of this checkout, for the tests that install it.

Shared by the tests that install pytest-minerva the way a user does, from a wheel
(``test_good_citizen.py``, ``test_engine_team_path.py``, ``test_shipped_suite.py``):

- ``run`` and ``must`` run a command with its output captured; a failure or a timeout shows the
  command, its exit status and the tail of its output (``describe``), not a bare exit status.
- ``from_registry`` runs a pip command that needs the package registry and tells "the registry
  cannot be reached" (the test skips, saying so) from a real failure (the test fails).
- ``clean_env``: the environment of an ordinary user's shell, with nothing of this test session.
- ``copy_checkout`` copies this checkout's tracked and untracked, not ignored files
  (``git ls-files -co --exclude-standard``) to a temporary directory, and ``build_wheels`` builds
  non-editable wheels of pytest-minerva, and of any other package of the checkout, from such a copy
  with ``pip wheel --no-deps --no-build-isolation`` (offline, with this environment's setuptools).
  Building from a copy writes no ``build/`` or ``*.egg-info`` into the working tree, which others
  edit, and ships no module that a stale ``build/lib`` still holds.

``tests/`` has no ``__init__.py``: pytest puts it on ``sys.path``, and the tests import this module
by its bare name (``from wheelhouse import ...``), as they do ``fake_hub``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# pip output that means the registry could not be reached (or answered nothing), not that
# something in this repository is wrong.
CONNECTION_TROUBLE = (
    "Failed to establish a new connection",
    "NewConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "Connection reset",
    "ConnectionError",
    "ProxyError",
    "SSLError",
    "Could not fetch URL",
)
# pip found no matching distribution: the registry's answer for a pinned requirement it lacks.
NOT_FOUND = ("Could not find a version that satisfies", "No matching distribution found")

# Options for every pip command that goes to the registry.
PIP_NETWORK = ("--disable-pip-version-check", "--timeout", "30", "--retries", "3")

TIMEOUT_BUILD = 300
TIMEOUT_GIT = 60


# --------------------------------------------------------------------------- commands


def as_text(data: str | bytes | None) -> str:
    """Captured output as text (a timeout leaves bytes, or nothing)."""
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data


def tail(text: str, lines: int = 40) -> str:
    """The last ``lines`` lines of ``text``."""
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(kept) if kept else "(empty)"


def describe(
    cmd: Sequence[str | Path],
    result: subprocess.CompletedProcess[str] | subprocess.TimeoutExpired,
    *,
    lines: int = 40,
) -> str:
    """The command, how it ended and the tails of its stdout and stderr (so far, after a timeout)."""
    timed_out = isinstance(result, subprocess.TimeoutExpired)
    status = "timed out" if timed_out else f"exit status {result.returncode}"
    return (
        f"$ {shlex.join(str(c) for c in cmd)}\n{status}\n"
        f"--- stdout (tail) ---\n{tail(as_text(result.stdout), lines)}\n"
        f"--- stderr (tail) ---\n{tail(as_text(result.stderr), lines)}"
    )


class CommandTimeout(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def run(
    cmd: Sequence[str | Path], *, timeout: float, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (output captured); a timeout raises CommandTimeout with the output so far."""
    try:
        return subprocess.run(
            [str(c) for c in cmd],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandTimeout(f"after {timeout:g} s:\n" + describe(cmd, exc)) from exc


def must(
    cmd: Sequence[str | Path],
    *,
    what: str,
    timeout: float,
    env: dict[str, str],
    cwd: Path | None = None,
    lines: int = 40,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; fail the test, showing the output, on a timeout or a non-zero exit status."""
    try:
        proc = run(cmd, timeout=timeout, env=env, cwd=cwd)
    except CommandTimeout as exc:
        pytest.fail(f"{what}: timed out {exc.message}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed:\n" + describe(cmd, proc, lines=lines), pytrace=False)
    return proc


def from_registry(
    cmd: Sequence[str | Path],
    *,
    what: str,
    env: dict[str, str],
    timeout: float,
    skip_not_found: bool = False,
    skip_on_timeout: bool = True,
) -> None:
    """Run a pip command that needs the registry: skip when it cannot be reached, fail otherwise.

    ``skip_not_found``: also skip when pip found no matching distribution (right for pinned
    third-party requirements; for this repository's own dependencies it would hide a typo).
    ``skip_on_timeout``: a timeout means the registry did not answer in time (skip), not that the
    command, say a long build from an sdist, overran (fail).
    """
    try:
        proc = run(cmd, timeout=timeout, env=env)
    except CommandTimeout as exc:
        if skip_on_timeout:
            pytest.skip(f"{what}: the package registry did not answer in time {exc.message}")
        pytest.fail(f"{what}: timed out {exc.message}", pytrace=False)
    if proc.returncode == 0:
        return
    signs = CONNECTION_TROUBLE + (NOT_FOUND if skip_not_found else ())
    seen = [sign for sign in signs if sign in proc.stdout + proc.stderr]
    if seen:
        pytest.skip(f"{what}: the package registry cannot be reached ({', '.join(seen[:3])}):\n" + describe(cmd, proc))
    pytest.fail(f"{what} failed:\n" + describe(cmd, proc), pytrace=False)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an ordinary user's shell (and ``extra``): nothing from this test session leaks in."""
    dropped_prefixes = ("PYTEST_", "MINERVA_", "HYPOTHESIS_", "COV_CORE_")
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "FORCE_COLOR", "NO_COLOR"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped_prefixes) and k not in dropped}
    env.update(PY_COLORS="0", PYTHONIOENCODING="utf-8", **extra)
    return env


# --------------------------------------------------------------------------- wheels


def copy_checkout(dest: Path, env: dict[str, str]) -> None:
    """Copy this checkout's tracked and untracked, not ignored files to ``dest``.

    That is ``git ls-files -co --exclude-standard``; without git, the tree less the usual build,
    cache and environment directories.
    """
    try:
        listed = run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            timeout=TIMEOUT_GIT,
            env=env,
        )
    except (OSError, CommandTimeout):
        listed = None
    if listed is not None and listed.returncode == 0 and listed.stdout.strip("\0"):
        for rel in filter(None, listed.stdout.split("\0")):
            source = REPO / rel
            if source.is_file():  # a file deleted in the working tree is still listed
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, dest / rel)
        return
    shutil.copytree(
        REPO,
        dest,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", ".asv"
        ),
    )


def build_wheels(work: Path, env: dict[str, str], *others: str | Path) -> dict[str, Path]:
    """Non-editable wheels of pytest-minerva and of ``others``, built offline from a copy of the checkout.

    ``others``: directories of other packages, relative to the checkout (``examples/...``). The copy
    goes to ``work/source`` and is removed after the build; the wheels stay in ``work/wheelhouse``.
    Returns {the wheel file's distribution part (``pytest_minerva``): its path}. A build that fails
    or times out fails the test; the build takes setuptools from this environment.
    """
    source = work / "source"
    copy_checkout(source, env)
    for other in others:
        assert (source / other / "pyproject.toml").is_file(), f"{other} is not in the checkout's file list"
    wheelhouse = work / "wheelhouse"
    cmd: list[str | Path] = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        wheelhouse,
        source,
        *(source / other for other in others),
    ]
    what = f"the wheels of pytest-minerva and {', '.join(map(str, others))}" if others else "the pytest-minerva wheel"
    must(cmd, what=f"building {what}", timeout=TIMEOUT_BUILD, env=env)
    shutil.rmtree(source, ignore_errors=True)
    found = sorted(wheelhouse.glob("*.whl"))
    wheels = {wheel.name.split("-", 1)[0]: wheel for wheel in found}
    assert len(wheels) == len(found) == 1 + len(others) and "pytest_minerva" in wheels, (
        f"expected a pytest-minerva wheel and {len(others)} other(s) in {wheelhouse}, found {found}"
    )
    return wheels
