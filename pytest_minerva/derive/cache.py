"""The cache of derived artifacts, keyed by the sha256 of their source.

Entries are directories built by :func:`~pytest_minerva.storage.atomic.atomic_directory`
under a cross-process file lock, so a run killed mid-build leaves nothing a later run
trusts, and two runs sharing the cache (pytest-xdist workers, two CI jobs) build an
entry once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pytest_minerva.errors import MinervaError, PathEscape
from pytest_minerva.storage.atomic import atomic_directory, atomic_write_json, remove_stale_temporaries
from pytest_minerva.storage.paths import check_directory_if_present, check_writable_directory

MANIFEST = "minerva-artifact.json"
LOCK_TIMEOUT_S = 1800.0
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def default_cache_dir() -> Path:
    """``$MINERVA_CACHE_DIR`` or the platform's user cache directory."""
    env = os.environ.get("MINERVA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("pytest-minerva", appauthor=False))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    from pytest_minerva.formats.common import open_regular

    digest = hashlib.sha256()
    fd, _info = open_regular(path, path)  # a FIFO swapped in for the model would block a plain open()
    with os.fdopen(fd, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    manifest: dict[str, Any]
    built: bool
    seconds: float


class ArtifactCache:
    """A directory of content-addressed build outputs."""

    def __init__(self, root: str | Path) -> None:
        """A symlink loop or a file as ``root`` raises :class:`MinervaError` here; a missing
        ``root`` is made by :meth:`ensure_writable`, or by the first build."""
        try:
            self.root = check_directory_if_present(root).resolve()
        except MinervaError as exc:
            raise MinervaError(f"cache directory {exc}") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: pathlib's symlink loop before Python 3.13
            raise MinervaError(f"cache directory {root}: {exc}") from None

    def ensure_writable(self) -> None:
        """Create the cache directory if absent and check this process can write in it, so a
        bad cache directory is one error when a session starts, not one per test."""
        try:
            check_writable_directory(self.root, create=True)
        except MinervaError as exc:
            raise MinervaError(f"cache directory {exc}") from None

    def entry_path(self, kind: str, key: str) -> Path:
        """``root/kind/key``; a kind or key that is not a plain name raises :class:`PathEscape`."""
        for part, what in ((kind, "kind"), (key, "key")):
            if not _PART.match(part) or ".." in part:
                raise PathEscape(f"{self.root}: cache {what} {part!r} must be a plain name without '/' or '..'")
        return self.root / kind / key

    def lock(self, kind: str, key: str) -> FileLock:
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_dir / f"{kind}-{key}.lock"), timeout=LOCK_TIMEOUT_S)

    def lookup(self, kind: str, key: str) -> CacheEntry | None:
        """The finished entry, or ``None``; an entry that is a symlink leaving the cache is refused."""
        path = self.entry_path(kind, key)
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        self._check_inside(path)
        return CacheEntry(path, manifest, built=False, seconds=0.0)

    def _check_inside(self, entry: Path) -> None:
        """Refuse an entry that is, or holds, a symlink leading out of the cache (a shared cache
        directory is writable by every job that uses it)."""
        for candidate in [entry, *(p for p in entry.rglob("*") if p.is_symlink())]:
            real = candidate.resolve()
            if self.root not in real.parents:
                raise PathEscape(f"{candidate}: resolves to {real}, outside the cache {self.root}")

    def get_or_build(
        self,
        kind: str,
        key: str,
        build: Callable[[Path], dict[str, Any]],
    ) -> CacheEntry:
        """Return the entry, building it with ``build(tmp_dir) -> manifest`` if absent."""
        found = self.lookup(kind, key)
        if found is not None:
            return found
        started = time.perf_counter()
        try:
            with self.lock(kind, key):
                found = self.lookup(kind, key)
                if found is not None:
                    return found
                target = self.entry_path(kind, key)
                remove_stale_temporaries(target.parent)
                with atomic_directory(target) as tmp:
                    manifest = dict(build(tmp))
                    manifest.setdefault("kind", kind)
                    manifest.setdefault("key", key)
                    manifest["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
                    atomic_write_json(tmp / MANIFEST, manifest)
        except Timeout:
            raise MinervaError(
                f"{self.root}: waited {LOCK_TIMEOUT_S:.0f} s for another process building {kind}/{key}"
            ) from None
        entry = self.lookup(kind, key)
        if entry is None:
            raise MinervaError(f"{self.entry_path(kind, key)}: build finished but left no manifest")
        return CacheEntry(entry.path, entry.manifest, built=True, seconds=time.perf_counter() - started)

    def sha256(self, path: str | Path) -> str:
        """sha256 of a file, remembered by (path, size, mtime, inode) to skip re-hashing big files."""
        real = Path(path).resolve()
        stat = real.stat()
        ident = f"{real}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
        index_key = hashlib.sha256(ident.encode()).hexdigest()[:32]
        index_file = self.root / "sha256" / f"{index_key}.json"
        try:
            cached = json.loads(index_file.read_text(encoding="utf-8"))
            if cached.get("ident") == ident:
                return str(cached["sha256"])
        except (OSError, ValueError, KeyError):
            pass
        digest = sha256_file(real)
        with contextlib.suppress(OSError):  # the index is only a speed-up
            atomic_write_json(index_file, {"ident": ident, "sha256": digest})
        return digest
