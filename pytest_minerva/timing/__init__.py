"""Timing: how fast each backend generates, measured on real models.

- :mod:`~pytest_minerva.timing.runs`: one timed generation and a scenario's warm-up and
  timed runs, and the definitions of every figure (TTFT, TpT, ITL, E2E, prefill / decode /
  overall tokens per second); :mod:`~pytest_minerva.timing.fidelity` holds them against
  the engine's own timers.
- :mod:`~pytest_minerva.timing.clock`: the harness's own clock (a receipt per token event)
  and the check of the adapter's timestamps against it; where each figure comes from.
- :mod:`~pytest_minerva.timing.load`, :mod:`~pytest_minerva.timing.kv`,
  :mod:`~pytest_minerva.timing.bench`: loading a backend for the bench, the KV-growth
  probe, and a whole backend's figures; :mod:`~pytest_minerva.timing.harness` hands them
  all on under one name (the asv suite uses it).
- :mod:`~pytest_minerva.timing.scenarios`: the fixed-length prompts (short, medium, code,
  long) and the context-length sweep.
- :mod:`~pytest_minerva.timing.memory`: peak RSS, peak device memory, KV-cache bytes per token.
- :mod:`~pytest_minerva.timing.roofline`: the bandwidth probe and the decode ceiling.
- :mod:`~pytest_minerva.timing.report`: markdown tables of a results document.
- :mod:`~pytest_minerva.commands.bench`: the ``minerva bench`` command.

Summaries of samples are :mod:`pytest_minerva.stats.summary`; results are stored by
:mod:`pytest_minerva.storage.results`. Nothing here imports an
engine at import time.
"""
