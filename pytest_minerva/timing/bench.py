"""The whole-backend bench: every scenario on a loaded backend, with memory, KV, roofline and fidelity.

:func:`bench_backend` takes a backend built by :func:`~pytest_minerva.timing.load.load_backend`
and returns one :class:`BackendResult` for its matrix case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_minerva.errors import MinervaError
from pytest_minerva.timing import memory
from pytest_minerva.timing.clock import COMPUTED, ENGINE_TIMERS, HARNESS_CLOCK
from pytest_minerva.timing.fidelity import Fidelity, fidelity
from pytest_minerva.timing.kv import measure_kv_growth
from pytest_minerva.timing.load import LoadedBackend
from pytest_minerva.timing.roofline import Roofline, WeightBytes, roofline, weight_bytes_per_token
from pytest_minerva.timing.runs import ScenarioResult, run_scenario
from pytest_minerva.timing.scenarios import Scenario

if TYPE_CHECKING:
    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.matrix import Case
    from pytest_minerva.models.resolve import ResolvedArtifact


def weights_for(artifact: ResolvedArtifact, spec: BackendSpec, info: dict[str, Any]) -> WeightBytes | None:
    """Bytes per generated token as ``spec``'s engine holds ``artifact``'s weights, or None:
    a GGUF engine that computes in the stored blocks (not in ``spec.computes_in``) reads the
    quantized tensors; any other reads every weight at the dtype its ``info()`` reports."""
    summary = artifact.summary
    if summary is None or not summary.tensors:
        return None
    quantized_engine = artifact.format == "gguf" and artifact.format not in spec.computes_in
    element_bytes = None if quantized_engine else memory.DTYPE_BYTES.get(str(info.get("dtype", "")).lower())
    if not quantized_engine and element_bytes is None:
        return None
    vocab = info.get("vocab_size")
    return weight_bytes_per_token(summary.tensors, vocab_size=vocab, element_bytes=element_bytes)


@dataclass
class BackendResult:
    """Everything measured for one matrix case (model x format x backend x device)."""

    case_id: str
    backend: str
    model: str
    format: str
    quant: str | None
    device: str
    status: str = "ok"
    reason: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    load_s: float | None = None
    load_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    peak_rss_method: str | None = None
    device_peak_bytes: int | None = None
    device_peak_method: str | None = None
    kv: memory.KvFigures | None = None
    weights: WeightBytes | None = None
    roofline: Roofline | None = None
    roofline_scenario: str | None = None
    fidelity: Fidelity | None = None
    scenarios: list[ScenarioResult] = field(default_factory=list)
    #: The file that ran (:meth:`ResolvedArtifact.record`): where it came from, whether its bytes
    #: are the catalog's pinned ones (``unpinned``: why not) and the identity facts its header states.
    artifact: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "case_id": self.case_id,
            "backend": self.backend,
            "model": self.model,
            "format": self.format,
            "quant": self.quant,
            "device": self.device,
            "status": self.status,
            "reason": self.reason,
            "artifact": self.artifact,
            "info": self.info,
            "load_s": self.load_s,
            "memory": {
                "load_rss_bytes": self.load_rss_bytes,
                "peak_rss_bytes": self.peak_rss_bytes,
                "peak_rss_method": self.peak_rss_method,
                "device_peak_bytes": self.device_peak_bytes,
                "device_peak_method": self.device_peak_method,
            },
            "kv_cache": self.kv.as_dict() if self.kv else None,
            "weights": self.weights.as_dict() if self.weights else None,
            "roofline": self.roofline.as_dict() if self.roofline else None,
            "roofline_scenario": self.roofline_scenario,
            "fidelity": self.fidelity.as_dict() if self.fidelity else None,
            "provenance": {
                "load_s": HARNESS_CLOCK,
                "weights": COMPUTED,
                "kv_cache.computed_bytes_per_token": COMPUTED,
                "roofline": COMPUTED,
                "fidelity.harness_decode_tps": HARNESS_CLOCK,
                "fidelity.harness_prefill_tps": HARNESS_CLOCK,
                "fidelity.engine_decode_tps": ENGINE_TIMERS,
                "fidelity.engine_prefill_tps": ENGINE_TIMERS,
            },
        }


def bench_backend(
    loaded: LoadedBackend,
    case: Case,
    scenarios: Sequence[Scenario],
    *,
    runs: int,
    warmup: int,
    bandwidth_gb_per_s: float | None = None,
    kv_probe: bool = True,
    on_run: Callable[[], None] | None = None,
) -> BackendResult:
    """Run every scenario on a loaded backend and gather memory, KV, roofline and fidelity figures."""
    assert case.backend is not None
    assert case.device is not None
    backend = loaded.backend
    info = dict(backend.info())
    info.setdefault("vocab_size", backend.vocab_size)
    result = BackendResult(
        case_id=case.id,
        backend=case.backend.name,
        model=case.model.name,
        format=loaded.artifact.format,
        quant=loaded.artifact.quant,
        device=case.device,
        info=info,
        load_s=loaded.load_s,
        load_rss_bytes=loaded.rss_after - loaded.rss_before,
        artifact=loaded.artifact.record(),
    )
    device = memory.device_memory(backend)
    if device is not None:
        device.reset()
    for scenario in scenarios:
        result.scenarios.append(run_scenario(backend, scenario, runs=runs, warmup=warmup, on_run=on_run))
    metadata = loaded.artifact.summary.metadata if loaded.artifact.summary is not None else {}
    result.kv = memory.computed_kv(metadata, result.backend, info)
    if kv_probe:
        try:
            measure_kv_growth(backend, result.kv, loaded.n_ctx)
        except MinervaError as exc:
            result.kv.note = f"KV probe failed: {exc}"
    result.peak_rss_bytes, result.peak_rss_method = memory.peak_rss(since_reset=loaded.peak_reset)
    if device is not None:
        result.device_peak_bytes = device.peak()
        result.device_peak_method = device.method
    result.weights = weights_for(loaded.artifact, case.backend, info)
    ok = [s for s in result.scenarios if s.ok]
    if ok and result.weights is not None and bandwidth_gb_per_s:
        longest = max(ok, key=lambda s: s.scenario.generate_tokens)
        result.roofline = roofline(
            bandwidth_gb_per_s, result.weights.bytes_per_token, longest.stats("decode_tps").median
        )
        result.roofline_scenario = longest.scenario.name
    result.fidelity = fidelity(result.scenarios)
    if any(s.error for s in result.scenarios):
        result.status = "error"
        result.reason = "; ".join(f"{s.scenario.name}: {s.error}" for s in result.scenarios if s.error)
    return result


__all__ = ["BackendResult", "bench_backend", "weights_for"]
