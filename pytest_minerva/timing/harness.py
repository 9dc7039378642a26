"""The timing harness: warm-up, then N timed runs of each scenario on a loaded backend.

Definitions. Every figure is measured on one run; its median, interquartile range,
standard deviation and run count are reported over the timed runs.

``t_request``
    ``time.perf_counter()`` just before ``backend.stream(request)`` is called.
``t_i``
    the ``time_s`` of the ``i``-th generated :class:`~pytest_minerva.backends.base.TokenEvent`
    (``i = 0..N-1``), taken by the adapter when the engine handed the token over.
``N``
    generated tokens, counted from the engine's token events (never by re-tokenizing
    text). Every run must produce exactly the scenario's count (EOS is ignored); a run
    that stops early makes the whole scenario an error, and nothing is averaged.
TTFT (time to first token)
    ``t_0 - t_request``: prompt processing (prefill) plus sampling the first token.
E2E (end to end, ``total_ms``)
    ``t_{N-1} - t_request``.
TpT (time per output token after the first)
    ``(E2E - TTFT) / (N - 1)``, the mean inter-token latency.
ITL (inter-token latencies)
    ``t_i - t_{i-1}`` for ``i = 1..N-1``; their median, p90 and p99 are pooled over all
    timed runs of a scenario and reported separately from TpT.
Prefill tokens/s
    ``prompt tokens / TTFT``.
Decode tokens/s
    ``(N - 1) / (E2E - TTFT)``.
Throughput tokens/s
    ``N / E2E``.
Model load time
    wall time of constructing the backend (file to ready-to-generate).

The harness does no work between a token's arrival and the next: it collects the
stream with ``list()`` and computes everything afterwards. For llama.cpp it also reads
the engine's own timers for each timed run (``t_p_eval_ms``/``n_p_eval`` for the
prefill, ``t_eval_ms``/``n_eval`` for the single-token decodes, ``t_sample_ms``) so the
harness's rates can be checked against them (:func:`fidelity`). Memory figures are
defined in :mod:`pytest_minerva.timing.memory`, the roofline in
:mod:`pytest_minerva.timing.roofline`.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pytest_minerva.backends.base import Backend, GenerationRequest, LoadOptions
from pytest_minerva.errors import MinervaError
from pytest_minerva.timing import memory
from pytest_minerva.timing.roofline import Roofline, WeightBytes, roofline, weight_bytes_per_token
from pytest_minerva.timing.scenarios import Prompt, Scenario, build_prompt, get
from pytest_minerva.timing.stats import Stats

if TYPE_CHECKING:
    from pytest_minerva.matrix import Case
    from pytest_minerva.resolve import ResolvedArtifact
    from pytest_minerva.session import MinervaSession

#: Per-run figures summarised with :class:`Stats`, in milliseconds or tokens per second.
RUN_METRICS = ("ttft_ms", "tpt_ms", "total_ms", "throughput_tps", "prefill_tps", "decode_tps")
KV_PROBE_TOKENS = 256
KV_PROBE_PROMPT = 32


class BenchmarkError(MinervaError):
    """A run did not produce what the scenario asked for; the message says how."""


@dataclass(frozen=True)
class RunRecord:
    """One timed run: the request time, each token's id and timestamp, and engine counters."""

    run: int
    prompt_tokens: int
    requested_tokens: int
    request_s: float
    token_times_s: tuple[float, ...]
    token_ids: tuple[int, ...]
    finish_reason: str | None
    engine: dict[str, Any] | None = None

    @property
    def generated_tokens(self) -> int:
        return len(self.token_times_s)

    def problem(self) -> str | None:
        """Why this run cannot be used (early stop, disordered timestamps), or None."""
        n = self.generated_tokens
        if n != self.requested_tokens:
            return (
                f"run {self.run} generated {n} of {self.requested_tokens} tokens "
                f"(finish_reason={self.finish_reason!r}); the backend stopped early instead of ignoring EOS"
            )
        if n < 2:
            return f"run {self.run}: TpT needs at least 2 generated tokens, got {n}"
        times = (self.request_s, *self.token_times_s)
        if any(b < a for a, b in itertools.pairwise(times)):
            return f"run {self.run}: token timestamps go backwards"
        if not self.token_times_s[0] > self.request_s:
            return f"run {self.run}: the first token's timestamp is not after the request"
        if not self.decode_s > 0:
            return f"run {self.run}: the first and last tokens have the same timestamp"
        return None

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] - self.request_s

    @property
    def e2e_s(self) -> float:
        return self.token_times_s[-1] - self.request_s

    @property
    def decode_s(self) -> float:
        """E2E - TTFT: the time from the first token to the last."""
        return self.token_times_s[-1] - self.token_times_s[0]

    @property
    def tpt_s(self) -> float:
        return self.decode_s / (self.generated_tokens - 1)

    @property
    def itl_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in itertools.pairwise(t)]

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.ttft_s

    @property
    def decode_tps(self) -> float:
        return (self.generated_tokens - 1) / self.decode_s

    @property
    def throughput_tps(self) -> float:
        return self.generated_tokens / self.e2e_s

    def figures(self) -> dict[str, float]:
        return {
            "ttft_ms": self.ttft_s * 1e3,
            "tpt_ms": self.tpt_s * 1e3,
            "total_ms": self.e2e_s * 1e3,
            "throughput_tps": self.throughput_tps,
            "prefill_tps": self.prefill_tps,
            "decode_tps": self.decode_tps,
        }

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run": self.run,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "finish_reason": self.finish_reason,
        }
        if self.problem() is None:
            data.update(self.figures())
            data["itl_ms"] = [x * 1e3 for x in self.itl_s]
        data["engine"] = self.engine
        return data


