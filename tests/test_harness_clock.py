"""The harness keeps its own clock: an adapter's token timestamps are held against the harness's
receipts of the events, and a backend whose timestamps disagree fails the scenario with one line.

The unit tests use fake backends that sleep per token as an engine would and claim times
scaled by a factor after the first token (compressed or stretched), a claim later than its
receipt, and a stream that buffers every event without saying so and then spreads the
timestamps evenly; honest streaming and honestly declared-buffering fakes pass with the
provenance labels of their figures. The end-to-end test runs ``minerva bench`` on SmolLM2
with llama_cpp, transformers and mlx_lm beside two lying wrappers of the real
``LlamaCppBackend`` registered through an installed entry point.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_minerva.backends.base import BufferedStream, GenerationRequest, TokenEvent
from pytest_minerva.compare.samples import round_figures
from pytest_minerva.storage import results
from pytest_minerva.timing import clock, report
from pytest_minerva.timing.runs import RunRecord, run_scenario, timed_run
from pytest_minerva.timing.scenarios import Prompt, Scenario

ROOT = Path(__file__).resolve().parents[1]
#: 16 tokens at 15 ms: a 225 ms decode, long enough that compressing it to 0.8 lags 45 ms.
SCENARIO = Scenario("clock", 8, 16, "short.txt")
TOKEN_S = 0.015
REASON = re.compile(
    r"backend (?P<name>\S+)'s timestamps disagree with the harness clock: "
    r"(claimed E2E (?P<claimed>\d+) ms, observed (?P<observed>\d+) ms"
    r"|token (?P<token>\d+) "
    r"(is claimed [\d.]+ ms after the harness received it|claimed [\d.]+ ms before it was received))"
)


class FakeEngine:
    """A backend that generates a token every ``token_s`` seconds and stamps it honestly."""

    name = "fake"
    token_s = TOKEN_S
    device = "cpu"
    vocab_size = 256
    bos_id = None
    eos_id = None

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return list(text.encode()[:256])

    def detokenize(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode(errors="replace")

    def logits(self, ids: Sequence[int]) -> Any:
        raise NotImplementedError

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> Any:
        raise NotImplementedError

    def generate(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        last = request.max_tokens - 1
        for index in range(request.max_tokens):
            time.sleep(self.token_s)
            yield TokenEvent(index, 65 + index % 26, "x", time.perf_counter(), "length" if index == last else None)

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        yield from self.generate(request)

    def info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class Scaled(FakeEngine):
    """Claims ``first + (true - first) * factor``: a decode reported faster (< 1) or slower (> 1)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.name = f"scaled-{factor}"

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        first: float | None = None
        for event in self.generate(request):
            first = event.time_s if first is None else first
            yield dataclasses.replace(event, time_s=first + (event.time_s - first) * self.factor)


class ClaimsAhead(FakeEngine):
    """Claims token 3 five milliseconds after the moment it hands it over."""

    name = "ahead"

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        for event in self.generate(request):
            yield dataclasses.replace(event, time_s=event.time_s + 0.005) if event.index == 3 else event


class Redistributed(FakeEngine):
    """Collects every event, then yields them with the true first and last times and the rest
    spread evenly between: a buffering stream that does not declare it."""

    name = "redistributed"

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        events = list(self.generate(request))
        first, last, n = events[0].time_s, events[-1].time_s, len(events)
        for i, event in enumerate(events):
            yield dataclasses.replace(event, time_s=first + (last - first) * i / (n - 1))


class HonestBuffered(FakeEngine):
    """Collects every event, then yields them with their true times, and says so."""

    name = "honest-buffered"

    def stream_buffering(self) -> str:
        return "reads the whole response before the first event"

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        yield from list(self.generate(request))


class BufferedAndCompressed(HonestBuffered):
    """Declares buffering, and claims the decode took half as long as it did: 375 ms, so the
    missing half is past what a buffering adapter may do after its last chunk."""

    name = "buffered-compressed"
    token_s = 0.025

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        events = list(self.generate(request))
        first = events[0].time_s
        yield from (dataclasses.replace(e, time_s=first + (e.time_s - first) * 0.5) for e in events)


