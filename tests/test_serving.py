"""Serving benchmarks: SSE parsing, the load generator, the server lifecycle, and the error cases.

The figures come from a real ``llama_cpp.server`` on loopback serving SmolLM2-135M
with one thread (started once for the module by the ``minerva_llama_server``
fixture). The error cases go through a real socket: the fault proxy sits between
the client and that server and breaks one thing per test.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minerva.errors import MinervaError
from pytest_minerva.fixtures import default_gguf
from pytest_minerva.serving import loadgen
from pytest_minerva.serving.client import Endpoint, Timeouts, parse_retry_after, request_json
from pytest_minerva.serving.faults import FaultProxy, refused_port
from pytest_minerva.serving.load_results import Slo
from pytest_minerva.serving.server import LlamaCppServer, server_unavailable_reason
from pytest_minerva.serving.sse import Failure, SSEParser, StreamResult, stream_request
from pytest_minerva.serving.workload import Workload, fit_prompts, rotated_prompts

needs_server = pytest.mark.skipif(server_unavailable_reason() is not None, reason=str(server_unavailable_reason()))
PROSE = (
    "The history of astronomy spans thousands of years, from the first careful records of the night sky kept by "
    "ancient farmers and priests to the space telescopes that now photograph galaxies billions of light years away. "
    "Early observers tracked the motions of the Sun, the Moon and the planets to build calendars and predict eclipses."
)
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "top_p": 1.0}


def completion(prompt: str = "The capital of France is", tokens: int = 12) -> dict[str, object]:
    return {"prompt": prompt, "max_tokens": tokens, "min_tokens": tokens, **GREEDY}


# -- SSE parsing -------------------------------------------------------------


def feed(lines: list[str]) -> list[tuple[str, str, float]]:
    parser = SSEParser()
    events = []
    for t, line in enumerate(lines):
        event = parser.feed(line, float(t))
        if event is not None:
            events.append((event.event, event.data, event.time_s))
    last = parser.finish(float(len(lines)))
    if last is not None:
        events.append((last.event, last.data, last.time_s))
    return events


def test_sse_parser_joins_data_lines_skips_comments_and_times_the_first_line() -> None:
    lines = [": ping", 'data: {"a":', "data:1}", "", "event: error", "id: 7", "data: x", "", "", "data: tail"]
    assert feed(lines) == [("message", '{"a":\n1}', 1.0), ("error", "x", 4.0), ("message", "tail", 9.0)]


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"))))
def test_sse_parser_returns_each_payload_unchanged(payloads: list[str]) -> None:
    lines = []
    for payload in payloads:
        lines += [f"data: {payload}", ""]
    assert [data for _, data, _ in feed(lines)] == payloads


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_endpoint_normalises_the_url_and_refuses_credentials_in_it() -> None:
    assert Endpoint("http://127.0.0.1:8080/v1/").url == "http://127.0.0.1:8080"
    assert Endpoint("https://api.example.com/openai/v1").path("/v1/completions") == "/openai/v1/completions"
    assert Endpoint("https://api.example.com").port == 443
    with pytest.raises(MinervaError, match="not an http:// or https:// URL"):
        Endpoint("ftp://x")
    with pytest.raises(MinervaError, match="carries credentials") as info:
        Endpoint("http://user:hunter2@127.0.0.1:1")
    assert "hunter2" not in str(info.value)


def test_token_counts_say_where_they_came_from() -> None:
    def result(**kwargs: object) -> StreamResult:
        r = StreamResult("completions", chunk_texts=["\n", "\n", "Hi"], chunk_times_s=[1.0, 2.0, 3.0])
        for key, value in kwargs.items():
            setattr(r, key, value)
        return r

    def tokenizer(text: str) -> list[int]:
        return [0] * len(text.replace("\n\n", "N"))

    assert result(usage={"completion_tokens": 4}).count_tokens(tokenizer, requested=3) == 4
    r = result(finish_reason="length")
    assert (r.count_tokens(tokenizer, requested=3), r.token_count_source) == (3, "length")
    r = result(finish_reason="stop")
    assert (r.count_tokens(tokenizer, requested=3), r.token_count_source) == (3, "tokenizer")
    assert r.tpt_s == 1.0
    r = result()
    assert (r.count_tokens(), r.token_count_source) == (3, "chunks")


def test_slo_counts_only_successful_requests_within_both_bounds() -> None:
    def timed(ttft: float, tpt: float, failure: Failure | None = None) -> StreamResult:
        r = StreamResult("completions", request_s=0.0, chunk_times_s=[ttft, ttft + tpt], chunk_texts=["a", "b"])
        r.failure = failure
        r.count_tokens(requested=2)
        return r

    slo = Slo(ttft_ms=100, tpt_ms=20)
    assert slo.met(timed(0.05, 0.01))
    assert not slo.met(timed(0.2, 0.01))
    assert not slo.met(timed(0.05, 0.03))
    assert not slo.met(timed(0.05, 0.01, Failure("timeout", "x")))
    assert Slo().met(timed(9.0, 9.0))
    assert slo.describe() == "TTFT <= 100 ms and TpT <= 20 ms"


def test_poisson_schedule_is_seeded_and_has_the_requested_mean_rate() -> None:
    first = loadgen.poisson_schedule(4.0, 2000, seed=3)
    assert first == loadgen.poisson_schedule(4.0, 2000, seed=3)
    assert first != loadgen.poisson_schedule(4.0, 2000, seed=4)
    assert all(b > a for a, b in itertools.pairwise(first))
    assert 2000 / first[-1] == pytest.approx(4.0, rel=0.05)
    with pytest.raises(MinervaError, match="must be positive"):
        loadgen.poisson_schedule(0, 3, seed=0)


def test_rotated_prompts_are_distinct_and_start_differently() -> None:
    prompts = rotated_prompts(PROSE, 12, words=20)
    assert len(set(prompts)) == 12
    assert len({p.split()[0] + p.split()[1] for p in prompts}) == 12
    assert all(len(p.split()) == 20 for p in prompts)


def test_fit_prompts_cuts_to_length_and_never_repeats_a_first_token() -> None:
    def tokenize(text: str) -> list[int]:
        return [ord(c) for c in text]

    def detokenize(ids: object) -> str:
        return "".join(chr(i) for i in ids)  # type: ignore[attr-defined]

    fitted = fit_prompts(["abcd", "abzz", "aacb", "bbbxy"], 2, tokenize, detokenize)
    assert fitted == ("ab", "bz", "cb", "xy")
    with pytest.raises(MinervaError, match="prompt 1 has 1 tokens left, fewer than the 2 asked for"):
        fit_prompts(["abc", "ab"], 2, tokenize, detokenize)
    with pytest.raises(MinervaError, match="prompt 1: none of its first 64 tokens"):
        fit_prompts(["ab", "aaa"], 1, tokenize, detokenize)


def test_workload_payload_fixes_the_length_and_greedy_sampling() -> None:
    workload = Workload(("a", "b"), max_tokens=8, api="chat", model="m")
    body = workload.payload(3)
    assert body["messages"] == [{"role": "user", "content": "b"}]
    assert (body["max_tokens"], body["min_tokens"], body["temperature"], body["repeat_penalty"]) == (8, 8, 0.0, 1.0)
    assert body["model"] == "m"
    with pytest.raises(MinervaError, match="at least 2"):
        Workload(("a",), max_tokens=1)


# -- the server ---------------------------------------------------------------


@needs_server
def test_server_fixture_serves_on_loopback_with_one_thread(minerva_llama_server: LlamaCppServer) -> None:
    server = minerva_llama_server
    assert server.url.startswith("http://127.0.0.1:")
    listing = request_json(server.endpoint, "GET", "/v1/models")
    assert listing["data"][0]["id"] == str(server.model_path)
    command = server.command(server.port or 0)
    assert command[command.index("--n_threads") + 1] == "1"
    assert command[command.index("--interrupt_requests") + 1] == "False"
    assert command[command.index("--logits_all") + 1] == "False"


@needs_server
def test_server_stops_when_the_block_raises_and_the_port_then_refuses(tmp_path: Path) -> None:
    path = default_gguf()
    server = LlamaCppServer(path, n_ctx=256, threads=1)
    seen: dict[str, Any] = {}

    def failing_test() -> None:
        with server:
            seen["pid"], seen["endpoint"] = server.pid, server.endpoint
            assert request_json(server.endpoint, "GET", "/v1/models")["data"]
            raise RuntimeError("test failed")

    with pytest.raises(RuntimeError, match="test failed"):
        failing_test()
    pid, endpoint = seen["pid"], seen["endpoint"]
    assert not server.running
    assert pid is not None and not psutil.pid_exists(pid)
    result = stream_request(endpoint, "completions", completion(), timeouts=Timeouts(connect_s=2))
    assert result.failure is not None and result.failure.reason == "unreachable"


@needs_server
def test_server_that_cannot_load_the_model_fails_fast_with_its_last_words(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    started = time.perf_counter()
    with pytest.raises(MinervaError, match=r"not-a-model\.gguf exited with status \d+ before it was ready: "):
        LlamaCppServer(bogus, startup_timeout_s=60).start()
    assert time.perf_counter() - started < 30


@needs_server
def test_server_startup_deadline_is_enforced() -> None:
    server = LlamaCppServer(default_gguf(), startup_timeout_s=0.05)
    with pytest.raises(MinervaError, match=r"did not answer within 0\.05 s"):
        server.start()
    assert not server.running


# -- real requests ------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint(minerva_llama_server: LlamaCppServer) -> Endpoint:
    return minerva_llama_server.endpoint


@pytest.fixture(scope="module")
def tokenize(endpoint: Endpoint):  # type: ignore[no-untyped-def]
    def count(text: str) -> list[int]:
        return [int(t) for t in request_json(endpoint, "POST", "/extras/tokenize", {"input": text})["tokens"]]

    return count


@needs_server
def test_stream_times_the_first_content_token_not_the_headers(endpoint: Endpoint) -> None:
    result = stream_request(endpoint, "completions", completion(tokens=12))
    assert result.ok, result.failure
    result.count_tokens(requested=12)
    assert (result.completion_tokens, result.token_count_source, result.finish_reason) == (12, "length", "length")
    assert result.text.startswith(" Paris")
    assert result.headers_s is not None and result.request_s < result.headers_s <= result.chunk_times_s[0]
    assert result.ttft_s == result.chunk_times_s[0] - result.request_s
    assert result.chunk_times_s == sorted(result.chunk_times_s)


@needs_server
def test_chat_stream_skips_the_role_header_event(endpoint: Endpoint) -> None:
    body = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "min_tokens": 6, **GREEDY}
    result = stream_request(endpoint, "chat", body)
    assert result.ok, result.failure
    assert all(result.chunk_texts) and result.finish_reason == "length"
    assert result.count_tokens(requested=6) == 6


@needs_server
def test_concurrency_sweep_keeps_exactly_c_requests_in_flight(endpoint: Endpoint, tokenize) -> None:  # type: ignore[no-untyped-def]
    prompts = rotated_prompts(PROSE, 24, words=24)
    workload = Workload(prompts, max_tokens=6)
    order: list[float] = []
    sweep = loadgen.concurrency_sweep(
        endpoint,
        workload,
        (1, 2, 4),
        requests_per_level=lambda c: c,
        count=tokenize,
        rounds=2,
        on_level=lambda run: order.append(run.level),
    )
    assert order == [1, 2, 4, 4, 2, 1]
    assert [level.level for level in sweep.levels] == [1, 2, 4]
    assert sweep.prompts_used == 1 + 2 * (1 + 2 + 4)
    for level in sweep.levels:
        c = int(level.level)
        assert [len(level.ok), len(level.failed), level.not_sent, level.rounds] == [2 * c, 0, 0, 2]
        assert level.output_tokens == 2 * c * 6
        assert level.count_sources() == {"length": 2 * c}
        edges = [(r.request_s, +1) for r in level.results] + [(r.end_s or 0.0, -1) for r in level.results]
        depth = peak = 0
        for _, step in sorted(edges):
            depth += step
            peak = max(peak, depth)
        assert peak == c
        stats = level.stats_ms("ttft")
        assert stats is not None and stats.n == 2 * c and stats.p50 <= stats.p90 <= stats.p99
    base, top = sweep.levels[0], sweep.levels[-1]
    assert sweep.speedup(base) == 1.0
    assert sweep.efficiency(top) == pytest.approx(top.aggregate_tps / base.aggregate_tps / 4)
    tags = [r.tag for level in sweep.levels for r in level.results]
    assert len(set(tags)) == len(tags) and "0" not in tags


@needs_server
def test_poisson_run_stops_at_its_duration_and_counts_what_it_did_not_send(endpoint: Endpoint) -> None:
    workload = Workload(rotated_prompts(PROSE, 50, words=16), max_tokens=4)
    started = time.perf_counter()
    run = loadgen.run_poisson(endpoint, workload, rate_rps=4.0, requests=50, seed=1, duration_s=1.0)
    schedule = loadgen.poisson_schedule(4.0, 50, seed=1)
    expected = sum(1 for t in schedule if t <= 1.0)
    assert (len(run.results), run.not_sent, run.dropped) == (expected, 50 - expected, 0)
    assert all(r.ok for r in run.results)
    assert time.perf_counter() - started < 60
    assert run.as_dict()["seed"] == 1


@needs_server
def test_sequential_vs_concurrent_sends_distinct_prompts(endpoint: Endpoint) -> None:
    workload = Workload(rotated_prompts(PROSE, 8, words=16), max_tokens=4)
    pair = loadgen.sequential_vs_concurrent(endpoint, workload, 3)
    assert [r.tag for r in pair.sequential.results] == ["0", "1", "2"]
    assert sorted(r.tag for r in pair.concurrent.results) == ["3", "4", "5"]
    assert pair.wall_ratio == pytest.approx(pair.concurrent.wall_s / pair.sequential.wall_s)


# -- the error cases, through a real socket -----------------------------------


def one(endpoint_url: str, timeouts: Timeouts | None = None) -> StreamResult:
    return stream_request(Endpoint(endpoint_url), "completions", completion(tokens=8), timeouts=timeouts)


def test_unreachable_server_is_a_failed_request_not_an_exception() -> None:
    started = time.perf_counter()
    result = one(f"http://127.0.0.1:{refused_port()}")
    assert result.failure is not None
    assert result.failure.reason == "unreachable"
    assert result.failure.message.startswith("cannot connect to http://127.0.0.1:")
    assert "refused" in result.failure.message.lower()
    assert time.perf_counter() - started < 5
    assert (result.ttft_s, result.tpt_s) == (None, None)


@needs_server
@pytest.mark.parametrize(
    ("fault", "reason", "message"),
    [
        ("status_429", "rate_limited", r"HTTP 429 \(retry after 2 s\): rate limited by the fault proxy"),
        ("status_503", "http_error", r"HTTP 503 Service Unavailable: service unavailable \(fault proxy\)"),
        ("error_midstream", "server_error_in_stream", r"error after 2 chunks: injected upstream failure"),
        ("drop_midstream", "stream_broken", r"ended after 2 chunks without \[DONE\]"),
        ("malformed_sse", "malformed_sse", r"event 3 is not JSON: '\{\"choices\": \[\{\"text\": \"unterminated'"),
    ],
)
def test_fault_is_reported_with_its_reason(endpoint: Endpoint, fault: str, reason: str, message: str) -> None:
    with FaultProxy(endpoint.url, fault, after_events=2) as proxy:
        result = one(proxy.url)
    assert result.failure is not None, result.text
    assert result.failure.reason == reason
    assert "\n" not in result.failure.message
    assert re.search(message, result.failure.message), result.failure.message
    if fault == "status_429":
        assert (result.failure.http_status, result.failure.retry_after_s) == (429, 2.0)
    assert result.as_dict()["ttft_ms"] is None


@needs_server
def test_a_stalled_stream_times_out_instead_of_hanging(endpoint: Endpoint) -> None:
    started = time.perf_counter()
    with FaultProxy(endpoint.url, "stall", after_events=1) as proxy:
        result = one(proxy.url, Timeouts(connect_s=2, read_s=0.5, total_s=30))
    assert result.failure is not None
    assert result.failure.reason == "timeout"
    assert result.failure.message == "no data for 0.5 s between stream lines after 1 chunks"
    assert time.perf_counter() - started < 20


@needs_server
def test_the_pass_through_proxy_changes_nothing(endpoint: Endpoint) -> None:
    direct = one(endpoint.url)
    with FaultProxy(endpoint.url, "pass") as proxy:
        proxied = one(proxy.url)
        assert proxy.requests == 1
    assert direct.ok and proxied.ok
    assert proxied.text == direct.text


@needs_server
def test_failed_requests_are_counted_apart_and_never_averaged_in(endpoint: Endpoint) -> None:
    workload = Workload(rotated_prompts(PROSE, 8, words=16), max_tokens=5)
    with FaultProxy(endpoint.url, "error_midstream", every=2, after_events=1) as proxy:
        run = loadgen.run_closed_loop(Endpoint(proxy.url), workload, 1, 6, slo=Slo(ttft_ms=1e9))
    assert (len(run.ok), len(run.failed)) == (3, 3)
    assert run.failures_by_reason() == {"server_error_in_stream": 3}
    assert run.output_tokens == 3 * 5
    ttft = run.stats_ms("ttft")
    assert ttft is not None and ttft.n == 3
    assert (run.good, run.good_fraction) == (3, 0.5)
    data = run.as_dict()
    assert (data["ok"], data["failed"], data["failures"]) == (3, 3, {"server_error_in_stream": 3})
    assert data["failure_examples"]["server_error_in_stream"].endswith("injected upstream failure")


# -- the command line -----------------------------------------------------------


@needs_server
def test_serve_bench_prints_the_sweep_and_writes_json(endpoint: Endpoint, tmp_path: Path) -> None:
    from pytest_minerva.commands import make_parser

    out = io.StringIO()
    target = tmp_path / "serve.json"
    args = make_parser().parse_args(
        [
            *(
                "serve-bench",
                "--endpoint",
                endpoint.url + "/v1",
                "--concurrency",
                "1,2",
                "--requests",
                "2",
                "--rounds",
                "1",
            ),
            *("--max-tokens", "4", "--prompt-tokens", "16", "--slo-ttft-ms", "100000", "--json", str(target)),
        ]
    )
    assert args.func(args, out) == 0
    text = out.getvalue()
    assert f"# minerva serve-bench: {endpoint.url} (completions)" in text
    assert "| in-flight | sent | ok | failed |" in text
    rows = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert [row.split(" | ")[1:4] for row in rows[:2]] == [["2", "2", "0"], ["2", "2", "0"]]
    assert "tokenizer: server /extras/tokenize" in text
    document = json.loads(target.read_text())
    levels = document["serving"]["sweep"]["levels"]
    assert [(lv["level"], lv["ok"], lv["output_tokens"]) for lv in levels] == [(1, 2, 8), (2, 2, 8)]
    assert levels[0]["speedup"] == 1.0
    assert document["schema_version"] and document["machine_info"]


def test_serve_bench_against_an_unreachable_endpoint_reports_it_and_exits_1(tmp_path: Path) -> None:
    from pytest_minerva.commands import make_parser

    out = io.StringIO()
    url = f"http://127.0.0.1:{refused_port()}"
    args = make_parser().parse_args(
        [
            "serve-bench",
            "--endpoint",
            url,
            "--concurrency",
            "1",
            "--requests",
            "2",
            "--rounds",
            "1",
            "--max-tokens",
            "4",
        ]
    )
    assert args.func(args, out) == 1
    text = out.getvalue()
    assert "| 1 | 2 | 0 | 2 (unreachable 2) |" in text
    assert f"- unreachable: cannot connect to {url}: Connection refused" in text


def test_serve_bench_is_wired_into_the_minerva_command() -> None:
    from pytest_minerva.commands import make_parser

    parser = make_parser()
    args = parser.parse_args(["serve-bench", "--concurrency", "1,2,4,8", "--rate", "0.5", "--rate", "2"])
    assert (args.concurrency, args.rate, args.max_tokens) == ([1, 2, 4, 8], [0.5, 2.0], 32)
    with pytest.raises(SystemExit):
        parser.parse_args(["serve-bench", "--concurrency", "0"])


# -- batching and KV projections ------------------------------------------------


def test_kv_projection_for_smollm2_from_its_gguf_metadata() -> None:
    from pytest_minerva import formats
    from pytest_minerva.serving.batching import kv_projection

    try:
        metadata = formats.verify(default_gguf()).metadata
    except MinervaError as exc:
        pytest.skip(str(exc))
    from pytest_minerva.serving.server import SERVER_KV_CACHE_DTYPE

    f16 = kv_projection(metadata, "llama_cpp", {"kv_cache_dtype": SERVER_KV_CACHE_DTYPE})
    # 30 layers x 3 KV heads x (64 + 64) x 2 bytes
    assert f16.bytes_per_token == 23040
    assert f16.per_sequence == {512: 23040 * 512, 1024: 23040 * 1024, 2048: 23040 * 2048, 4096: 23040 * 4096}
    assert f16.for_batch(8)[4096] == 8 * 23040 * 4096
    assert kv_projection(metadata, "transformers", {"dtype": "float32"}).bytes_per_token == 46080


@pytest.fixture(scope="module")
def tiny_transformers() -> Iterator[object]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pytest_minerva.backends import LoadOptions, builtin_registry
    from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
    from pytest_minerva.models.catalog import Catalog
    from pytest_minerva.models.resolve import Resolver

    model = Catalog.load().get("tiny-random-llama")
    artifact = Resolver(ArtifactCache(default_cache_dir())).resolve(model, model.artifact("safetensors"))
    backend = builtin_registry().get("transformers").build(artifact, LoadOptions(threads=1, n_ctx=256))
    yield backend
    backend.close()


def test_batch_sweep_times_each_batch_size_and_checks_rows_against_alone(tiny_transformers: object) -> None:
    from pytest_minerva.serving.batching import batch_sweep

    prompts = [[1 + i, 20 + i, 30, 40 + 2 * i][: 2 + i % 3] for i in range(4)]
    figures = batch_sweep(tiny_transformers, prompts, batch_sizes=(1, 2, 4), max_tokens=6, runs=2)
    assert [f.batch_size for f in figures] == [1, 2, 4]
    assert figures[0].efficiency == 1.0
    assert all(f.prefill_ms > 0 and f.tpt_ms > 0 and f.decode_tps > 0 for f in figures)
    assert figures[1].efficiency == pytest.approx(figures[1].decode_tps / (2 * figures[0].decode_tps))
    assert [f.rows_match_alone for f in figures] == [None, None, True]
    assert figures[2].prompt_tokens == 4


def test_batch_sweep_refuses_a_backend_that_does_not_batch() -> None:
    from pytest_minerva.serving.batching import batch_sweep

    with pytest.raises(MinervaError, match="does not batch"):
        batch_sweep(object(), [[1]], batch_sizes=(1,))
