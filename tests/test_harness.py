"""The timing harness on real engines running the seeded tiny-random-llama model.

These tests check what the harness records and derives (token counts, the formulas
from timestamps, statistics from samples, engine counters, memory readings), never
how fast anything is.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_minerva.backends.base import Backend, GenerationRequest, TokenEvent
from pytest_minerva.errors import ArtifactMissing
from pytest_minerva.formats import TensorInfo
from pytest_minerva.matrix import Case
from pytest_minerva.options import Settings
from pytest_minerva.session import MinervaSession, build_session
from pytest_minerva.timing import harness, memory, roofline, scenarios
from pytest_minerva.timing.harness import BenchmarkError, RunRecord

SHORT = scenarios.SCENARIOS["short"]


@pytest.fixture(scope="module")
def session() -> Iterator[MinervaSession]:
    made = build_session(Settings(models=["tiny-random-llama"]))
    yield made
    made.close()


def _case(session: MinervaSession, backend: str, fmt: str, quant: str) -> Case:
    cases = [
        c
        for c in session.cases()
        if c.backend is not None
        and c.backend.name == backend
        and c.artifact.format == fmt
        and (c.artifact.quant or "").upper() == quant.upper()
    ]
    assert cases, f"no {backend} {fmt} {quant} case for tiny-random-llama"
    return cases[0]


def _load(session: MinervaSession, case: Case) -> Iterator[harness.LoadedBackend]:
    reason = session.check_runnable(case)
    if reason:
        pytest.skip(reason)
    loaded = harness.load_backend(session, case, 512)
    yield loaded
    loaded.backend.close()


@pytest.fixture(scope="module")
def llama_case(session: MinervaSession) -> Case:
    return _case(session, "llama_cpp", "gguf", "F32")


@pytest.fixture(scope="module")
def llama(session: MinervaSession, llama_case: Case) -> Iterator[harness.LoadedBackend]:
    yield from _load(session, llama_case)


@pytest.fixture(scope="module", params=["llama_cpp", "transformers", "mlx_lm"])
def any_backend(request: pytest.FixtureRequest, session: MinervaSession) -> Iterator[harness.LoadedBackend]:
    fmt = {"llama_cpp": "gguf", "transformers": "safetensors", "mlx_lm": "mlx"}[request.param]
    yield from _load(session, _case(session, request.param, fmt, "F32"))


@pytest.fixture(scope="module")
def short_result(llama: harness.LoadedBackend) -> harness.ScenarioResult:
    return harness.run_scenario(llama.backend, SHORT, runs=3, warmup=1)


class StopsEarly:
    """A real backend whose stream ends after ``stop_after`` tokens with ``finish_reason='stop'``,
    as an engine that honours EOS despite ``ignore_eos`` would."""

    def __init__(self, inner: Backend, stop_after: int) -> None:
        self.inner = inner
        self.stop_after = stop_after

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        for event in self.inner.stream(request):
            if event.index == self.stop_after - 1:
                yield dataclasses.replace(event, finish_reason="stop")
                return
            yield event


def test_every_backend_generates_exactly_the_requested_tokens(any_backend: harness.LoadedBackend) -> None:
    result = harness.run_scenario(any_backend.backend, SHORT, runs=2, warmup=1)
    assert result.error is None
    assert [r.generated_tokens for r in result.runs] == [SHORT.generate_tokens] * 2
    assert all(len(r.token_ids) == SHORT.generate_tokens for r in result.runs)
    assert all(r.prompt_tokens == SHORT.prompt_tokens for r in result.runs)
    assert result.runs[-1].finish_reason == "length"


def test_figures_follow_from_the_harness_receipts(short_result: harness.ScenarioResult) -> None:
    assert short_result.ok
    for run in short_result.runs:
        t, n = run.received_s, run.generated_tokens
        assert len(t) == n
        assert all(claim <= receipt for claim, receipt in zip(run.token_times_s, t, strict=True))
        assert run.provenance()["ttft_ms"] == run.provenance()["total_ms"] == "harness clock"
        ttft, e2e = t[0] - run.request_s, t[-1] - run.request_s
        assert 0 < ttft < e2e
        figures = run.figures()
        assert figures["ttft_ms"] == pytest.approx(ttft * 1e3, rel=1e-12)
        assert figures["total_ms"] == pytest.approx(e2e * 1e3, rel=1e-12)
        assert figures["tpt_ms"] == pytest.approx((e2e - ttft) / (n - 1) * 1e3, rel=1e-9)
        assert figures["throughput_tps"] == pytest.approx(n / e2e, rel=1e-9)
        assert figures["prefill_tps"] == pytest.approx(run.prompt_tokens / ttft, rel=1e-9)
        assert figures["decode_tps"] == pytest.approx((n - 1) / (e2e - ttft), rel=1e-9)
        assert len(run.itl_s) == n - 1
        assert math.fsum(run.itl_s) == pytest.approx(e2e - ttft, rel=1e-9)
        assert statistics.mean(run.itl_s) * 1e3 == pytest.approx(figures["tpt_ms"], rel=1e-9)


def test_statistics_are_computed_from_the_recorded_runs(short_result: harness.ScenarioResult) -> None:
    ttfts = [(r.received_s[0] - r.request_s) * 1e3 for r in short_result.runs]
    stats = short_result.stats("ttft_ms")
    assert stats.n == 3
    assert sorted(stats.data) == pytest.approx(sorted(ttfts))
    assert stats.median == pytest.approx(statistics.median(ttfts))
    assert stats.stddev == pytest.approx(statistics.stdev(ttfts))
    itl = short_result.itl_ms()
    assert itl.n == 3 * (SHORT.generate_tokens - 1)
    assert itl.max == pytest.approx(max(x * 1e3 for r in short_result.runs for x in r.itl_s))
    data = short_result.as_dict()
    assert data["stats"]["ttft_ms"]["median"] == pytest.approx(statistics.median(ttfts))
    assert [run["run"] for run in data["runs"]] == [1, 2, 3]
    assert data["warmup"] == 1


def test_llama_cpp_counters_agree_with_the_stream(short_result: harness.ScenarioResult) -> None:
    for run in short_result.runs:
        assert run.engine is not None
        assert run.engine["n_p_eval"] == SHORT.prompt_tokens
        assert run.engine["n_eval"] == SHORT.generate_tokens - 1
    fid = harness.fidelity([short_result])
    assert fid is not None
    assert fid.counts_match
    assert fid.runs == 3
    decoded = 3 * (SHORT.generate_tokens - 1)
    engine_s = math.fsum(r.engine["t_eval_ms"] for r in short_result.runs if r.engine) / 1e3
    assert fid.engine_decode_tps == pytest.approx(decoded / engine_s)
    harness_s = math.fsum(r.decode_s for r in short_result.runs)
    assert fid.decode_overhead == pytest.approx(harness_s / engine_s - 1)
    names = [row["operation"] for row in short_result.breakdown()]
    assert names == [
        "tokenize (prompt text)",
        "prefill + first token (TTFT)",
        "decode, per token (TpT)",
        "prefill (engine)",
        "decode forward, per token (engine)",
        "sampling, per token (engine)",
        "detokenize (generated ids)",
    ]


def test_a_backend_that_stops_early_is_an_error_not_an_average(llama: harness.LoadedBackend) -> None:
    early = StopsEarly(llama.backend, stop_after=5)
    result = harness.run_scenario(early, SHORT, runs=3, warmup=0)  # type: ignore[arg-type]
    assert not result.ok
    assert result.error == (
        "run 1 generated 5 of 15 tokens (finish_reason='stop'); the backend stopped early instead of ignoring EOS"
    )
    assert len(result.runs) == 1
    with pytest.raises(BenchmarkError, match="the scenario failed"):
        result.stats("tpt_ms")
    data = result.as_dict()
    assert data["stats"] == {}
    assert data["itl_ms"] is None
    assert "tpt_ms" not in data["runs"][0]


def test_an_early_stop_during_warmup_is_reported_as_such(llama: harness.LoadedBackend) -> None:
    early = StopsEarly(llama.backend, stop_after=3)
    result = harness.run_scenario(early, SHORT, runs=2, warmup=1)  # type: ignore[arg-type]
    assert result.error is not None
    assert result.error.startswith("warm-up run 1 generated 3 of 15 tokens")
    assert result.runs == []


def test_bench_backend_marks_the_case_as_error(llama: harness.LoadedBackend, llama_case: Case) -> None:
    early = dataclasses.replace(llama, backend=StopsEarly(llama.backend, 4))
    result = harness.bench_backend(early, llama_case, [SHORT], runs=1, warmup=0, kv_probe=False)
    assert result.status == "error"
    assert result.reason is not None
    assert result.reason.startswith("short: run 1 generated 4 of 15 tokens")
    assert result.roofline is None
    assert result.fidelity is None


def test_the_harness_face_re_exports_each_name_from_its_module() -> None:
    """The asv suite calls ``harness.<name>`` (against older commits too): each public name is
    the very object of the one module that defines it."""
    from pytest_minerva.timing import bench, kv, load, runs
    from pytest_minerva.timing import fidelity as fidelity_module

    homes = [runs, fidelity_module, kv, load, bench]
    for name in harness.__all__:
        owners = [m for m in homes if name in m.__all__]
        assert len(owners) == 1, f"{name} is exported by {[m.__name__ for m in owners]}"
        assert getattr(harness, name) is getattr(owners[0], name)
    for name in ("load_backend", "run_scenario", "needed_context", "measure_kv_growth", "timed_run"):
        assert name in harness.__all__


def test_timestamps_that_go_backwards_are_rejected() -> None:
    run = RunRecord(
        1, 4, 3, request_s=10.0, token_times_s=(10.5, 10.4, 10.6), token_ids=(1, 2, 3), finish_reason="length"
    )
    assert run.problem() == "run 1: token timestamps go backwards"


def test_prompts_have_exactly_the_stated_token_count(llama: harness.LoadedBackend) -> None:
    backend = llama.backend
    for scenario in scenarios.SCENARIOS.values():
        prompt = scenarios.build_prompt(backend, scenario)
        assert len(prompt.ids) == scenario.prompt_tokens
        text = scenarios.prompt_text(scenario.prompt_file)
        assert list(prompt.ids) == backend.tokenize(text)[: scenario.prompt_tokens]
        assert prompt.repeats == 1


def test_a_prompt_longer_than_its_file_repeats_the_text(llama: harness.LoadedBackend) -> None:
    backend = llama.backend
    base = scenarios.prompt_text("short.txt")
    per_copy = len(backend.tokenize(base))
    wanted = per_copy * 3 + 7
    prompt = scenarios.build_prompt(backend, scenarios.Scenario("x", wanted, 2, "short.txt"))
    assert len(prompt.ids) == wanted
    assert prompt.repeats >= 4
    repeated = "\n\n".join([base] * prompt.repeats)
    assert list(prompt.ids) == backend.tokenize(repeated)[:wanted]


def test_sweep_is_capped_by_the_context() -> None:
    assert [s.prompt_tokens for s in scenarios.sweep(512)] == [32, 64, 128, 256]
    assert [s.prompt_tokens for s in scenarios.sweep(8192)] == [32, 64, 128, 256, 512, 1024, 2048]
    assert scenarios.sweep(2048)[-1].prompt_tokens == 1024  # 2048 + 16 generated would not fit
    assert all(s.generate_tokens == scenarios.SWEEP_GENERATE_TOKENS for s in scenarios.sweep(8192))
    assert scenarios.get("sweep-64").prompt_tokens == 64
    with pytest.raises(Exception, match="unknown scenario 'huge'"):
        scenarios.get("huge")


def test_needed_context_fits_scenarios_and_the_model() -> None:
    assert harness.needed_context(scenarios.sweep(8192), 8192) == 2048 + 16
    assert harness.needed_context(scenarios.SCENARIOS.values(), 512) == 512
    assert harness.needed_context(scenarios.SCENARIOS.values(), None) == 2048


def test_kv_bytes_per_token_computed_and_measured_on_llama_cpp(llama: harness.LoadedBackend) -> None:
    meta = llama.artifact.summary.metadata
    kv = memory.computed_kv(meta, "llama_cpp", llama.backend.info())
    layers = meta["llama.block_count"]
    kv_heads = meta["llama.attention.head_count_kv"]
    head_dim = meta["llama.embedding_length"] // meta["llama.attention.head_count"]
    assert kv.cache_dtype == "f16"
    assert kv.computed_bytes_per_token == 2 * layers * kv_heads * head_dim * 2
    harness.measure_kv_growth(llama.backend, kv, llama.n_ctx, tokens=128)
    assert kv.measured_tokens == 128
    # kv_cache_bytes() is llama_state_seq_get_size of sequence 0
    assert kv.measured_method == (
        "growth of llama_cpp.kv_cache_bytes() from the first to the last of 128 generated tokens"
    )
    computed, measured = kv.computed_bytes_per_token, kv.measured_bytes_per_token
    assert computed is not None
    assert measured is not None
    # llama.cpp's state also stores a position and sequence id per cell, a few bytes over the K/V data.
    assert computed <= measured <= computed * 1.1


def test_transformers_cache_is_computed_in_the_weights_dtype() -> None:
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    kv = memory.computed_kv(config, "transformers", {"dtype": "float32"})
    assert kv.computed_bytes_per_token == 2 * 30 * 3 * 64 * 4
    assert kv.computed_formula.startswith("computed from config.json: 30 layers x 3 KV heads x (64 + 64)")
    assert memory.computed_kv(config, "someengine", {}).note == "someengine does not say which dtype its KV cache uses"


def test_weight_bytes_count_one_embedding_row_unless_tied() -> None:
    emb = TensorInfo("token_embd.weight", (8, 100), "F32", 0, 3200)
    blk = TensorInfo("blk.0.ffn_up.weight", (8, 16), "F32", 3200, 512)
    head = TensorInfo("output.weight", (8, 100), "F32", 3712, 3200)
    untied = roofline.weight_bytes_per_token([emb, blk, head], vocab_size=100)
    assert untied.bytes_per_token == 32 + 512 + 3200
    assert not untied.tied_embeddings
    tied = roofline.weight_bytes_per_token([emb, blk])
    assert tied.bytes_per_token == 3200 + 512
    assert tied.tied_embeddings
    as_f32 = roofline.weight_bytes_per_token([emb, blk], element_bytes=4)
    assert as_f32.bytes_per_token == (800 + 128) * 4


def test_weight_bytes_match_llama_cpp_model_size_for_smollm2() -> None:
    made = build_session(Settings(models=["smollm2-135m"], backends=["llama_cpp"]))
    case = made.cases(formats=["gguf"])[0]
    assert case.backend is not None
    try:
        made.resolve(case)
    except ArtifactMissing as exc:
        pytest.skip(str(exc))
    loaded = harness.load_backend(made, case, 256)
    try:
        info = loaded.backend.info()
        weights = harness.weights_for(loaded.artifact, case.backend, info)
    finally:
        loaded.backend.close()
    assert weights is not None
    assert weights.tied_embeddings
    assert weights.bytes_per_token == info["model_bytes"]  # llama_model_size(): the engine's own count


def test_roofline_fraction() -> None:
    roof = roofline.roofline(10.0, 1e8, 50.0)
    assert roof.ceiling_tokens_per_s == pytest.approx(100.0)
    assert roof.fraction == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        roofline.roofline(0.0, 1e8, 50.0)


def test_bandwidth_probe_reads_a_buffer_larger_than_the_cache() -> None:
    probe = roofline.probe_bandwidth(1, budget_s=0.5, max_repeats=3)
    llc = roofline.last_level_cache_bytes() or 0
    assert probe.buffer_bytes >= max(8 * llc, roofline.MIN_PROBE_BYTES)
    assert 1 <= len(probe.samples_gb_per_s) <= 3
    assert probe.gb_per_s == statistics.median(probe.samples_gb_per_s)
    assert probe.gb_per_s > 0
    assert "1 thread(s)" in probe.method
    assert f"median of {len(probe.samples_gb_per_s)} passes" in probe.method


PEAK_RSS_PROBE = """
import json, numpy as np
from pytest_minerva.timing import memory
if not memory.reset_peak_rss():
    print(json.dumps(None))
