"""Kill a writer with SIGKILL at random moments: the target is always a complete old or new version.

A writer process rewrites one target over and over (each version a few MiB, stamped
with its number and sha256); the test kills it at a random moment, then reads the
target. Every trial must find a complete version, never a torn one. A naive writer
(truncate and write in place) killed the same way does leave torn files, which shows
the check can fail.

``MINERVA_KILL_TRIALS`` sets the trials per writer (default 50)::

    MINERVA_KILL_TRIALS=200 python -m pytest tests/test_atomic_kill.py -s -p no:cacheprovider
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_minerva.storage.atomic import _TMP_PREFIX, remove_stale_temporaries

WRITER = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from pytest_minerva.storage.atomic import atomic_directory, atomic_write_bytes, atomic_write_json

mode, target, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

def body(version):
    block = hashlib.sha256(f"{seed}-{version}".encode()).digest() * 1024
    return block * (32 + version % 64)

def stamped(version):
    data = body(version)
    return f"version {version} {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode() + data

print("ready", flush=True)
version = 1
while True:
    if mode == "bytes":
        atomic_write_bytes(target, stamped(version))
    elif mode == "json":
        data = body(version)[:200_000].hex()
        digest = hashlib.sha256(data.encode()).hexdigest()
        atomic_write_json(target, {"version": version, "sha256": digest, "data": data})
    elif mode == "directory":
        with atomic_directory(target / f"entry-{version}") as tmp:
            for part in range(3):
                (tmp / f"part-{part}.bin").write_bytes(stamped(version * 3 + part))
            (tmp / "manifest.json").write_text(json.dumps({"version": version, "parts": 3}))
    else:
        with open(target, "wb") as handle:
            data = stamped(version)
            for start in range(0, len(data), 1 << 16):
                handle.write(data[start : start + (1 << 16)])
            handle.flush()
            os.fsync(handle.fileno())
    version += 1
"""


def kill_trials() -> int:
    return int(os.environ.get("MINERVA_KILL_TRIALS", "50"))


def check_stamped(data: bytes) -> int:
    """The version of a complete stamped file; AssertionError if it is torn."""
    head, _, rest = data.partition(b"\n")
    word, version, length, digest = head.decode().split()
    assert word == "version"
    assert len(rest) == int(length), f"torn: {len(rest)} of {length} bytes"
    assert hashlib.sha256(rest).hexdigest() == digest, "torn: content does not match its sha256"
    return int(version)


def check_json(data: bytes) -> int:
    payload = json.loads(data)
    assert hashlib.sha256(payload["data"].encode()).hexdigest() == payload["sha256"]
    return int(payload["version"])


def check_directory(root: Path) -> int:
    """How many complete entries there are; AssertionError if any entry is incomplete."""
    entries = [p for p in root.iterdir() if p.name.startswith("entry-")]
    for entry in entries:
        manifest = json.loads((entry / "manifest.json").read_text())
        version = int(entry.name.removeprefix("entry-"))
        assert manifest == {"version": version, "parts": 3}
        for part in range(3):
            assert check_stamped((entry / f"part-{part}.bin").read_bytes()) == version * 3 + part
    return len(entries)


@dataclass
class KillStats:
    mode: str
    trials: int = 0
    kept_old: int = 0
    got_new: int = 0
    torn: int = 0
    leftovers: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.mode}: {self.trials} SIGKILL trials, {self.kept_old} kept the old version, "
            f"{self.got_new} had a newer complete one, {self.torn} torn, "
            f"{self.leftovers} temporaries left behind by killed writers"
        )


def run_writer_and_kill(mode: str, target: Path, seed: int, rng: random.Random) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, mode, str(target), str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n", proc.stderr.read() if proc.stderr else ""
    # Log-uniform from 0.1 ms to 150 ms: kills land in the first write as often as in later ones.
    time.sleep(10 ** rng.uniform(-4, math.log10(0.15)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read() if proc.stderr else "")


def reset(mode: str, target: Path) -> None:
    """Put version 0 back (no writer runs now), so the next trial can tell old from new."""
    if mode == "directory":
        target.mkdir(exist_ok=True)
    elif mode == "json":
        target.write_text(json.dumps({"version": 0, "sha256": hashlib.sha256(b"").hexdigest(), "data": ""}))
    else:
        target.write_bytes(f"version 0 0 {hashlib.sha256(b'').hexdigest()}\n".encode())


def kill_repeatedly(mode: str, root: Path, trials: int) -> KillStats:
    stats = KillStats(mode)
    rng = random.Random(f"atomic-kill-{mode}")
    target = root / ("target.json" if mode == "json" else "target")
    reset(mode, target)
    for trial in range(trials):
        run_writer_and_kill(mode, target, trial, rng)
        stats.trials += 1
        try:
            if mode == "directory":
                found = check_directory(target)
            elif mode == "json":
                found = check_json(target.read_bytes())
            else:
                found = check_stamped(target.read_bytes())
        except (AssertionError, ValueError, KeyError, OSError) as exc:
            stats.torn += 1
            stats.problems.append(f"trial {trial}: {exc}")
        else:
            if found == 0:
                stats.kept_old += 1
            else:
                stats.got_new += 1
        if mode == "directory":
            for entry in list(target.iterdir()):
                if entry.name.startswith("entry-"):
                    os.rename(entry, target / f"checked-{trial}-{entry.name}")
        else:
            reset(mode, target)
    parent = target if mode == "directory" else target.parent
    stats.leftovers = sum(1 for p in parent.iterdir() if p.name.startswith(_TMP_PREFIX))
    return stats


@pytest.mark.parametrize("mode", ["bytes", "json", "directory"])
def test_sigkill_at_random_moments_leaves_old_or_new(mode: str, tmp_path: Path) -> None:
    trials = kill_trials()
    stats = kill_repeatedly(mode, tmp_path, trials)
    print(stats.line())
    assert stats.torn == 0, stats.problems[:3]
    assert stats.trials == trials
    assert stats.kept_old + stats.got_new == trials
    if mode == "directory":
        assert stats.got_new > 0
    else:
        # The kills landed both before the first rename and after it.
        assert stats.kept_old > 0 and stats.got_new > 0
    parent = tmp_path / "target" if mode == "directory" else tmp_path
    assert remove_stale_temporaries(parent) == 0  # young ones may belong to a live writer
    assert remove_stale_temporaries(parent, older_than_s=0) == stats.leftovers
    assert not [p for p in parent.iterdir() if p.name.startswith(_TMP_PREFIX)]


def test_a_naive_writer_is_caught_tearing(tmp_path: Path) -> None:
    """The same kills against truncate-and-write: the check above would see torn files."""
    stats = kill_repeatedly("naive", tmp_path, min(kill_trials(), 30))
    print(stats.line())
    assert stats.torn > 0


def test_atomic_results_get_normal_permissions(tmp_path: Path) -> None:
    """A shared cache or results directory must be readable as if the file had been opened normally."""
    from pytest_minerva.storage.atomic import atomic_directory, atomic_write_bytes

    umask = os.umask(0)
    os.umask(umask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    written = atomic_write_bytes(tmp_path / "atomic", b"x")
    assert written.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_directory(tmp_path / "dir") as tmp:
        (tmp / "f").write_bytes(b"x")
    assert (tmp_path / "dir").stat().st_mode & 0o777 == 0o777 & ~umask
