"""``python -m pytest_minerva.guards --measure BACKEND PATH``: the cost of isolation, measured.

Prints, as JSON, the median seconds of a load in this process and of starting a worker and
loading there, and of one ``logits`` and one ``tokenize`` call each way. Without
``--measure`` it runs a worker (:func:`pytest_minerva.guards.worker.worker_main`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_minerva.guards.isolated import IsolatedBackend
from pytest_minerva.guards.limits import Limits
from pytest_minerva.guards.memory import artifact_bytes
from pytest_minerva.guards.worker import worker_main


def measure(backend: str, path: Path, repeats: int = 3) -> dict[str, float]:
    """Median seconds: a load here (imports already done) vs starting a worker and loading
    there, and one 64-token ``logits`` and one ``tokenize`` call each way."""
    from pytest_minerva.backends import builtin_registry
    from pytest_minerva.backends.base import LoadOptions
    from pytest_minerva.formats import detect_format
    from pytest_minerva.models.resolve import ResolvedArtifact

    spec = builtin_registry().get(backend)
    artifact = ResolvedArtifact("m", detect_format(path), None, path, "explicit", "llama")
    options = LoadOptions(threads=1, n_ctx=256)
    limits = Limits.for_size(artifact_bytes(path), None)
    spec.build(artifact, options).close()  # imports happen once per process, not per load
    figures: dict[str, list[float]] = {}

    def timed(key: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        figures.setdefault(key, []).append(time.perf_counter() - started)
        return result

    for _ in range(repeats):
        local = timed("load_here_s", lambda: spec.build(artifact, options))
        remote = timed("load_in_worker_s", lambda: IsolatedBackend(spec, artifact, options, limits))
        ids = local.tokenize("The quick brown fox jumps over the lazy dog. " * 8)[:64]
        for where, loaded in (("here", local), ("in_worker", remote)):
            loaded.logits(ids)
            timed(f"logits_{len(ids)}_{where}_s", lambda b=loaded, i=ids: b.logits(i))  # type: ignore[misc]
            timed(f"tokenize_{where}_s", lambda b=loaded: b.tokenize("hello"))  # type: ignore[misc]
        local.close()
        remote.close()
    return {key: sorted(values)[len(values) // 2] for key, values in figures.items()}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--measure"]:
        print(json.dumps(measure(argv[1], Path(argv[2])), indent=2))
        return 0
    return worker_main()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
