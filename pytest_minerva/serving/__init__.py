"""Serving benchmarks: OpenAI-compatible HTTP endpoints under load.

* :mod:`~pytest_minerva.serving.sse` streams one completion over SSE and times it, through
  the HTTP client of :mod:`~pytest_minerva.serving.client`;
* :mod:`~pytest_minerva.serving.server` starts ``llama_cpp.server`` on loopback;
* :mod:`~pytest_minerva.serving.loadgen` runs concurrency sweeps and Poisson arrivals of
  a :mod:`~pytest_minerva.serving.workload` and adds them up
  (:mod:`~pytest_minerva.serving.load_results`);
* :mod:`~pytest_minerva.serving.batching` times batched in-process generation and
  projects KV-cache memory per sequence;
* :mod:`~pytest_minerva.serving.faults` is a fault-injecting proxy for error tests;
* :mod:`~pytest_minerva.commands.serve_bench` adds ``minerva serve-bench``.

Everything here uses the standard library's HTTP client; nothing imports an engine
until a server or an in-process backend is actually started.
"""

from __future__ import annotations
