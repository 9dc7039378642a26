"""The timing harness: warm-up, then N timed runs of each scenario on a loaded backend.

This module is a face over the modules that do the work, kept so that ``from
pytest_minerva.timing import harness`` and ``harness.<name>`` go on working (the asv suite
in ``benchmarks/`` calls them against older commits too):

- :mod:`~pytest_minerva.timing.runs`: one timed generation (:class:`RunRecord`,
  :func:`timed_run`) and a scenario's warm-up and timed runs (:func:`run_scenario`), with
  the definitions of every figure (TTFT, TpT, ITL, E2E, prefill / decode / overall tokens
  per second).
- :mod:`~pytest_minerva.timing.fidelity`: the harness's figures against llama.cpp's own timers.
- :mod:`~pytest_minerva.timing.kv`: the KV probe, bytes of KV cache per generated token.
- :mod:`~pytest_minerva.timing.load`: the context a bench needs and the timed construction
  of its backend.
- :mod:`~pytest_minerva.timing.bench`: every scenario on one loaded backend, with memory,
  KV, roofline and fidelity figures.
"""

from __future__ import annotations

from pytest_minerva.timing.bench import BackendResult, bench_backend, weights_for
from pytest_minerva.timing.fidelity import Fidelity, fidelity
from pytest_minerva.timing.kv import KV_PROBE_PROMPT, KV_PROBE_TOKENS, measure_kv_growth
from pytest_minerva.timing.load import LoadedBackend, load_backend, needed_context
from pytest_minerva.timing.runs import RUN_METRICS, BenchmarkError, RunRecord, ScenarioResult, run_scenario, timed_run

__all__ = [
    "KV_PROBE_PROMPT",
    "KV_PROBE_TOKENS",
    "RUN_METRICS",
    "BackendResult",
    "BenchmarkError",
    "Fidelity",
    "LoadedBackend",
    "RunRecord",
    "ScenarioResult",
    "bench_backend",
    "fidelity",
    "load_backend",
    "measure_kv_growth",
    "needed_context",
    "run_scenario",
    "timed_run",
    "weights_for",
]
