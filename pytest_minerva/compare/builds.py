"""The two sides of a comparison: where their code comes from and how one benchmark invocation runs.

A side is a git revision, checked out into its own temporary ``git worktree`` and put first
on ``PYTHONPATH`` under the interpreter running ``minerva``, or a Python interpreter /
virtual environment. :func:`probe_build` records the Python version, where the side imports
``pytest_minerva`` from, and which module runs its command line (``pytest_minerva.commands``,
or ``pytest_minerva.cli`` in revisions from before the commands package), so that the default
benchmark command runs on revisions from either side of that change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError

#: The module that ``{python} -m`` runs for ``minerva`` sub-commands in the default benchmark command.
CLI_MODULE = "pytest_minerva.commands"
#: The same module in revisions from before ``pytest_minerva.commands``.
LEGACY_CLI_MODULE = "pytest_minerva.cli"

#: Runs under the side's interpreter: its version, its pytest_minerva, and how to run its command line:
#: a module for ``-m``, or ``module:main`` for a commands package without ``__main__``. A module
#: counts only from the side's own pytest_minerva (an editable install elsewhere can lend others).
_PROBE = f"""\
import importlib.util, os, sys, pytest_minerva
root = os.path.dirname(os.path.abspath(pytest_minerva.__file__)) + os.sep
def here(name):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        return False
    return spec is not None and bool(spec.origin) and os.path.abspath(spec.origin).startswith(root)
if here("{CLI_MODULE}"):
    entry = "{CLI_MODULE}" if here("{CLI_MODULE}.__main__") else "{CLI_MODULE}:main"
elif here("{LEGACY_CLI_MODULE}"):
    entry = "{LEGACY_CLI_MODULE}"
else:
    entry = "-"
print(sys.version.split()[0])
print(pytest_minerva.__file__)
print(entry)
print("warm" if here("pytest_minerva.compare.worker") else "-")
"""


@dataclass
class Build:
    """One side of a comparison: how to run its benchmark command and where its code comes from."""

    role: str
    spec: str
    kind: str
    python: str = sys.executable
    cwd: str = "."
    pythonpath: str | None = None
    commit: str | None = None
    python_version: str | None = None
    package_path: str | None = None
    #: How this build runs the ``minerva`` command line (found by :func:`probe_build`): a module
    #: for ``-m``, or ``module:function`` to call.
    cli_module: str | None = None
    #: Whether this build has the warm benchmark worker (:mod:`pytest_minerva.compare.worker`).
    warm: bool = False

    @property
    def label(self) -> str:
        return "BASE" if self.role == "base" else "HEAD"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.pythonpath is not None:
            rest = env.get("PYTHONPATH")
            env["PYTHONPATH"] = self.pythonpath + (os.pathsep + rest if rest else "")
        return env

    def argv(self, command: Sequence[str], json_path: Path) -> list[str]:
        """``command`` for this build: ``{python}`` and ``{json}`` filled in, the ``-m`` module made its own."""
        words = list(command)
        if self.cli_module is not None and words[:3] == ["{python}", "-m", CLI_MODULE]:
            module, _, function = self.cli_module.partition(":")
            if function:
                words[1:3] = ["-c", f"import sys; from {module} import {function}; sys.exit({function}())"]
            else:
                words[2] = module
        return [part.replace("{python}", self.python).replace("{json}", str(json_path)) for part in words]

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "commit": self.commit,
            "python": self.python,
            "python_version": self.python_version,
            "pytest_minerva_from": self.package_path,
        }


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    except OSError as exc:
        raise MinervaError(f"{repo}: cannot run git: {exc.strerror or exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise MinervaError(f"{repo}: git {args[0]} failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return done.stdout.strip()


def git_toplevel(repo: str | Path) -> Path:
    """The top of the git checkout holding ``repo``; a one-line error when it is none."""
    path = Path(repo).expanduser()
    if not path.is_dir():
        raise MinervaError(f"{path}: --repo is not a directory")
    try:
        return Path(_git(path, "rev-parse", "--show-toplevel"))
    except MinervaError:
        raise MinervaError(f"{path}: not inside a git repository (give --repo, or compare interpreters)") from None


def resolve_commit(repo: Path, revision: str, label: str) -> str:
    """The full commit id of ``revision`` in ``repo``."""
    if revision.startswith("-"):
        raise MinervaError(f"{label} {revision!r} is not a git revision")
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except MinervaError:
        raise MinervaError(f"{repo}: {label} {revision!r} is not a commit in this repository") from None


def interpreter_of(spec: str, label: str) -> str:
    """The Python executable a spec names: the file itself, or a virtual environment's ``bin/python``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        for candidate in (path / "bin" / "python", path / "Scripts" / "python.exe"):
            if candidate.is_file():
                return str(candidate.absolute())
        raise MinervaError(f"{path}: {label} is a directory but not a virtual environment (no bin/python)")
    if path.is_file() and os.access(path, os.X_OK):
        return str(path.absolute())
    raise MinervaError(f"{path}: {label} is not an executable Python interpreter")


