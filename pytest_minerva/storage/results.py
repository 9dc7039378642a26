"""Benchmark results on disk: a versioned JSON document, and a flat CSV of its runs.

The JSON document is an envelope around the measurements::

    {
      "schema_version": 1,
      "datetime": "2026-01-25T12:00:00+00:00",       # UTC, ISO 8601
      "machine_info": {...},                           # hardware.detect().as_dict() + platform, python
      "commit_info": {"id", "branch", "dirty", ...},   # null outside a git checkout
      "environment": {"versions": {...}, ...},         # backend libraries, from package metadata
      "settings": {...},                               # model, runs, warmup, threads, scenarios
      "bandwidth": {...},                              # the roofline's bandwidth probe, or null
      "backends": [...],                               # one per matrix case, with status and reason
      "benchmarks": [...]                              # one per case x scenario, with runs and stats
    }

Documents are written atomically (:func:`~pytest_minerva.storage.atomic.atomic_write_json`).
:func:`load` checks the schema version and the shape and raises
:class:`~pytest_minerva.errors.MinervaError` naming the file and the first problem.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError
from pytest_minerva.stats.summary import percentile
from pytest_minerva.storage.atomic import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1

#: The reference reports' columns first, then what identifies the run.
CSV_COLUMNS = (
    "backend",
    "scenario",
    "context_tokens",
    "run",
    "total_ms",
    "ttft_ms",
    "tpt_ms",
    "throughput_tps",
    "generated_tokens",
    "model",
    "quant",
    "device",
    "format",
    "prefill_tps",
    "decode_tps",
    "itl_p90_ms",
    "itl_p99_ms",
    "provenance",
)
#: The CSV columns each figure of a benchmark's ``provenance`` mapping stands for.
_CSV_FIGURES = {
    "total_ms": ("total_ms",),
    "ttft_ms": ("ttft_ms",),
    "tpt_ms": ("tpt_ms",),
    "throughput_tps": ("throughput_tps",),
    "prefill_tps": ("prefill_tps",),
    "decode_tps": ("decode_tps",),
    "itl_ms": ("itl_p90_ms", "itl_p99_ms"),
}

_TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "datetime": str,
    "machine_info": dict,
    "commit_info": (dict, type(None)),
    "environment": dict,
    "settings": dict,
    "bandwidth": (dict, type(None)),
    "backends": list,
    "benchmarks": list,
}
_BACKEND_KEYS: dict[str, type | tuple[type, ...]] = {
    "case_id": str,
    "backend": str,
    "model": str,
    "format": str,
    "device": str,
    "status": str,
    "reason": (str, type(None)),
}
_BENCHMARK_KEYS: dict[str, type | tuple[type, ...]] = {
    "case_id": str,
    "backend": str,
    "model": str,
    "format": str,
    "quant": (str, type(None)),
    "device": str,
    "scenario": str,
    "prompt_tokens": int,
    "generate_tokens": int,
    "error": (str, type(None)),
    "stats": dict,
    "runs": list,
}
_RUN_FIGURES = ("ttft_ms", "tpt_ms", "total_ms", "throughput_tps", "prefill_tps", "decode_tps")
_STATS_KEYS = ("n", "min", "max", "mean", "median", "stddev", "q1", "q3", "iqr", "p50", "p90", "p99")
#: "crashed": the engine's process died (a signal) while it was measured; the reason names it.
_BACKEND_STATUSES = ("ok", "error", "unavailable", "crashed")


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """Hardware (:func:`pytest_minerva.hardware.detect`), platform, Python and the load average now."""
    from pytest_minerva.hardware import detect

    info = detect().as_dict()
    info.update(
        node=platform.node(),
        platform=platform.platform(),
        python_implementation=platform.python_implementation(),
        python_version=platform.python_version(),
        python_executable=sys.executable,
    )
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    return info


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def commit_info(cwd: str | Path | None = None) -> dict[str, Any] | None:
    """HEAD's id, branch, commit time and whether the tree is dirty; None outside a git checkout."""
    where = Path(cwd) if cwd is not None else Path.cwd()
    head = _git(["rev-parse", "HEAD"], where)
    if head is None:
        return None
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    return {
        "id": head,
        "branch": _git(["rev-parse", "--abbrev-ref", "HEAD"], where),
        "time": _git(["show", "-s", "--format=%cI", "HEAD"], where),
        "dirty": bool(status) if status is not None else None,
        "project": _git(["rev-parse", "--show-toplevel"], where),
    }