def _run(backend: Any, runs: int = 2) -> Any:
    return run_scenario(backend, SCENARIO, runs=runs, warmup=0)


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 2.0])
def test_compressed_or_stretched_timestamps_fail_the_scenario(factor: float) -> None:
    result = _run(Scaled(factor), runs=1)
    assert not result.ok
    assert result.error is not None and "\n" not in result.error
    match = REASON.fullmatch(result.error)
    assert match is not None, result.error
    assert match["name"] == f"scaled-{factor}"
    if factor < 1:  # every claim is early: the end-to-end times disagree
        assert match["claimed"] is not None
        decode_ms = (SCENARIO.generate_tokens - 1) * TOKEN_S * 1e3
        assert int(match["observed"]) - int(match["claimed"]) >= (1 - factor) * decode_ms - 2
    else:  # the second token is already claimed after the harness had it
        assert match["token"] == "1"
        assert "ms after the harness received it" in result.error
    data = result.as_dict()
    assert data["stats"] == {}
    assert data["itl_ms"] is None
    assert "ttft_ms" not in data["runs"][0]  # never a row of figures
    assert data["clock_check"]["failed_run"] == 1
    assert data["runs"][0]["clock_check"]["ok"] is False


def test_a_claim_later_than_its_receipt_fails_the_scenario() -> None:
    result = _run(ClaimsAhead(), runs=1)
    assert result.error is not None
    assert re.fullmatch(
        r"backend ahead's timestamps disagree with the harness clock: token 3 is claimed [45]\.\d ms after the "
        r"harness received it",
        result.error,
    )


def test_an_undeclared_buffering_stream_with_spread_timestamps_fails_the_scenario() -> None:
    result = _run(Redistributed(), runs=1)
    assert result.error is not None
    match = REASON.fullmatch(result.error)
    assert match is not None, result.error
    # Its first and last claims are true, so the E2E agrees; the first token was claimed a whole
    # decode before the harness received it.
    assert match["token"] == "0"
    assert "ms before it was received" in result.error


def test_a_declared_buffering_stream_that_compresses_its_claims_fails() -> None:
    result = _run(BufferedAndCompressed(), runs=1)
    assert result.error is not None
    match = REASON.fullmatch(result.error)
    assert match is not None and match["claimed"] is not None, result.error


def test_an_honest_streaming_backend_passes_with_the_harness_clock() -> None:
    result = _run(FakeEngine())
    assert result.ok, result.error
    for run in result.runs:
        assert len(run.received_s) == SCENARIO.generate_tokens
        assert all(c <= r for c, r in zip(run.token_times_s, run.received_s, strict=True))
        assert run.figures()["total_ms"] == pytest.approx((run.received_s[-1] - run.request_s) * 1e3)
        assert run.figures()["ttft_ms"] == pytest.approx((run.received_s[0] - run.request_s) * 1e3)
    data = result.as_dict()
    assert data["buffered"] is None
    assert set(data["provenance"].values()) == {clock.HARNESS_CLOCK, clock.HARNESS_CPU_CLOCK}
    assert {data["provenance"][figure] for figure in clock.CPU_FIGURES.values()} == {clock.HARNESS_CPU_CLOCK}
    assert {"ttft_ms", "tpt_ms", "itl_ms", "total_ms", "throughput_tps", "prefill_tps", "decode_tps"} <= set(
        data["provenance"]
    )
    check = data["clock_check"]
    assert check["runs"] == 2 and check["failed_run"] is None
    assert 0 <= check["median_lag_ms"] <= check["max_lag_ms"] < clock.LAG_ABSOLUTE_S * 1e3
    assert check["claimed_e2e_ms"] <= check["observed_e2e_ms"]