def build_kind(spec: str) -> str:
    """``python`` for an existing path (interpreter or venv), else ``git`` (a revision)."""
    return "python" if Path(spec).expanduser().exists() else "git"


def make_builds(base_spec: str, head_spec: str, repo: str | Path) -> tuple[str, Build, Build, Path | None]:
    """``(kind, BASE, HEAD, git top or None)``: two git revisions of ``repo``, or two interpreters."""
    kinds = {build_kind(base_spec), build_kind(head_spec)}
    if len(kinds) > 1:
        raise MinervaError(
            f"BASE {base_spec!r} and HEAD {head_spec!r} are not the same kind: give two git revisions "
            "or two interpreters / virtual environments"
        )
    kind = kinds.pop()
    if kind == "python":
        cwd = str(Path.cwd())
        base = Build("base", base_spec, kind, interpreter_of(base_spec, "BASE"), cwd)
        head = Build("head", head_spec, kind, interpreter_of(head_spec, "HEAD"), cwd)
        return kind, base, head, None
    top = git_toplevel(repo)
    base = Build("base", base_spec, kind, commit=resolve_commit(top, base_spec, "BASE"))
    head = Build("head", head_spec, kind, commit=resolve_commit(top, head_spec, "HEAD"))
    return kind, base, head, top


@contextlib.contextmanager
def worktrees(repo: Path, commits: Mapping[str, str]) -> Iterator[dict[str, Path]]:
    """Check out each ``role -> commit`` into a temporary ``git worktree``; all are removed on exit."""
    scratch = Path(tempfile.mkdtemp(prefix="minerva-compare-"))
    made: dict[str, Path] = {}
    try:
        for role, commit in commits.items():
            path = scratch / f"{role}-{commit[:12]}"
            _git(repo, "worktree", "add", "--detach", "--quiet", str(path), commit)
            made[role] = path
        yield made
    finally:
        for path in made.values():
            with contextlib.suppress(MinervaError):
                _git(repo, "worktree", "remove", "--force", str(path))
        shutil.rmtree(scratch, ignore_errors=True)
        with contextlib.suppress(MinervaError):
            _git(repo, "worktree", "prune")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def probe_build(build: Build, timeout: float) -> None:
    """Record the build's Python version, where it imports ``pytest_minerva`` from and its command-line module.

    Raises when the build cannot start or cannot import ``pytest_minerva``.
    """
    try:
        done = subprocess.run(
            [build.python, "-c", _PROBE],
            cwd=build.cwd,
            env=build.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise MinervaError(f"{build.label} ({build.spec}): cannot start {build.python}: {exc}") from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or len(lines) < 4:
        raise MinervaError(
            f"{build.label} ({build.spec}): {build.python} cannot import pytest_minerva: {_last_line(done.stderr)}"
        )
    build.python_version, build.package_path, entry, warm = lines[-4:]
    build.cli_module = None if entry == "-" else entry
    build.warm = warm == "warm"


def check_provenance(build: Build, src: str) -> None:
    """A git build whose worktree holds pytest_minerva must import it from there, or the round measures other code."""
    if build.pythonpath is None or build.package_path is None:
        return
    own = Path(build.pythonpath, "pytest_minerva", "__init__.py")
    if own.is_file() and Path(build.package_path).resolve() != own.resolve():
        raise MinervaError(
            f"{build.label} ({build.spec}): pytest_minerva imports from {build.package_path}, not from the "
            f"worktree's {own}; is --src {src!r} right?"
        )


def run_benchmark(build: Build, command: Sequence[str], json_path: Path, timeout: float) -> dict[str, Any]:
    """Run the benchmark command once for ``build`` and return the results document it wrote."""
    from pytest_minerva.storage import results

    argv = build.argv(command, json_path)
    json_path.unlink(missing_ok=True)
    try:
        done = subprocess.run(
            argv, cwd=build.cwd, env=build.environ(), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise MinervaError(f"{build.label} ({build.spec}): the benchmark command ran over {timeout:g} s") from None
    except OSError as exc:
        raise MinervaError(f"{build.label} ({build.spec}): cannot run {argv[0]}: {exc.strerror or exc}") from None
    if not json_path.is_file():
        raise MinervaError(
            f"{build.label} ({build.spec}): the benchmark command exited with {done.returncode} and wrote no "
            f"results: {_last_line(done.stderr or done.stdout)}"
        )
    try:
        return results.load(json_path)
    except MinervaError as exc:
        raise MinervaError(f"{build.label} ({build.spec}): {exc}") from None
    finally:
        json_path.unlink(missing_ok=True)