@dataclass
class ScenarioResult:
    """All runs of one scenario on one backend, and their statistics."""

    scenario: Scenario
    prompt: Prompt | None
    warmup: int
    runs: list[RunRecord] = field(default_factory=list)
    error: str | None = None
    tokenize_s: Stats | None = None
    detokenize_s: Stats | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    def stats(self, metric: str) -> Stats:
        """Statistics of one of :data:`RUN_METRICS` over the timed runs."""
        if not self.ok:
            raise BenchmarkError(f"{self.scenario.name}: no statistics, the scenario failed: {self.error}")
        return Stats(r.figures()[metric] for r in self.runs)

    def itl_ms(self) -> Stats:
        """Inter-token latencies of all timed runs, pooled."""
        if not self.ok:
            raise BenchmarkError(f"{self.scenario.name}: no statistics, the scenario failed: {self.error}")
        return Stats(x * 1e3 for r in self.runs for x in r.itl_s)

    def engine_stats(self) -> dict[str, Stats]:
        """llama.cpp's own per-run prefill / decode / sampling figures, where it reported them."""
        runs = [r.engine for r in self.runs if r.engine]
        if not self.ok or len(runs) != len(self.runs):
            return {}
        out = {
            "prefill_ms": Stats(e["t_p_eval_ms"] for e in runs),
            "decode_ms_per_token": Stats(e["t_eval_ms"] / max(e["n_eval"], 1) for e in runs),
            "prefill_tps": Stats(e["n_p_eval"] / e["t_p_eval_ms"] * 1e3 for e in runs if e["t_p_eval_ms"] > 0),
            "decode_tps": Stats(e["n_eval"] / e["t_eval_ms"] * 1e3 for e in runs if e["t_eval_ms"] > 0),
        }
        if all("t_sample_ms" in e for e in runs):
            out["sample_ms_per_token"] = Stats(e["t_sample_ms"] / max(e["n_sample"], 1) for e in runs)
        return out

    def breakdown(self) -> list[dict[str, Any]]:
        """Median time of each stage of a run and where the figure comes from."""
        if not self.ok:
            return []
        rows: list[dict[str, Any]] = []
        if self.tokenize_s is not None:
            rows.append(_stage("tokenize (prompt text)", self.tokenize_s.median * 1e3, "timed backend.tokenize()"))
        rows.append(_stage("prefill + first token (TTFT)", self.stats("ttft_ms").median, "token stream"))
        rows.append(_stage("decode, per token (TpT)", self.stats("tpt_ms").median, "token stream"))
        engine = self.engine_stats()
        if engine:
            rows.append(_stage("prefill (engine)", engine["prefill_ms"].median, "llama.cpp t_p_eval_ms"))
            rows.append(
                _stage(
                    "decode forward, per token (engine)",
                    engine["decode_ms_per_token"].median,
                    "llama.cpp t_eval_ms",
                )
            )
            if "sample_ms_per_token" in engine:
                rows.append(
                    _stage(
                        "sampling, per token (engine)",
                        engine["sample_ms_per_token"].median,
                        "llama.cpp t_sample_ms",
                    )
                )
        if self.detokenize_s is not None:
            rows.append(
                _stage("detokenize (generated ids)", self.detokenize_s.median * 1e3, "timed backend.detokenize()")
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "scenario": self.scenario.name,
            "prompt_tokens": self.scenario.prompt_tokens,
            "generate_tokens": self.scenario.generate_tokens,
            "prompt_file": self.scenario.prompt_file,
            "prompt_repeats": self.prompt.repeats if self.prompt else None,
            "warmup": self.warmup,
            "error": self.error,
            "stats": {},
            "itl_ms": None,
            "engine_stats": {},
            "breakdown": self.breakdown(),
            "runs": [r.as_dict() for r in self.runs],
        }
        if self.ok:
            data["stats"] = {m: self.stats(m).as_dict() for m in RUN_METRICS}
            data["itl_ms"] = self.itl_ms().as_dict()
            data["engine_stats"] = {k: v.as_dict() for k, v in self.engine_stats().items()}
        if self.tokenize_s is not None:
            data["tokenize_ms"] = Stats(x * 1e3 for x in self.tokenize_s.data).as_dict()
        if self.detokenize_s is not None:
            data["detokenize_ms"] = Stats(x * 1e3 for x in self.detokenize_s.data).as_dict()
        return data