def test_an_honest_declared_buffering_backend_passes_with_adapter_reported_figures() -> None:
    backend = HonestBuffered()
    assert isinstance(backend, BufferedStream)
    result = _run(backend)
    assert result.ok, result.error
    run = result.runs[0]
    assert run.buffered == "reads the whole response before the first event"
    # Per-token figures are the adapter's claims; E2E is the last receipt.
    assert run.figures()["ttft_ms"] == pytest.approx((run.token_times_s[0] - run.request_s) * 1e3)
    assert run.figures()["tpt_ms"] == pytest.approx(
        (run.token_times_s[-1] - run.token_times_s[0]) / (SCENARIO.generate_tokens - 1) * 1e3
    )
    assert run.figures()["total_ms"] == pytest.approx((run.received_s[-1] - run.request_s) * 1e3)
    assert run.received_s[0] >= run.token_times_s[-1]  # it received nothing before the engine finished
    data = result.as_dict()
    assert data["buffered"] == "reads the whole response before the first event"
    sources = data["provenance"]
    assert {sources[f] for f in ("ttft_ms", "tpt_ms", "itl_ms", "prefill_tps", "decode_tps")} == {
        clock.ADAPTER_REPORTED
    }
    assert sources["total_ms"] == sources["throughput_tps"] == clock.HARNESS_CLOCK
    assert data["breakdown"][1]["source"] == "token timestamps (adapter-reported)"


def _document(*backends: Any) -> dict[str, Any]:
    benchmarks, entries = [], []
    for backend in backends:
        result = _run(backend, runs=2)
        case_id = f"m-gguf-{backend.name}-cpu"
        identity = {"case_id": case_id, "backend": backend.name, "model": "m", "format": "gguf", "device": "cpu"}
        entries.append({**identity, "quant": None, "status": "error" if result.error else "ok", "reason": None})
        benchmarks.append({"name": f"{case_id}::clock", **identity, "quant": None, **result.as_dict()})
    document = results.make_document(settings={"model": "m"}, backends=entries, benchmarks=benchmarks, versions={})
    return results.validate(json.loads(json.dumps(document)), "test")


def test_markdown_csv_and_compare_show_the_provenance_and_leave_out_failed_figures() -> None:
    document = _document(FakeEngine(), HonestBuffered(), Scaled(0.5))
    text = report.markdown(document)
    lines = text.splitlines()
    honest = next(line for line in lines if line.startswith("| clock |") and "†" not in line and "error" not in line)
    assert honest.count("[") == 5
    buffered = [line for line in lines if line.startswith("| clock |") and "†" in line]
    assert len(buffered) == 1
    cells = [c.strip() for c in buffered[0].split("|")[1:-1]]
    # TTFT, TpT, ITL, prefill and decode are marked; throughput (the harness's E2E) is not.
    assert [c.endswith("†") for c in cells[2:8]] == [True, True, True, False, True, True]
    assert (
        "† adapter-reported, not the harness clock: honest-buffered reads the whole response before the "
        "first event." in lines
    )
    failed = next(line for line in lines if line.startswith("| clock |") and "error" in line)
    assert "error: backend scaled-0.5's timestamps disagree with the harness clock: claimed E2E" in failed

    rows = list(csv.DictReader(io.StringIO(results.csv_text(document))))
    assert {r["backend"] for r in rows} == {"fake", "honest-buffered"}  # the liar has no rows
    assert {r["provenance"] for r in rows if r["backend"] == "fake"} == {"harness clock"}
    assert {r["provenance"] for r in rows if r["backend"] == "honest-buffered"} == {
        "harness clock: total_ms throughput_tps; "
        "adapter-reported: ttft_ms tpt_ms prefill_tps decode_tps itl_p90_ms itl_p99_ms"
    }

    measured, failed_lines, _ = round_figures(document)
    assert set(measured) == {"m-gguf-fake-cpu::clock", "m-gguf-honest-buffered-cpu::clock"}
    assert len(failed_lines) == 1
    assert failed_lines[0].startswith(
        "m-gguf-scaled-0.5-cpu::clock: backend scaled-0.5's timestamps disagree with the harness clock"
    )


