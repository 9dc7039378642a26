"""Two processes building the same artifact into one cache: one build, identical complete results.

``test_two_processes_race_for_the_same_entry`` runs two processes that meet at a barrier
and then resolve the same generated model (``tiny-random-llama``) into a fresh cache
directory, ``MINERVA_CACHE_TRIALS`` times (default 8). Every trial must build once and
give both processes the same bytes. The same race without the file lock builds twice,
which shows the check can fail. ``test_xdist_workers_share_one_derivation`` does it
through ``pytest -n 2``, with the real SafeTensors -> MLX conversion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.models.catalog import Catalog
from pytest_minerva.models.resolve import Resolver

RACER = r"""
import contextlib, json, os, sys, time
from pathlib import Path
from pytest_minerva.models.catalog import Catalog
from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.models.resolve import Resolver

base, trials, name, out = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
if "--no-lock" in sys.argv:
    ArtifactCache.lock = lambda self, kind, key: contextlib.nullcontext()
model = Catalog.load().get("tiny-random-llama")
spec = model.artifact("safetensors")
records = []
for trial in range(trials):
    barrier = base / f"barrier-{trial}"
    barrier.mkdir(exist_ok=True)
    (barrier / name).touch()
    deadline = time.monotonic() + 60
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    resolver = Resolver(ArtifactCache(base / f"cache-{trial}"))
    start = time.monotonic()
    artifact = resolver.resolve(model, spec)
    end = time.monotonic()
    records.append({
        "trial": trial, "built": artifact.extra["built"], "start": start, "end": end,
        "digest": resolver.artifact_digest(artifact), "path": str(artifact.path),
    })
out.write_text(json.dumps(records))
"""


def cache_trials() -> int:
    return int(os.environ.get("MINERVA_CACHE_TRIALS", "8"))


def race(base: Path, trials: int, *extra: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(base), str(trials), name, str(base / f"{name}.json"), *extra],
            env=env,
            stderr=subprocess.PIPE,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    a, b = (json.loads((base / f"{name}.json").read_text()) for name in ("a", "b"))
    return list(zip(a, b, strict=True))


@pytest.fixture(scope="module")
def reference_digest(tmp_path_factory: pytest.TempPathFactory) -> str:
    if importlib.util.find_spec("tokenizers") is None:
        pytest.skip("tiny-random-llama needs the tokenizers package")
    model = Catalog.load().get("tiny-random-llama")
    resolver = Resolver(ArtifactCache(tmp_path_factory.mktemp("reference")))
    return resolver.artifact_digest(resolver.resolve(model, model.artifact("safetensors")))


def test_two_processes_race_for_the_same_entry(tmp_path: Path, reference_digest: str) -> None:
    trials = cache_trials()
    results = race(tmp_path, trials)
    overlapping = 0
    for a, b in results:
        assert [a["built"], b["built"]].count(True) == 1, (a, b)
        assert a["digest"] == b["digest"] == reference_digest
        assert a["path"] == b["path"]
        overlapping += a["start"] < b["end"] and b["start"] < a["end"]
        cache = tmp_path / f"cache-{a['trial']}"
        assert not [p for p in (cache / "generated").iterdir() if p.name.startswith(".minerva-tmp-")]
    print(f"cache race: {trials} trials, {trials} built once, {overlapping} with both processes inside at once")
    assert overlapping >= trials // 2


def test_without_the_lock_the_race_builds_twice(tmp_path: Path, reference_digest: str) -> None:
    results = race(tmp_path, 4, "--no-lock")
    doubled = sum(a["built"] and b["built"] for a, b in results)
    assert doubled > 0
    for a, b in results:
        # atomic_directory still keeps the entry whole; the lock is what saves the second conversion.
        assert a["digest"] == b["digest"] == reference_digest


XDIST_TEST = """
import json, os, time
from pathlib import Path

def record(minerva_session, name):
    model = minerva_session.catalog.get("tiny-random-llama")
    barrier = Path(os.environ["RACE_DIR"]) / "barrier"
    barrier.mkdir(exist_ok=True)
    (barrier / os.environ["PYTEST_XDIST_WORKER"]).touch()
    deadline = time.monotonic() + 120
    while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    artifact = minerva_session.resolver.resolve(model, model.artifact("mlx"))
    end = time.monotonic()
    result = {
        "worker": os.environ["PYTEST_XDIST_WORKER"], "built": artifact.extra["built"], "start": start, "end": end,
        "path": str(artifact.path), "digest": minerva_session.resolver.artifact_digest(artifact),
        "tensors": artifact.summary.tensor_count,
    }
    (Path(os.environ["RACE_DIR"]) / f"{name}.json").write_text(json.dumps(result))

def test_first(minerva_session):
    record(minerva_session, "first")

def test_second(minerva_session):
    record(minerva_session, "second")
"""


def test_xdist_workers_share_one_derivation(
    pytester: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("xdist", "mlx_lm", "tokenizers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}")
    pytester.makepyfile(test_race=XDIST_TEST)
    monkeypatch.setenv("RACE_DIR", str(tmp_path))
    cache = tmp_path / "cache"
    result = pytester.runpytest_subprocess(
        "-n", "2", "--model", "tiny-random-llama", f"--minerva-cache-dir={cache}", "-p", "no:cacheprovider", timeout=300
    )
    result.assert_outcomes(passed=2)
    first, second = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("first", "second"))
    assert {first["worker"], second["worker"]} == {"gw0", "gw1"}
    assert [first["built"], second["built"]].count(True) == 1
    assert first["path"] == second["path"] and first["digest"] == second["digest"]
    assert first["tensors"] == second["tensors"] > 0
    assert first["start"] < second["end"] and second["start"] < first["end"]  # they really overlapped
    derived = [p.name for p in (cache / "derived").iterdir()]
    assert len(derived) == 1 and derived[0].startswith("tiny-random-llama-mlx-")