def _stage(name: str, median_ms: float, source: str) -> dict[str, Any]:
    return {"operation": name, "median_ms": median_ms, "source": source}


def _engine_counters(backend: Backend) -> Callable[[], dict[str, Any]] | None:
    read = getattr(backend, "perf_counters", None)
    return read if callable(read) else None


def _reset_engine_counters(backend: Backend) -> None:
    reset = getattr(backend, "reset_perf_counters", None)
    if callable(reset):
        reset()


def timed_run(backend: Backend, prompt_ids: Sequence[int], max_tokens: int, run: int = 1) -> RunRecord:
    """Generate ``max_tokens`` tokens once and record the request time and every token event."""
    request = GenerationRequest(tuple(prompt_ids), max_tokens, temperature=0.0, ignore_eos=True)
    counters = _engine_counters(backend)
    gc.collect()
    if counters is not None:
        _reset_engine_counters(backend)
    request_s = time.perf_counter()
    events = list(backend.stream(request))
    engine = counters() if counters is not None else None
    return RunRecord(
        run=run,
        prompt_tokens=len(prompt_ids),
        requested_tokens=max_tokens,
        request_s=request_s,
        token_times_s=tuple(e.time_s for e in events),
        token_ids=tuple(e.token for e in events),
        finish_reason=events[-1].finish_reason if events else None,
        engine=engine,
    )