def test_timed_run_raises_nothing_and_problem_names_the_backend_for_asv() -> None:
    """benchmarks/common.py raises on ``record.problem()``: a clock failure is one there too."""
    record = timed_run(Scaled(0.5), list(range(8)), 16)
    problem = record.problem()
    assert problem is not None and problem.startswith("backend scaled-0.5's timestamps disagree")
    assert record.stream_problem() is None


def test_the_asv_suite_records_a_clock_failure_as_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """asv runs the suite's builders against every commit; a lying backend raises there, so asv
    records a failure, never a figure."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import common
    from pytest_minerva.timing.load import LoadedBackend

    liar = Scaled(0.5)
    with pytest.raises(RuntimeError, match=r"^scaled-0\.5 short: backend scaled-0\.5's timestamps disagree with"):
        common.run_figures(liar, "short", 1)  # type: ignore[arg-type]
    loaded = LoadedBackend(liar, None, 0.0, 0, 0, 512, False)  # type: ignore[arg-type]
    scenario = common.LoadedScenario(loaded, SCENARIO, Prompt(SCENARIO, "", tuple(range(8)), 1))
    with pytest.raises(RuntimeError, match=r"^scaled-0\.5 clock: backend scaled-0\.5's timestamps disagree with"):
        scenario.generate()
    honest = common.run_figures(FakeEngine(), "short", 1)  # type: ignore[arg-type]
    assert set(honest) == set(common.FIGURES)
    assert honest["tpt_ms"][0] >= TOKEN_S * 1e3  # a sleep lasts at least its time


def test_check_clock_bounds() -> None:
    # A streaming claim may lag its receipt by the absolute bound plus 5% of the time since the
    # request (its receipt's): for a claim at 0.2 s, up to this lag.
    most = (clock.LAG_ABSOLUTE_S + clock.LAG_RELATIVE * 0.2) / (1 - clock.LAG_RELATIVE)
    assert clock.check_clock("b", 0.0, [0.1, 0.2], [0.1, 0.2 + most * 0.99]).problem is None
    late = clock.check_clock("b", 0.0, [0.1, 0.2], [0.1, 0.2 + most * 1.01])
    assert late.problem == (
        "backend b's timestamps disagree with the harness clock: "
        f"claimed E2E 200 ms, observed {(0.2 + most * 1.01) * 1e3:.0f} ms"
    )
    middle = clock.check_clock("b", 0.0, [0.1, 0.2, 0.3], [0.1 + most * 2, 0.2 + most * 2, 0.3 + most * 2])
    assert middle.problem is not None
    assert "claimed E2E" in middle.problem  # the end-to-end check comes before the per-token one
    spike = clock.check_clock("b", 0.0, [0.1, 0.2, 0.3], [0.1, 0.2 + most * 1.01, 0.3])
    assert spike.problem is not None
    assert spike.problem.endswith(f"token 1 claimed {most * 1.01 * 1e3:.1f} ms before it was received")
    assert clock.check_clock("b", 0.0, [0.1, 0.2 + 2e-6], [0.1, 0.2]).problem == (
        "backend b's timestamps disagree with the harness clock: token 1 is claimed 0.0 ms after the harness "
        "received it"
    )
    # Float rounding is not a disagreement.
    assert clock.check_clock("b", 0.0, [0.1, 0.2 + 1e-9], [0.1, 0.2]).problem is None
    # A buffering adapter: every event received at the end is fine; a claimed E2E too short is not.
    assert clock.check_clock("b", 0.0, [0.1, 0.9], [0.95, 0.95], buffered="why").problem is None
    short = clock.check_clock("b", 0.0, [0.1, 0.5], [0.95, 0.95], buffered="why")
    assert short.problem == (
        "backend b's timestamps disagree with the harness clock: claimed E2E 500 ms, observed 950 ms"
    )
    name = clock.check_clock("evil\x1b[2J", 0.0, [0.2], [0.1]).problem
    assert name is not None and "\x1b" not in name


def test_a_record_without_receipts_keeps_the_adapter_figures_unchecked() -> None:
    record = RunRecord(1, 4, 3, 10.0, (10.5, 10.6, 10.7), (1, 2, 3), "length")
    assert record.problem() is None
    assert record.clock_check() is None
    assert record.figures()["total_ms"] == pytest.approx(700.0)
    assert set(record.provenance().values()) == {clock.ADAPTER_REPORTED}


def test_the_receipt_loop_takes_one_clock_reading_per_event() -> None:
    events = [TokenEvent(i, 1, "x", float(i)) for i in range(5)]
    before = time.perf_counter()
    received = clock.receive(iter(events))
    after = time.perf_counter()
    assert [e for e, _ in received] == events
    times = [t for _, t in received]
    assert before <= times[0] <= times[-1] <= after
    assert times == sorted(times)
    assert list(clock.receipts(iter(events)))[2][0] is events[2]


def test_an_isolated_backend_hands_over_receipts_taken_in_its_worker() -> None:
    """Under pytest a native engine runs in a worker, whose events reach this process together at
    the end; the receipts the harness holds them against are taken in the worker, per event."""
    pytest.importorskip("llama_cpp")
    from pytest_minerva.backends.base import ReceivedStream
    from pytest_minerva.guards import IsolatedBackend
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session

    session = build_session(Settings(models=["tiny-random-llama"], backends=["llama_cpp"], isolate=True, threads=1))
    try:
        case = next(c for c in session.cases(formats=["gguf"]) if c.artifact.quant == "F32")
        backend = session.backend(case)
        assert isinstance(backend, IsolatedBackend)
        assert isinstance(backend, ReceivedStream)
        assert not isinstance(backend, BufferedStream)
        record = timed_run(backend, list(range(1, 9)), 12)
    finally:
        session.close()
    assert record.problem() is None
    assert len(record.received_s) == 12
    # Token 0 was received before the engine produced token 1: in the worker, not after the pipe.
    assert record.received_s[0] < record.token_times_s[1]
    check = record.clock_check()
    assert check is not None and check.max_lag_s < clock.LAG_ABSOLUTE_S


LIARS_MODULE = '''
"""Two backends that generate llama.cpp's real tokens and lie about when."""
import dataclasses

