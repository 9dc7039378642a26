"""Temporary git repositories for the end-to-end asv tests: a clone of this one plus its asv suite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def clone_with_suite(path: Path, files: tuple[str, ...]) -> None:
    """Clone the last commit of this repository to ``path``, then copy the working tree's ``files``
    (the asv suite, committed or not) over it."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(path)], check=True)
    for name in files:
        source, target = REPO / name, path / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