else:
    before = memory.current_rss_bytes()
    block = np.ones(64 * 2**20 // 8)
    peak, method = memory.peak_rss(since_reset=True)
    print(json.dumps([before, peak, method]))
"""


def test_peak_rss_sees_an_allocation_after_a_reset() -> None:
    # In a fresh interpreter: in this process, models loaded by other tests keep file-backed
    # (mmapped) pages in RSS that the kernel may reclaim at any moment, moving "before".
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PEAK_RSS_PROBE], capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout)
    if measured is None:
        pytest.skip("this platform cannot reset the peak RSS")
    before, peak, method = measured
    assert peak >= before + 60 * 2**20
    assert method.startswith("VmHWM since the reset")


def test_load_backend_times_construction(llama: harness.LoadedBackend) -> None:
    assert llama.load_s > 0
    assert llama.n_ctx == 512
    assert llama.backend.info()["n_ctx"] == 512


def test_device_memory_is_read_from_the_library_the_backend_uses(any_backend: harness.LoadedBackend) -> None:
    backend = any_backend.backend
    counter = memory.device_memory(backend)
    if backend.name != "mlx_lm":
        assert counter is None  # llama.cpp has no peak counter; torch's is CUDA-only
        return
    assert counter is not None
    assert counter.method == "mlx.core.get_peak_memory"
    counter.reset()
    harness.timed_run(backend, list(range(1, 9)), 4)
    assert counter.peak() >= counter.current() > 0


def test_run_record_as_dict_holds_milliseconds(short_result: harness.ScenarioResult) -> None:
    run = short_result.runs[0]
    data: dict[str, Any] = run.as_dict()
    assert data["generated_tokens"] == 15
    assert data["ttft_ms"] == pytest.approx(run.ttft_s * 1e3)
    assert len(data["itl_ms"]) == 14
    assert data["engine"]["n_eval"] == 14