import pytest

from pytest_minerva.backends import BackendSpec
from pytest_minerva.backends.llama_cpp import LlamaCppBackend


class CompressingLiar(LlamaCppBackend):
    """Every timestamp after the first moved to first + (true - first) * 0.5: twice the decode speed."""

    name = "liar_compress"

    def stream(self, request):
        first = None
        for event in super().stream(request):
            first = event.time_s if first is None else first
            yield dataclasses.replace(event, time_s=first + (event.time_s - first) * 0.5)


class RedistributingLiar(LlamaCppBackend):
    """Generates the whole response first, then yields it with the true first and last times and
    the others spread evenly between, declaring nothing."""

    name = "liar_buffer"

    def stream(self, request):
        events = list(super().stream(request))
        first, last, n = events[0].time_s, events[-1].time_s, len(events)
        for i, event in enumerate(events):
            yield dataclasses.replace(event, time_s=first + (last - first) * i / max(n - 1, 1))


@pytest.hookimpl
def pytest_minerva_register_backends(registry):
    for name, cls in (("liar_compress", "CompressingLiar"), ("liar_buffer", "RedistributingLiar")):
        registry.add(
            BackendSpec(name, formats=("gguf",), target=f"liars_mod:{cls}", requires=("llama_cpp",),
                        distributions=("liars",))
        )
