"""Timing: how fast each backend generates, measured on real models.

- :mod:`~pytest_minerva.timing.harness`: warm-up and timed runs, and the definitions of
  every figure (TTFT, TpT, ITL, E2E, prefill / decode / overall tokens per second).
- :mod:`~pytest_minerva.timing.scenarios`: the fixed-length prompts (short, medium, code,
  long) and the context-length sweep.
- :mod:`~pytest_minerva.timing.stats`: median, IQR, stddev and percentiles of samples.
- :mod:`~pytest_minerva.timing.memory`: peak RSS, peak device memory, KV-cache bytes per token.
- :mod:`~pytest_minerva.timing.roofline`: the bandwidth probe and the decode ceiling.
- :mod:`~pytest_minerva.timing.report`: markdown tables of a results document.
- :mod:`~pytest_minerva.timing.cli`: the ``minerva bench`` command.

Results are stored by :mod:`pytest_minerva.storage.results`. Nothing here imports an
engine at import time.
"""