def _seconds(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


def run_scenario(
    backend: Backend,
    scenario: Scenario,
    *,
    runs: int = 5,
    warmup: int = 1,
    on_run: Callable[[], None] | None = None,
) -> ScenarioResult:
    """Warm up, then time ``runs`` generations of ``scenario``; failures land in ``.error``.

    ``on_run`` is called after each warm-up and timed run (a progress bar), never
    while a run is being timed.
    """
    if runs < 1 or warmup < 0:
        raise MinervaError(f"runs must be at least 1 and warmup at least 0, got runs={runs}, warmup={warmup}")
    if scenario.generate_tokens < 2:
        raise MinervaError(f"{scenario.name}: TpT needs at least 2 generated tokens")
    try:
        prompt = build_prompt(backend, scenario)
    except MinervaError as exc:
        return ScenarioResult(scenario, None, warmup, error=str(exc))
    result = ScenarioResult(scenario, prompt, warmup)
    try:
        result.tokenize_s = Stats(_seconds(lambda: backend.tokenize(prompt.text)) for _ in range(runs))
        for i in range(warmup):
            record = timed_run(backend, prompt.ids, scenario.generate_tokens, run=i + 1)
            if on_run is not None:
                on_run()
            problem = record.problem()
            if problem:
                result.error = f"warm-up {problem}"
                return result
        for i in range(runs):
            record = timed_run(backend, prompt.ids, scenario.generate_tokens, run=i + 1)
            result.runs.append(record)
            if on_run is not None:
                on_run()
            problem = record.problem()
            if problem:
                result.error = problem
                return result
        result.detokenize_s = Stats(_seconds(partial(backend.detokenize, r.token_ids)) for r in result.runs)
    except MinervaError as exc:
        result.error = str(exc)
    return result


@dataclass
class Fidelity:
    """The harness's figures against llama.cpp's own timers over the same runs.

    ``decode_overhead`` is ``harness decode time / engine decode time - 1`` summed over
    all timed runs: the share the harness (and the adapter's Python between tokens,
    sampling included) adds to what llama.cpp measured inside ``llama_decode``.
    """

    runs: int
    harness_decode_tps: float
    engine_decode_tps: float
    decode_overhead: float
    harness_prefill_tps: float
    engine_prefill_tps: float
    prefill_overhead: float
    engine_sample_ms_per_token: float | None
    counts_match: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fidelity(results: Iterable[ScenarioResult]) -> Fidelity | None:
    """Compare harness and engine timings over every timed run that has engine counters."""
    runs = [r for res in results if res.ok for r in res.runs if r.engine]
    if not runs:
        return None
    harness_decode = math.fsum(r.decode_s for r in runs)
    engine_decode = math.fsum(r.engine["t_eval_ms"] for r in runs if r.engine) / 1e3
    harness_prefill = math.fsum(r.ttft_s for r in runs)
    engine_prefill = math.fsum(r.engine["t_p_eval_ms"] for r in runs if r.engine) / 1e3
    decoded = sum(r.generated_tokens - 1 for r in runs)
    prefilled = sum(r.prompt_tokens for r in runs)
    counts_match = all(
        r.engine is not None
        and r.engine["n_eval"] == r.generated_tokens - 1
        and r.engine["n_p_eval"] == r.prompt_tokens
        for r in runs
    )
    sampled = [r.engine for r in runs if r.engine and "t_sample_ms" in r.engine]
    sample_ms = (
        math.fsum(e["t_sample_ms"] for e in sampled) / max(1, sum(e["n_sample"] for e in sampled)) if sampled else None
    )
    if engine_decode <= 0 or engine_prefill <= 0:
        return None
    return Fidelity(
        runs=len(runs),
        harness_decode_tps=decoded / harness_decode,
        engine_decode_tps=decoded / engine_decode,
        decode_overhead=harness_decode / engine_decode - 1,
        harness_prefill_tps=prefilled / harness_prefill,
        engine_prefill_tps=prefilled / engine_prefill,
        prefill_overhead=harness_prefill / engine_prefill - 1,
        engine_sample_ms_per_token=sample_ms,
        counts_match=counts_match,
    )


def measure_kv_growth(backend: Backend, kv: memory.KvFigures, n_ctx: int, tokens: int = KV_PROBE_TOKENS) -> None:
    """One untimed generation reading engine memory at the first and last token; fills ``kv``."""
    tokens = min(tokens, n_ctx - KV_PROBE_PROMPT - 1)
    if tokens < 16:
        kv.note = f"context of {n_ctx} leaves too little room to measure KV growth"
        return
    read, method = memory.kv_reader(backend)
    prompt = build_prompt(backend, get(f"sweep-{KV_PROBE_PROMPT}"))
    request = GenerationRequest(prompt.ids, tokens, ignore_eos=True)
    first = last = None
    count = 0
    gc.collect()
    for event in backend.stream(request):
        count += 1
        if event.index == 0:
            first = read()
        elif event.index == tokens - 1:
            last = read()
    if count != tokens or first is None or last is None:
        kv.note = f"KV probe generated {count} of {tokens} tokens"
        return
    kv.measured_bytes_per_token = (last - first) / (tokens - 1)
    kv.measured_method = f"growth of {method} from the first to the last of {tokens} generated tokens"
    kv.measured_tokens = tokens
    computed = kv.computed_bytes_per_token
    if computed and abs(kv.measured_bytes_per_token - computed) > computed / 2:
        kv.note = f"the measured growth is not within 50% of the computed figure ({method} does not resolve it)"


@dataclass
class LoadedBackend:
    """A backend built by :func:`load_backend` with what its construction cost."""

    backend: Backend
    artifact: ResolvedArtifact
    load_s: float
    rss_before: int
    rss_after: int
    n_ctx: int
    peak_reset: bool


def load_backend(session: MinervaSession, case: Case, n_ctx: int) -> LoadedBackend:
    """Resolve and build ``case``'s backend with ``n_ctx``, timing the construction.

    The peak-RSS counter is reset first, so the peak read later is this backend's.
    The backend is not cached in the session: the caller closes it.
    """
    assert case.backend is not None
    assert case.device is not None
    artifact = session.resolve(case)
    options: LoadOptions = session.load_options(case.device)
    options.n_ctx = n_ctx
    gc.collect()
    peak_reset = memory.reset_peak_rss()
    rss_before = memory.current_rss_bytes()
    t0 = time.perf_counter()
    built = None
    if session.hook is not None:
        built = session.hook.pytest_minerva_make_backend(spec=case.backend, artifact=artifact, options=options)
    if built is None:
        built = case.backend.build(artifact, options)
    load_s = time.perf_counter() - t0
    return LoadedBackend(built, artifact, load_s, rss_before, memory.current_rss_bytes(), n_ctx, peak_reset)


def needed_context(scenarios: Iterable[Scenario], model_context: int | None) -> int:
    """The context to load a backend with: room for every scenario and the KV probe, within the model's."""
    need = max([s.context_tokens for s in scenarios] + [KV_PROBE_PROMPT + KV_PROBE_TOKENS + 1])
    ctx = max(need, 2048)
    return min(ctx, model_context) if model_context else ctx


def weights_for(artifact: ResolvedArtifact, backend_name: str, info: dict[str, Any]) -> WeightBytes | None:
    """Bytes per generated token as ``backend_name`` holds ``artifact``'s weights, or None."""
    summary = artifact.summary
    if summary is None or not summary.tensors:
        return None
    quantized_engine = backend_name == "llama_cpp" and artifact.format == "gguf"
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
    result.weights = weights_for(loaded.artifact, result.backend, info)
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


__all__ = [
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