'''

HONEST = ("llama_cpp", "transformers", "mlx_lm")


@pytest.fixture(scope="module")
def liars_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, on ``PYTHONPATH``, installs ``liars`` with a ``pytest_minerva`` entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "liars_mod.py").write_text(textwrap.dedent(LIARS_MODULE), encoding="utf-8")
    info = site / "liars-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: liars\nVersion: 0.0\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[pytest_minerva]\nliars = liars_mod\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")
    return site


@pytest.mark.slow
def test_bench_fails_lying_backends_and_measures_the_honest_ones(liars_site: Path, tmp_path: Path) -> None:
    """The issue's done-means: on SmolLM2, two wrappers of the real LlamaCppBackend that compress
    or redistribute their timestamps fail with the one-line reason, while llama_cpp,
    transformers and mlx_lm in the same ``minerva bench`` have figures and no error."""
    needed = ("llama_cpp", "torch", "transformers", "mlx_lm")
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs llama_cpp, transformers and mlx_lm installed; missing: {', '.join(missing)}")
    out = tmp_path / "bench.json"
    csv_path = tmp_path / "bench.csv"
    # An inherited PYTHONPATH comes first, so the same test can be pointed at another checkout.
    path = [os.environ.get("PYTHONPATH", ""), str(liars_site), str(ROOT)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, path)))
    argv = [
        "bench", "--model", "smollm2-135m",
        *(f"--backend={name}" for name in (*HONEST, "liar_compress", "liar_buffer")),
        "--scenario", "short", "--runs", "3", "--warmup", "1", "--threads", "1", "--no-kv-probe",
        "--json", str(out), "--csv", str(csv_path),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pytest_minerva.commands", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if not out.exists():
        pytest.fail(f"minerva bench wrote no results (exit {done.returncode}): {done.stderr[-2000:]}")
    document = json.loads(out.read_text(encoding="utf-8"))
    statuses = {b["case_id"]: (b["status"], b["reason"]) for b in document["backends"]}
    not_run = {case: reason for case, (status, reason) in statuses.items() if status == "unavailable"}
    if not_run:
        pytest.skip(f"SmolLM2 cannot run on every backend here: {not_run}")
    assert done.returncode == 1, done.stderr  # the liars are errors
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for bench in document["benchmarks"]:
        by_backend.setdefault(bench["backend"], []).append(bench)

    compress = by_backend["liar_compress"][0]["error"]
    match = REASON.fullmatch(compress or "")
    assert match is not None and match["name"] == "liar_compress", compress
    assert match["claimed"] is not None
    # Half the decode went missing from the claimed end-to-end time.
    assert int(match["claimed"]) < int(match["observed"]) * 0.85
    buffered = by_backend["liar_buffer"][0]["error"]
    assert re.fullmatch(
        r"backend liar_buffer's timestamps disagree with the harness clock: token 0 claimed [\d.]+ ms before it "
        r"was received",
        buffered or "",
    ), buffered
    for name, error in (("liar_compress", compress), ("liar_buffer", buffered)):
        bench = by_backend[name][0]
        assert bench["stats"] == {} and bench["itl_ms"] is None
        assert all("ttft_ms" not in run for run in bench["runs"])
        assert f"| short | 20 | error: {error} |" in done.stdout
        assert [b["status"] for b in document["backends"] if b["backend"] == name] == ["error"]

    for name in HONEST:
        assert by_backend.get(name), f"{name} was not measured: {statuses}"
        for bench in by_backend[name]:
            assert bench["error"] is None, (name, bench["error"])
            assert len(bench["runs"]) == 3 and bench["stats"]["decode_tps"]["median"] > 0
            sources = {clock.HARNESS_CLOCK, clock.HARNESS_CPU_CLOCK, clock.ENGINE_TIMERS}
            assert set(bench["provenance"].values()) <= sources
            assert bench["clock_check"]["runs"] == 3 and bench["clock_check"]["failed_run"] is None
        assert {b["status"] for b in document["backends"] if b["backend"] == name} == {"ok"}
    assert "†" not in done.stdout  # every figure shown is the harness clock's
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert {r["backend"] for r in rows} == set(HONEST)
    assert {r["provenance"] for r in rows} == {"harness clock"}