def environment(versions: Mapping[str, str]) -> dict[str, Any]:
    """Library versions (from ``importlib.metadata``) plus the variables that change thread use."""
    threads_env = {
        k: os.environ[k]
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GGML_NUM_THREADS")
        if k in os.environ
    }
    return {"versions": dict(versions), "thread_variables": threads_env}


def make_document(
    *,
    settings: Mapping[str, Any],
    backends: Iterable[Mapping[str, Any]],
    benchmarks: Iterable[Mapping[str, Any]],
    versions: Mapping[str, str],
    bandwidth: Mapping[str, Any] | None = None,
    cwd: str | Path | None = None,
    machine: Mapping[str, Any] | None = None,
    numerics: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A complete results document around ``backends`` and ``benchmarks``; ``machine`` is the
    session's :meth:`~pytest_minerva.session.MinervaSession.machine_info` (hooks included),
    else this machine's plain facts."""
    return {
        "schema_version": SCHEMA_VERSION,
        "datetime": utc_now(),
        "machine_info": dict(machine) if machine is not None else machine_info(),
        "commit_info": commit_info(cwd),
        "environment": environment(versions),
        "settings": dict(settings),
        "bandwidth": dict(bandwidth) if bandwidth is not None else None,
        "backends": [dict(b) for b in backends],
        "benchmarks": [dict(b) for b in benchmarks],
        "numerics": [dict(n) for n in numerics],
    }


def _type_name(expected: type | tuple[type, ...]) -> str:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    names = {int: "an integer", str: "a string", dict: "an object", list: "a list", type(None): "null"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_keys(obj: Any, keys: Mapping[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    for key, expected in keys.items():
        if key not in obj:
            raise ValueError(f"{where} lacks {key!r}")
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ValueError(f"{where}.{key} must be {_type_name(expected)}, got {json.dumps(value)[:40]}")


def _check_number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {json.dumps(value)[:40]}")


def _check_benchmark(bench: Any, where: str) -> None:
    _check_keys(bench, _BENCHMARK_KEYS, where)
    for i, run in enumerate(bench["runs"]):
        _check_keys(run, {"run": int, "generated_tokens": int}, f"{where}.runs[{i}]")
    if bench["error"] is not None:
        return
    if not bench["runs"]:
        raise ValueError(f"{where} has no runs and no error")
    for i, run in enumerate(bench["runs"]):
        for figure in _RUN_FIGURES:
            if figure not in run:
                raise ValueError(f"{where}.runs[{i}] lacks {figure!r}")
            _check_number(run[figure], f"{where}.runs[{i}].{figure}")
        if run["generated_tokens"] != bench["generate_tokens"]:
            raise ValueError(
                f"{where}.runs[{i}] generated {run['generated_tokens']} tokens, not {bench['generate_tokens']}"
            )
    for figure in _RUN_FIGURES:
        stats = bench["stats"].get(figure)
        if not isinstance(stats, dict):
            raise ValueError(f"{where}.stats lacks {figure!r}")
        for key in _STATS_KEYS:
            if key not in stats:
                raise ValueError(f"{where}.stats.{figure} lacks {key!r}")
            _check_number(stats[key], f"{where}.stats.{figure}.{key}")
        if stats["n"] != len(bench["runs"]):
            raise ValueError(f"{where}.stats.{figure}.n is {stats['n']} but there are {len(bench['runs'])} runs")


#: What each ``numerics`` entry (a backend pair's equivalence figures) must hold; documents from
#: before the numerics have no ``numerics`` list, which reads as an empty one.
_NUMERICS_KEYS: dict[str, type | tuple[type, ...]] = {
    "pair_id": str,
    "reference": str,
    "candidate": str,
    "status": str,
    "figures": dict,
}
_NUMERICS_STATUSES = ("ok", "unavailable", "error")
#: ``pytest_minerva.equivalence.runner.NUMERICS_FIGURES``, spelled out: storage sits below the features.
_NUMERICS_FIGURES = ("kl_mean", "kl_max", "top1_agreement", "max_dlogit")


def _check_numerics(entries: Any) -> None:
    if not isinstance(entries, list):
        raise ValueError(f"numerics must be a list, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        where = f"numerics[{i}]"
        _check_keys(entry, _NUMERICS_KEYS, where)
        if entry["status"] not in _NUMERICS_STATUSES:
            raise ValueError(f"{where}.status {entry['status']!r} is not one of {_NUMERICS_STATUSES}")
        if entry["status"] == "ok":
            for figure in _NUMERICS_FIGURES:
                if figure not in entry["figures"]:
                    raise ValueError(f"{where}.figures lacks {figure!r}")
                _check_number(entry["figures"][figure], f"{where}.figures.{figure}")


def validate(document: Any, source: str | Path) -> dict[str, Any]:
    """Return ``document`` if it is a results document of this schema version; else raise naming ``source``.

    Only the parts other tools read are checked: the envelope, each backend's identity and
    status, and each benchmark's runs and statistics.
    """
    try:
        if not isinstance(document, dict):
            raise ValueError(f"expected a JSON object, got {type(document).__name__}")
        version = document.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version is {json.dumps(version)}; this pytest-minerva reads version {SCHEMA_VERSION}"
            )
        _check_keys(document, _TOP_LEVEL, "document")
        for i, backend in enumerate(document["backends"]):
            _check_keys(backend, _BACKEND_KEYS, f"backends[{i}]")
            if backend["status"] not in _BACKEND_STATUSES:
                raise ValueError(f"backends[{i}].status {backend['status']!r} is not one of {_BACKEND_STATUSES}")
        for i, bench in enumerate(document["benchmarks"]):
            _check_benchmark(bench, f"benchmarks[{i}]")
        _check_numerics(document.get("numerics", []))
    except ValueError as exc:
        raise MinervaError(f"{source}: not a valid benchmark results file: {exc}") from None
    return document


def write_json(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Validate and write ``document`` atomically; returns the path."""
    validate(dict(document), path)
    return atomic_write_json(path, document)


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a results file; a bad file raises :class:`MinervaError` naming it."""
    target = Path(path)
    try:
        raw = target.read_text(encoding="utf-8")
    except OSError as exc:
        raise MinervaError(f"{target}: cannot read benchmark results: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise MinervaError(f"{target}: not a valid benchmark results file: not UTF-8 text") from None
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MinervaError(
            f"{target}: not a valid benchmark results file: invalid JSON at line {exc.lineno} column {exc.colno}"
        ) from None
    return validate(document, target)


def csv_provenance(bench: Mapping[str, Any]) -> str:
    """Where a row's figures come from: one source (``harness clock``) when all agree, else
    ``SOURCE: column column; SOURCE: ...``; empty for a document from before provenance."""
    sources: dict[str, list[str]] = {}
    for figure, columns in _CSV_FIGURES.items():
        source = (bench.get("provenance") or {}).get(figure)
        if source is not None:
            sources.setdefault(str(source), []).extend(columns)
    if len(sources) <= 1:
        return next(iter(sources), "")
    return "; ".join(f"{source}: {' '.join(columns)}" for source, columns in sources.items())


def csv_rows(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per timed run of every successful benchmark, with :data:`CSV_COLUMNS`.

    ``itl_p90_ms`` / ``itl_p99_ms`` are that run's own inter-token latency percentiles;
    ``provenance`` is :func:`csv_provenance`.
    """
    rows = []
    for bench in document["benchmarks"]:
        if bench.get("error") is not None:
            continue
        for run in bench["runs"]:
            itl = sorted(run.get("itl_ms") or [])
            rows.append(
                {
                    "backend": bench["backend"],
                    "scenario": bench["scenario"],
                    "context_tokens": bench["prompt_tokens"],
                    "run": run["run"],
                    "total_ms": run["total_ms"],
                    "ttft_ms": run["ttft_ms"],
                    "tpt_ms": run["tpt_ms"],
                    "throughput_tps": run["throughput_tps"],
                    "generated_tokens": run["generated_tokens"],
                    "model": bench["model"],
                    "quant": bench["quant"] or "",
                    "device": bench["device"],
                    "format": bench["format"],
                    "prefill_tps": run["prefill_tps"],
                    "decode_tps": run["decode_tps"],
                    "itl_p90_ms": percentile(itl, 90) if itl else None,
                    "itl_p99_ms": percentile(itl, 99) if itl else None,
                    "provenance": csv_provenance(bench),
                }
            )
    return rows


def csv_text(document: Mapping[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in csv_rows(document):
        writer.writerow({k: _csv_value(v) for k, v in row.items()})
    return buffer.getvalue()


def _csv_value(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) else value


def write_csv(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Write :func:`csv_text` of ``document`` atomically; returns the path."""
    return atomic_write_text(path, csv_text(document))
