"""What one ``minerva bench`` results document holds for a comparison.

Per benchmark (``case_id::scenario``): every timed run's value of each figure (results
files, compared unpaired) or their median (one invocation of one build in a round), plus the
benchmarks and backends that failed and the backends that cannot run here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_minerva.compare.schedule import Figures
from pytest_minerva.compare.verdict import DEFAULT_FIGURES
from pytest_minerva.stats.summary import Stats


def _bench_name(bench: Mapping[str, Any]) -> str:
    return str(bench.get("name") or f"{bench['case_id']}::{bench['scenario']}")


def _backend_problems(document: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Backends with no benchmark entries: those that failed (errors) and those that cannot run here (notes)."""
    benchmarked = {bench["case_id"] for bench in document["benchmarks"]}
    errors: list[str] = []
    notes: list[str] = []
    for backend in document["backends"]:
        if backend["status"] != "ok" and backend["case_id"] not in benchmarked:
            line = f"{backend['case_id']}: {backend['status']}: {backend['reason']}"
            (errors if backend["status"] in ("error", "crashed") else notes).append(line)
    return errors, notes


def round_figures(
    document: Mapping[str, Any], figures: Sequence[str] = DEFAULT_FIGURES
) -> tuple[Figures, list[str], list[str]]:
    """From one ``minerva bench`` results document: each benchmark's figures, the failures, and notes.

    A benchmark's figure is the median of its timed runs; a figure some run lacks (the CPU-time
    figures of a revision that did not record them) is left out. Failed benchmarks and backends
    come back as ``"name: problem"`` lines; backends that cannot run here as notes.
    """
    measured: Figures = {}
    failed, notes = _backend_problems(document)
    for bench in document["benchmarks"]:
        if bench["error"] is not None:
            failed.append(f"{_bench_name(bench)}: {bench['error']}")
            continue
        measured[_bench_name(bench)] = {
            f: Stats([run[f] for run in bench["runs"]]).median
            for f in figures
            if bench["runs"] and all(f in run for run in bench["runs"])
        }
    return measured, failed, notes


def run_samples(
    document: Mapping[str, Any], figures: Sequence[str] = DEFAULT_FIGURES
) -> tuple[dict[str, dict[str, list[float]]], list[str], list[str]]:
    """From one results document: every timed run's value of each figure per benchmark, failures and notes."""
    samples: dict[str, dict[str, list[float]]] = {}
    failed, notes = _backend_problems(document)
    for bench in document["benchmarks"]:
        if bench["error"] is not None:
            failed.append(f"{_bench_name(bench)}: {bench['error']}")
            continue
        samples[_bench_name(bench)] = {f: [float(run[f]) for run in bench["runs"]] for f in figures}
    return samples, failed, notes
