"""Greedy generation on each backend: time to first token, time per output token, rates, peak memory.

Definitions are the harness's (:mod:`pytest_minerva.timing.harness`): TTFT runs from the
request to the first generated token; TpT is ``(E2E - TTFT) / (N - 1)``; prefill rate is
prompt tokens / TTFT; decode rate is ``(N - 1) / (E2E - TTFT)``. Each ``track_*`` result
carries one sample per timed run and asv records their median.

asv counts every number as lower-is-better, so it calls a faster decode rate "worse":
gate on ``track_ttft_ms``, ``track_tpot_ms``, their CPU-time twins ``track_ttft_cpu_ms`` and
``track_tpot_cpu_ms`` (``time.process_time()`` of the process running the engine, which a busy
runner's time-slicing does not inflate) and ``peakmem_*`` (``tools/asv_gate.sh``), and read the
rates in the published graphs.
"""

from __future__ import annotations

from typing import Any

from . import common

#: What ``Generation.setup_cache`` returns: see :func:`common.measure_all`.
Measurement = dict[str, Any]
PARAMS = [list(common.MODELS), list(common.BACKENDS), list(common.SCENARIOS)]
PARAM_NAMES = ["model", "backend", "scenario"]


class Generation:
    """Timed greedy generations, measured once per asv round for every combination in ``setup_cache``."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 1800

    def setup_cache(self) -> Measurement:
        return common.measure_all()

    def setup(self, measurement: Measurement, model: str, backend: str, scenario: str) -> None:
        self.measured = common.Measured(measurement, model, backend, scenario)

    def track_ttft_ms(self, measurement: Measurement, model: str, backend: str, scenario: str) -> dict[str, Any]:
        return self.measured.samples("ttft_ms")

    track_ttft_ms.unit = "ms"
    track_ttft_ms.version = "ttft_ms-1: request to first generated token"

    def track_tpot_ms(self, measurement: Measurement, model: str, backend: str, scenario: str) -> dict[str, Any]:
        return self.measured.samples("tpt_ms")

    track_tpot_ms.unit = "ms"
    track_tpot_ms.version = "tpot_ms-1: (E2E - TTFT) / (N - 1)"

    def track_ttft_cpu_ms(self, measurement: Measurement, model: str, backend: str, scenario: str) -> dict[str, Any]:
        return self.measured.samples("ttft_cpu_ms")

    track_ttft_cpu_ms.unit = "ms"
    track_ttft_cpu_ms.version = "ttft_cpu_ms-1: CPU time of the engine's process, request to first token"

    def track_tpot_cpu_ms(self, measurement: Measurement, model: str, backend: str, scenario: str) -> dict[str, Any]:
        return self.measured.samples("tpt_cpu_ms")

    track_tpot_cpu_ms.unit = "ms"
    track_tpot_cpu_ms.version = "tpot_cpu_ms-1: CPU time from first to last token / (N - 1)"

    def track_prefill_tps(self, measurement: Measurement, model: str, backend: str, scenario: str) -> dict[str, Any]:
        return self.measured.samples("prefill_tps")

    track_prefill_tps.unit = "tokens/s"
    track_prefill_tps.version = "prefill_tps-1: prompt tokens / TTFT"

    def track_decode_tps(self, measurement: Measurement, model: str, backend: str, scenario: str) -> dict[str, Any]:
        return self.measured.samples("decode_tps")

    track_decode_tps.unit = "tokens/s"
    track_decode_tps.version = "decode_tps-1: (N - 1) / (E2E - TTFT)"


class GenerationMemory:
    """Peak resident memory of a process that loads the model and generates one scenario once."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 600

    def setup(self, model: str, backend: str, scenario: str) -> None:
        self.loaded = common.LoadedScenario.open(model, backend, scenario)

    def teardown(self, model: str, backend: str, scenario: str) -> None:
        # asv calls teardown after a skipped setup too.
        loaded = getattr(self, "loaded", None)
        if loaded is not None:
            loaded.close()

    def peakmem_generate(self, model: str, backend: str, scenario: str) -> None:
        self.loaded.generate()

    peakmem_generate.version = "peakmem_generate-1: load plus one generation"
