"""The ``openai_http`` backend against a real llama_cpp.server on loopback (SmolLM2-135M, one thread).

The served model is checked against llama.cpp in-process on the same GGUF: same
tokens, same greedy text, and the same top-k log-probabilities. llama_cpp.server
prefills the prompt and then decodes one token at a time, so the reference is
:meth:`LlamaCppBackend.incremental_logits` (the same computation path); llama.cpp's
one-pass ``logits`` rounds attention differently, by up to 0.4 in log-probability on
these prompts.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_minerva.backends import Backend, BackendSpec, GenerationRequest, LoadOptions, builtin_registry
from pytest_minerva.backends.base import BufferedStream
from pytest_minerva.backends.openai_http import (
    LogitsUnavailable,
    OpenAIHttpBackend,
    ServingError,
    compare_topk,
    llama_server_piece,
)
from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
from pytest_minerva.errors import ArtifactMissing, MinervaError
from pytest_minerva.models.catalog import Catalog
from pytest_minerva.models.resolve import ResolvedArtifact, Resolver
from pytest_minerva.serving.client import Endpoint, HttpStatusError, request_json
from pytest_minerva.serving.faults import FaultProxy
from pytest_minerva.serving.server import server_unavailable_reason

pytestmark = pytest.mark.skipif(server_unavailable_reason() is not None, reason=str(server_unavailable_reason()))
pytest.importorskip("llama_cpp")

MODEL = "smollm2-135m"
KEY_ENV = "MINERVA_TEST_OPENAI_KEY"
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
)
# Measured on this model with k=5 and 12 tokens per prompt: greedy tokens and top-5 sets identical,
# |served - in-process| log-probability at most 4.5e-7 (float32 log-softmax on the server).
LOGPROB_BOUND = 1e-5
PROPOSED_SPEC = BackendSpec(
    "openai_http",
    formats=("gguf",),
    target="pytest_minerva.backends.openai_http:OpenAIHttpBackend",
    devices=("cpu",),
    requires=("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"),
    distributions=("llama-cpp-python", "uvicorn", "fastapi", "sse-starlette"),
    install_hint="pip install 'pytest-minerva[serve]'",
    description="an OpenAI-compatible HTTP server (--minerva-endpoint), or llama_cpp.server started on loopback",
)


@pytest.fixture(scope="module")
def artifact() -> ResolvedArtifact:
    model = Catalog.load().get(MODEL)
    try:
        return Resolver(ArtifactCache(default_cache_dir()), verify=False).resolve(model, model.artifact("gguf"))
    except ArtifactMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def served(artifact: ResolvedArtifact) -> Iterator[OpenAIHttpBackend]:
    backend = PROPOSED_SPEC.build(artifact, LoadOptions(threads=1, n_ctx=512, extra={"logprobs": True}))
    assert isinstance(backend, OpenAIHttpBackend)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def reference(artifact: ResolvedArtifact) -> Iterator[Backend]:
    backend = builtin_registry().get("llama_cpp").build(artifact, LoadOptions(threads=1, n_ctx=512))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def piece(artifact: ResolvedArtifact) -> Callable[[int], str]:
    return llama_server_piece(artifact.path)


def test_backend_satisfies_the_protocol_and_describes_its_server(served: OpenAIHttpBackend, reference: Backend) -> None:
    assert isinstance(served, Backend)
    assert (served.vocab_size, served.bos_id, served.eos_id) == (
        reference.vocab_size,
        reference.bos_id,
        reference.eos_id,
    )
    info = served.info()
    assert info["endpoint"].startswith("http://127.0.0.1:")
    assert (info["tokenizer"], info["threads"], info["server"]["logits_all"]) == ("server /extras/tokenize", 1, True)
    assert info["server"]["interrupt_requests"] is False


def test_tokenize_matches_in_process_llama_cpp(served: OpenAIHttpBackend, reference: Backend) -> None:
    for text in (*PROMPTS, " leading space and  two spaces", "Unicode: naïve café, 日本語 🙂", ""):
        assert served.tokenize(text) == reference.tokenize(text), text
        assert served.tokenize(text, add_bos=True) == reference.tokenize(text, add_bos=True)
        assert served.detokenize(served.tokenize(text)) == text


def test_the_servers_tokenizer_parses_special_tokens(served: OpenAIHttpBackend, reference: Backend) -> None:
    text = "<|im_end|>"
    assert served.tokenize(text) == [reference.eos_id]
    assert len(reference.tokenize(text)) > 1


def test_stream_generates_the_in_process_greedy_text(served: OpenAIHttpBackend, reference: Backend) -> None:
    for text in PROMPTS:
        ids = tuple(reference.tokenize(text))
        request = GenerationRequest(ids, 16)
        expected = list(reference.stream(request))
        assert reference.eos_id not in [e.token for e in expected], "the check needs a window without EOS"
        events = list(served.stream(request))
        assert [e.index for e in events] == list(range(16))
        assert (events[-1].finish_reason, events[0].finish_reason) == ("length", None)
        assert "".join(e.text for e in events) == "".join(e.text for e in expected)
        times = [e.time_s for e in events]
        assert times == sorted(times) and times[-1] > times[0]


def test_full_logits_are_refused_with_a_pointer_to_top_k(served: OpenAIHttpBackend) -> None:
    with pytest.raises(LogitsUnavailable, match=r"only the top-k log-probabilities .* compare on the top-k"):
        served.logits([1, 2, 3])
    with pytest.raises(LogitsUnavailable):
        served.incremental_logits([1, 2, 3], 1)


@pytest.mark.parametrize("text", PROMPTS)
def test_served_top_k_agrees_with_in_process_llama_cpp(
    served: OpenAIHttpBackend, reference: Backend, piece: Callable[[int], str], text: str
) -> None:
    ids = reference.tokenize(text)
    top = served.top_logprobs(ids, 12, k=5)
    assert top.prompt_tokens == len(ids)
    greedy = [e.token for e in reference.stream(GenerationRequest(tuple(ids), 12, ignore_eos=False))]
    rows = reference.incremental_logits(ids + greedy[:-1], len(ids))[len(ids) - 1 :]
    agreement = compare_topk(top, greedy, rows, piece)
    assert agreement.as_dict() == {
        "positions": 12,
        "greedy_matches": 12,
        "first_mismatch": None,
        "top1_agreement": 1.0,
        "mean_topk_overlap": 1.0,
        "min_topk_overlap": 1.0,
        "max_abs_logprob_diff": agreement.max_abs_logprob_diff,
        "k": 5,
    }
    assert agreement.max_abs_logprob_diff <= LOGPROB_BOUND


def test_compare_topk_catches_a_reference_that_is_off_by_one(
    served: OpenAIHttpBackend, reference: Backend, piece: Callable[[int], str]
) -> None:
    ids = reference.tokenize(PROMPTS[0])
    top = served.top_logprobs(ids, 6, k=5)
    greedy = [e.token for e in reference.stream(GenerationRequest(tuple(ids), 7, ignore_eos=False))]
    shifted = reference.incremental_logits(ids + greedy[:-1], len(ids))[len(ids) :]
    agreement = compare_topk(top, greedy[1:], shifted, piece)
    assert (agreement.first_mismatch, agreement.positions, agreement.top1_agreement) == (0, 1, 0.0)
    assert agreement.max_abs_logprob_diff > 0.1 or agreement.min_topk_overlap < 1.0


def test_the_prefix_flush_runs_after_the_last_event_or_an_early_close(
    served: OpenAIHttpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from pytest_minerva.timing.clock import receive

    flushed: list[float] = []
    flush = served._flush
    monkeypatch.setattr(served, "_flush", lambda first: (flush(first), flushed.append(time.perf_counter())))
    ids = tuple(served.tokenize(PROMPTS[0]))
    received = receive(served.stream(GenerationRequest(ids, 4)))
    assert len(received) == 4 and len(flushed) == 1
    assert flushed[0] > received[-1][1]  # outside the time from the request to the last event
    stream = served.stream(GenerationRequest(ids, 4))
    next(stream)
    stream.close()
    assert len(flushed) == 2


def test_the_timing_harness_runs_through_it(served: OpenAIHttpBackend) -> None:
    from pytest_minerva.timing import memory
    from pytest_minerva.timing.harness import run_scenario
    from pytest_minerva.timing.scenarios import get

    result = run_scenario(served, get("short"), runs=2, warmup=1)
    assert result.ok, result.error
    assert [r.generated_tokens for r in result.runs] == [15, 15]
    assert all(r.prompt_tokens == 20 for r in result.runs)
    assert result.stats("ttft_ms").n == 2
    # It reads the whole response first, says so, and its per-token figures are labelled its own.
    assert isinstance(served, BufferedStream)
    data = result.as_dict()
    assert data["buffered"] == "reads the whole HTTP response before the first event"
    assert data["provenance"]["tpt_ms"] == "adapter-reported"
    assert data["provenance"]["total_ms"] == "harness clock"
    assert data["clock_check"]["failed_run"] is None
    assert all(r.received_s[0] >= r.token_times_s[-1] for r in result.runs)
    read, _ = memory.kv_reader(served)
    with pytest.raises(MinervaError, match="KV cache cannot be observed"):
        read()


def test_a_broken_stream_is_one_clear_error(served: OpenAIHttpBackend, artifact: ResolvedArtifact) -> None:
    with FaultProxy(served.endpoint.url, "drop_midstream", after_events=3) as proxy:
        broken = OpenAIHttpBackend(artifact, LoadOptions(extra={"endpoint": proxy.url}))
        try:
            with pytest.raises(ServingError) as info:
                list(broken.stream(GenerationRequest(tuple(served.tokenize(PROMPTS[0])), 8)))
        finally:
            broken.close()
    assert str(info.value) == "openai_http: stream_broken: the stream ended after 3 chunks without [DONE]"
    assert info.value.failure.reason == "stream_broken"


@pytest.fixture(scope="module")
def keyed(artifact: ResolvedArtifact) -> Iterator[tuple[OpenAIHttpBackend, str]]:
    key = "sk-minerva-" + secrets.token_hex(16)
    saved = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = key
    backend = OpenAIHttpBackend(artifact, LoadOptions(threads=1, n_ctx=256, extra={"api_key_env": KEY_ENV}))
    try:
        yield backend, key
    finally:
        backend.close()
        if saved is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = saved


def test_api_key_is_used_but_never_shown(keyed: tuple[OpenAIHttpBackend, str]) -> None:
    backend, key = keyed
    events = list(backend.stream(GenerationRequest(tuple(backend.tokenize(PROMPTS[0])), 4)))
    assert len(events) == 4
    server = backend._server
    assert server is not None and server.pid is not None
    shown = [
        repr(backend),
        repr(backend.endpoint),
        json.dumps(backend.info()),
        repr(server),
        " ".join(server.command(server.port or 0)),
        Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace"),
        json.dumps(backend.stream_result(GenerationRequest(tuple(backend.tokenize("Hi")), 2)).as_dict()),
    ]
    assert all(key not in text for text in shown)
    assert backend.info()["api_key_env"] == KEY_ENV


def test_a_wrong_or_missing_key_is_refused_without_echoing_it(
    keyed: tuple[OpenAIHttpBackend, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend, _ = keyed
    with pytest.raises(HttpStatusError, match="HTTP 401: Invalid API key") as info:
        request_json(Endpoint(backend.endpoint.url), "GET", "/v1/models")
    assert info.value.status == 401
    wrong = "sk-wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("MINERVA_OTHER_KEY", wrong)
    with pytest.raises(HttpStatusError) as info:
        request_json(Endpoint(backend.endpoint.url, "MINERVA_OTHER_KEY"), "GET", "/v1/models")
    assert wrong not in str(info.value)
    monkeypatch.delenv("MINERVA_OTHER_KEY")
    with pytest.raises(MinervaError, match="names MINERVA_OTHER_KEY, which is not set or empty"):
        request_json(Endpoint(backend.endpoint.url, "MINERVA_OTHER_KEY"), "GET", "/v1/models")


def test_messages_that_would_carry_the_key_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINERVA_OTHER_KEY", "sk-abc123")
    endpoint = Endpoint("http://127.0.0.1:1", "MINERVA_OTHER_KEY")
    assert endpoint.redact("server said: bad key sk-abc123") == "server said: bad key ***"
    assert "sk-abc123" not in repr(endpoint)


def test_top_logprobs_need_a_server_that_returns_them(keyed: tuple[OpenAIHttpBackend, str]) -> None:
    backend, _ = keyed
    with pytest.raises(LogitsUnavailable, match=r"returns no logprobs .*HTTP 500"):
        backend.top_logprobs(backend.tokenize(PROMPTS[0]), 4)


def test_serve_bench_output_never_contains_the_key(keyed: tuple[OpenAIHttpBackend, str], tmp_path: Path) -> None:
    import io

    from pytest_minerva.commands import make_parser

    backend, key = keyed
    out = io.StringIO()
    target = tmp_path / "keyed.json"
    args = make_parser().parse_args(
        [
            *("serve-bench", "--endpoint", backend.endpoint.url, "--api-key-env", KEY_ENV),
            *("--concurrency", "1", "--requests", "1", "--rounds", "1", "--max-tokens", "3", "--prompt-tokens", "8"),
            *("--json", str(target)),
        ]
    )
    assert args.func(args, out) == 0
    assert "| 1 | 1 | 1 | 0 |" in out.getvalue()
    assert key not in out.getvalue()
    assert key not in target.read_text()
