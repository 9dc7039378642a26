"""Where a command may read and write, checked before anything is measured.

Each check returns the path or raises :class:`~pytest_minerva.errors.MinervaError` with one
line naming the path and what is wrong with it: a directory where a file goes, a path under
a regular file, a name too long for the file system, a symlink loop, a FIFO or a device, a
directory this process cannot write in. Nothing is opened, so a FIFO cannot block the check.
The ``minerva`` and pytest options run these checks when they are parsed (a usage error
before a model loads), and the artifact cache runs one when a session is built.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from pytest_minerva.errors import SYMLINK_LOOP, MinervaError

#: Prefix of the probe file a writability check creates and removes at once; the same as the
#: atomic writers' temporaries, so a probe left by a killed process is cleaned up with them.
PROBE_PREFIX = ".minerva-tmp-probe-"

_SPECIAL = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _what(mode: int) -> str:
    for test, name in _SPECIAL:
        if test(mode):
            return name
    return "not a regular file"


def _problem(path: Path, exc: OSError) -> MinervaError:
    """An OSError from looking ``path`` up, as one line that says which part is wrong."""
    if exc.errno == errno.ELOOP:
        return MinervaError(f"{path}: {SYMLINK_LOOP}")
    if exc.errno == errno.ENAMETOOLONG:
        return MinervaError(f"{path}: file name too long for this file system")
    if exc.errno == errno.ENOTDIR:
        under = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        return MinervaError(f"{path}: {under or 'a parent'} is a file, not a directory")
    return MinervaError(f"{path}: {exc.strerror or exc}")


def _stat(path: Path) -> os.stat_result | None:
    """``os.stat(path)`` following symlinks, or None when nothing is there."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _problem(path, exc) from None
    except ValueError as exc:  # an embedded NUL byte
        raise MinervaError(f"{path}: {exc}") from None


def _nearest_existing(path: Path) -> Path:
    """The closest ancestor of ``path`` that exists; it must be a directory."""
    for parent in path.parents:
        found = _stat(parent)
        if found is None:
            continue
        if not stat.S_ISDIR(found.st_mode):
            raise MinervaError(f"{path}: {parent} is a file, not a directory")
        return parent
    return Path(path.anchor or ".")


def _check_can_create_in(directory: Path, path: Path) -> None:
    """Raise unless this process can create files in ``directory`` (where ``path`` will go)."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise MinervaError(f"{path}: cannot write in {directory} (permission denied or a read-only file system)")
    try:  # root passes os.access almost everywhere; /proc, /sys and read-only mounts still refuse
        import tempfile  # here, not at the top: the plugin imports this module in every pytest run

        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=directory)
    except OSError as exc:
        raise MinervaError(f"{path}: cannot create files in {directory}: {exc.strerror or exc}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_output_file(value: str | os.PathLike[str]) -> Path:
    """``value`` as a file a command may write (replace or create): not a directory, FIFO or
    device, and in a directory that exists or can be made, and can be written in."""
    path = Path(value).expanduser()
    if str(value).endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise MinervaError(f"{value}: names a directory; give a file name")
    found = _stat(path)
    if found is not None:
        if stat.S_ISDIR(found.st_mode):
            raise MinervaError(f"{path}: is a directory; give a file name")
        if not stat.S_ISREG(found.st_mode):
            raise MinervaError(f"{path}: is {_what(found.st_mode)}; give a regular file")
    parent = path.parent
    if _stat(parent) is None:
        parent = _nearest_existing(path)
    elif not parent.is_dir():
        raise MinervaError(f"{path}: {parent} is a file, not a directory")
    _check_can_create_in(parent, path)
    return path


def check_writable_directory(value: str | os.PathLike[str], *, create: bool = False) -> Path:
    """``value`` as a directory a command may write in: one that exists and is writable, or
    (when absent) one that can be created; ``create=True`` creates it."""
    path = Path(value).expanduser()
    found = _stat(path)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise MinervaError(f"{path}: exists and is not a directory")
    if found is None:
        if not create:
            _check_can_create_in(_nearest_existing(path), path)
            return path
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _problem(path, exc) from None
    _check_can_create_in(path, path)
    return path


def check_input_file(value: str | os.PathLike[str]) -> Path:
    """``value`` as a regular file that exists and can be read."""
    path = Path(value).expanduser()
    found = _stat(path)
    if found is None:
        raise MinervaError(f"{path}: no such file")
    if stat.S_ISDIR(found.st_mode):
        raise MinervaError(f"{path}: is a directory; give a file")
    if not stat.S_ISREG(found.st_mode):
        raise MinervaError(f"{path}: is {_what(found.st_mode)}; give a regular file")
    if not os.access(path, os.R_OK):
        raise MinervaError(f"{path}: cannot be read (permission denied)")
    return path


def check_input_directory(value: str | os.PathLike[str]) -> Path:
    """``value`` as a directory that exists and can be listed."""
    path = Path(value).expanduser()
    found = _stat(path)
    if found is None:
        raise MinervaError(f"{path}: no such directory")
    if not stat.S_ISDIR(found.st_mode):
        raise MinervaError(f"{path}: exists and is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise MinervaError(f"{path}: cannot be read (permission denied)")
    return path


def check_directory_if_present(value: str | os.PathLike[str]) -> Path:
    """``value`` as a directory that may not exist yet; if something is there, it must be one."""
    path = Path(value).expanduser()
    found = _stat(path)
    if found is not None and not stat.S_ISDIR(found.st_mode):
        raise MinervaError(f"{path}: exists and is not a directory")
    if found is None:
        _nearest_existing(path)
    return path
