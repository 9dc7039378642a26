"""The API key of an OpenAI-compatible endpoint never leaks, however a request fails (issue 15).

A fake server on loopback fails in one way per test: a chunk whose fields have the
wrong types, a non-JSON answer that echoes the request headers, a long 401 message
that quotes the key late, a 500 that echoes the headers, a non-JSON event that quotes
the key late, a connection reset mid-stream; and a key that ends in a newline. Each
runs through pytest with ``-l --tb=long --junitxml`` (tracebacks with every frame's
locals) and through ``minerva serve-bench --json`` in a child process, and the key,
or any 10 characters of it, must appear in no output: the terminal, the JUnit XML,
the JSON, or any other file the run wrote. Each failure is one line: a setup error
with no traceback, the ``ServingError`` a test's own traceback ends in, or
serve-bench's one line on stderr; never an exception of http.client or of a parser.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import pickle
import re
import secrets
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pytest_minerva.errors import MinervaError
from pytest_minerva.serving.client import ERROR_BODY_BYTES, Endpoint, request_json
from pytest_minerva.serving.faults import refused_port
from pytest_minerva.serving.server import LlamaCppServer, server_unavailable_reason
from pytest_minerva.serving.sse import stream_request

KEY_ENV = "MINERVA_LEAK_TEST_KEY"
#: 145 characters with "Bearer ": the old client cut the message at 157, inside the key (issue 15, break 4).
LATE = "The gateway refused this request: check that the key is current, that it may use this model, and that " + (
    "your account is active. You sent: "
)
WINDOW = 10
#: An exception of the HTTP path that reached the user as itself, not as a one-line reason.
FOREIGN_ERRORS = re.compile(
    r"^E\s+([\w.]+\.)?(TypeError|ValueError|KeyError|AttributeError|UnicodeError|OSError|ConnectionError)\b", re.M
)
USER_TEST = """
from pytest_minerva.backends import GenerationRequest


def test_streams_from_the_server(backend):
    prompt = tuple(backend.tokenize("Hello"))
    events = list(backend.stream(GenerationRequest(prompt, 4)))
    assert len(events) == 4
"""


class FakeServer(ThreadingHTTPServer):
    """An OpenAI-compatible server on loopback that fails in the way ``mode`` names."""

    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.mode = mode

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up on a bad stream is expected; print nothing into the run's output."""


class FakeHandler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def echo(self) -> str:
        """The request headers, Authorization first, as a careless server echoes them."""
        items = sorted(self.headers.items(), key=lambda kv: kv[0].lower() != "authorization")
        return "".join(f"{name}: {value}\n" for name, value in items)

    def send(self, status: int, body: object, kind: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.answer({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.answer(json.loads(self.rfile.read(length) or b"{}"))

    def answer(self, body: dict[str, Any]) -> None:
        mode = self.server.mode
        auth = self.headers.get("Authorization", "")
        if mode == "long_401":
            self.send(401, {"error": {"message": f"{LATE}{auth}, which we do not know", "type": "auth"}})
        elif mode == "escaped_echo":
            escaped = "".join(f"\\u{ord(c):04x}" for c in auth)
            self.send(200, f'{{"data": [{{"id": "{escaped}"}}], "note": "{auth}"}}')
        elif mode == "cut_500":
            # the key starts 12 bytes before the client stops reading an error body
            padding = " " * (ERROR_BODY_BYTES - 12 - len("Internal error. Bearer "))
            self.send(500, f"Internal error. {padding}{auth} was refused", "text/plain")
        elif self.path == "/v1/models":
            if mode == "models_not_json":
                self.send(200, "Debug echo of your request:\n" + self.echo(), "text/plain")
            else:
                self.send(200, {"object": "list", "data": [{"id": "fake-model"}]})
        elif self.path == "/extras/tokenize":
            self.send(200, {"tokens": [ord(c) for c in body.get("input", "")]})
        elif self.path == "/extras/detokenize":
            self.send(200, {"text": "".join(chr(t) for t in body.get("tokens", []))})
        elif self.path == "/v1/completions" and not body.get("stream"):
            self.send(200, {"choices": [{"index": 0, "text": "x", "finish_reason": "length"}]})
        elif self.path == "/v1/completions" and mode == "echo_500":
            self.send(500, "Internal Server Error while handling\n" + self.echo(), "text/plain")
        elif self.path == "/v1/completions":
            self.stream(mode, auth, int(body.get("max_tokens", 4)))
        else:
            self.send(404, {"detail": "Not Found"})

    def event(self, data: object) -> None:
        self.wfile.write(f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode())

    def stream(self, mode: str, auth: str, tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for _ in range(tokens - 1):
            self.event({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
        if mode == "bad_chunk_type":
            self.event({"choices": [{"index": 0, "text": "b", "logprobs": {"tokens": ["b"], "token_logprobs": 5}}]})
        elif mode == "late_key_event":
            self.event(f"upstream said {'-' * 40} {auth}")
        elif mode == "reset_midstream":
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.event({"choices": [{"index": 0, "text": "b", "finish_reason": "length"}]})
        self.event({"choices": [], "usage": {"completion_tokens": tokens}})
        self.event("[DONE]")


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[FakeServer]:
    server = FakeServer(getattr(request, "param", "ok"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Case:
    mode: str
    key_suffix: str = ""


#: The failure modes of issue 15 (breaks 1-4) and the others found on the same path.
CASES = {
    "bad_chunk_type": Case("bad_chunk_type"),  # break 1
    "newline_key": Case("ok", "\n"),  # break 2
    "models_not_json": Case("models_not_json"),  # break 3
    "long_401": Case("long_401"),  # break 4
    "echo_500": Case("echo_500"),
    "late_key_event": Case("late_key_event"),
    "reset_midstream": Case("reset_midstream"),
}


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh random key, without any suffix; ``KEY_ENV`` holds it (and the case's suffix)."""
    value = "sk-" + secrets.token_hex(20)
    monkeypatch.setenv(KEY_ENV, value)
    return value


def leaks(key: str, text: str) -> list[str]:
    """Every ``WINDOW``-character piece of ``key`` that ``text`` contains."""
    return sorted({key[i : i + WINDOW] for i in range(len(key) - WINDOW + 1) if key[i : i + WINDOW] in text})


def files_under(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_bytes().decode("utf-8", errors="replace")
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def assert_nothing_leaks(key: str, channels: dict[str, str]) -> None:
    found = {name: leaks(key, text) for name, text in channels.items()}
    assert not {name: pieces for name, pieces in found.items() if pieces}, "the key leaked"
    assert all("Authorization: Bearer" not in text or "Bearer ***" in text for text in channels.values())


def run_pytest(pytester: pytest.Pytester, server: FakeServer, tiny_gguf: Path) -> tuple[pytest.RunResult, str]:
    pytester.makepyfile(test_user=USER_TEST)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        *("-l", "--tb=long", f"--junitxml={junit}", "-p", "no:cacheprovider", "-rA"),
        *(f"--model={tiny_gguf}", "--backend", "openai_http", "--device", "cpu"),
        *("--minerva-endpoint", server.url, "--minerva-api-key-env", KEY_ENV),
    )
    return result, "\n".join(result.outlines + result.errlines)


#: What the pytest run says, one line, for each case (the key is never part of it).
SERVING = "*ServingError: openai_http: "
PYTEST_REASONS = {
    "bad_chunk_type": SERVING + "malformed_sse: event 4 does not have the shape of a completion chunk (TypeError: *",
    "newline_key": f"*the API key in {KEY_ENV} ends in a newline*",
    "models_not_json": "*/v1/models: the response is not JSON: 'Debug echo of your request: Authorization: Bearer ***",
    "long_401": "*/v1/models: HTTP 401: The gateway refused this request:*",
    "echo_500": SERVING + "http_error: HTTP 500 Internal Server Error: *Authorization: Bearer ****",
    "late_key_event": SERVING + "malformed_sse: event 4 is not JSON: 'upstream said ---*",
    "reset_midstream": SERVING + "stream_broken: the connection broke after 3 chunks: Connection reset*",
}


@pytest.mark.parametrize(
    ("fake_server", "case"), [(c.mode, name) for name, c in CASES.items()], indirect=["fake_server"], ids=list(CASES)
)
def test_pytest_run_never_shows_the_key(
    pytester: pytest.Pytester,
    fake_server: FakeServer,
    case: str,
    key: str,
    tiny_gguf: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, key + CASES[case].key_suffix)
    result, output = run_pytest(pytester, fake_server, tiny_gguf)
    assert_nothing_leaks(key, {"terminal": output, **files_under(pytester.path)})
    result.stdout.fnmatch_lines([PYTEST_REASONS[case]])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert not FOREIGN_ERRORS.findall(output), "an exception escaped as itself instead of a one-line reason"
    assert ("Traceback" in output, "http/client.py" in output) == (False, False)


def serve_bench(server: FakeServer, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``minerva serve-bench --json`` against ``server`` in a child process (as a user runs it)."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "pytest_minerva.commands", "serve-bench"),
            *("--endpoint", server.url, "--api-key-env", KEY_ENV, "--concurrency", "1", "--requests", "1"),
            *("--rounds", "1", "--max-tokens", "4", "--prompt-tokens", "8", "--timeout", "20"),
            *("--json", str(workdir / "serve.json")),
        ],
        cwd=workdir,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


#: serve-bench's exit status and a line it must print, per case.
SERVE_BENCH_OUTCOMES = {
    "bad_chunk_type": (1, "- malformed_sse: event 4 does not have the shape of a completion chunk*"),
    "newline_key": (1, f"minerva: the API key in {KEY_ENV} ends in a newline*"),
    "models_not_json": (0, "| 1 | 1 | 1 | 0 |*"),
    "long_401": (1, "- http_error: HTTP 401 Unauthorized: The gateway refused this request:*"),
    "echo_500": (1, "- http_error: HTTP 500 Internal Server Error: *Authorization: Bearer ****"),
    "late_key_event": (1, "- malformed_sse: event 4 is not JSON: 'upstream said ---*"),
    "reset_midstream": (1, "- stream_broken: the connection broke after 3 chunks: Connection reset*"),
}


@pytest.mark.parametrize(
    ("fake_server", "case"), [(c.mode, name) for name, c in CASES.items()], indirect=["fake_server"], ids=list(CASES)
)
def test_serve_bench_never_shows_the_key(
    fake_server: FakeServer, case: str, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, key + CASES[case].key_suffix)
    ran = serve_bench(fake_server, tmp_path)
    assert_nothing_leaks(key, {"stdout": ran.stdout, "stderr": ran.stderr, **files_under(tmp_path)})
    status, line = SERVE_BENCH_OUTCOMES[case]
    assert "Traceback" not in ran.stderr
    assert len(ran.stderr.splitlines()) <= 1, ran.stderr
    assert ran.returncode == status, ran.stderr
    assert [text for text in (ran.stdout + ran.stderr).splitlines() if fnmatch_line(text, line)], (line, ran)


def fnmatch_line(text: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(text, pattern)


# -- the pieces ------------------------------------------------------------------


def test_an_api_key_shows_nothing_and_a_header_unsafe_key_is_one_line(
    key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_minerva.serving.client import ApiKey

    loaded = ApiKey.from_env(KEY_ENV)
    assert (repr(loaded), str(loaded), f"{loaded!r} {[loaded]}") == (
        "ApiKey(***)",
        "ApiKey(***)",
        "ApiKey(***) [ApiKey(***)]",
    )
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(loaded)
    problems = {
        key + "\n": "ends in a newline (a key read from a file keeps its newline: strip it)",
        key + "\r\n": "ends in a newline (a key read from a file keeps its newline: strip it)",
        " " + key: "starts or ends with whitespace",
        key[:8] + "\x1b[31m" + key[8:]: "contains a control character, a space or a non-ASCII character",
        key[:8] + "é" + key[8:]: "contains a control character, a space or a non-ASCII character",
    }
    for value, problem in problems.items():
        monkeypatch.setenv(KEY_ENV, value)
        with pytest.raises(MinervaError) as info:
            Endpoint("http://127.0.0.1:1", KEY_ENV)
        assert str(info.value) == (
            f"the API key in {KEY_ENV} {problem}; an HTTP header cannot carry it, so it was not sent"
        )
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(MinervaError, match=f"names {KEY_ENV}, which is not set or empty"):
        Endpoint("http://127.0.0.1:1", KEY_ENV)


def test_redaction_finds_the_key_escaped_encoded_and_cut(key: str) -> None:
    from pytest_minerva.serving.client import ApiKey

    secret = ApiKey(key + "/+")
    value = key + "/+"
    quoted = {
        "raw": f"Bearer {value}",
        "json": json.dumps({"k": value}),
        "url": "?key=" + value.replace("/", "%2F").replace("+", "%2B"),
        "bytes repr": repr(f"Bearer {value}".encode()),
    }
    for form, text in quoted.items():
        assert leaks(key, secret.redact(text)) == [], form
    assert secret.redact(f"cut here: Bearer {value[:14]}", cut=True) == "cut here: Bearer ***"
    assert secret.redact(f"not cut: {value[:14]}") == f"not cut: {value[:14]}"
    assert ApiKey("").redact("nothing to hide") == "nothing to hide"


@pytest.mark.parametrize("fake_server", ["models_not_json", "long_401"], indirect=True)
def test_a_failed_json_request_keeps_the_key_out_of_every_frame(fake_server: FakeServer, key: str) -> None:
    with pytest.raises(MinervaError) as info:
        request_json(Endpoint(fake_server.url, KEY_ENV), "GET", "/v1/models")
    assert leaks(key, str(info.value)) == []
    assert info.value.__context__ is None, "http.client's frames (which hold the header lines) stay reachable"
    library = [entry for entry in info.traceback if "pytest_minerva" in str(entry.path)]
    assert [entry.name for entry in library] == ["request_json"]
    shown = [f"{name}={value!r}" for entry in library for name, value in entry.locals.items()]
    assert leaks(key, "\n".join(shown)) == []


def test_an_unreachable_server_fails_in_one_line_without_context(key: str) -> None:
    url = f"http://127.0.0.1:{refused_port()}"
    with pytest.raises(MinervaError) as info:
        request_json(Endpoint(url, KEY_ENV), "GET", "/v1/models")
    assert str(info.value) == f"{url}/v1/models: Connection refused"
    assert info.value.__context__ is None


@pytest.mark.parametrize("fake_server", ["escaped_echo"], indirect=True)
def test_an_answer_that_echoes_the_key_escaped_comes_back_redacted(fake_server: FakeServer, key: str) -> None:
    answer = request_json(Endpoint(fake_server.url, KEY_ENV), "GET", "/v1/models")
    assert answer == {"data": [{"id": "Bearer ***"}], "note": "Bearer ***"}


@pytest.mark.parametrize("fake_server", ["cut_500"], indirect=True)
def test_an_error_body_cut_inside_the_key_shows_none_of_it(fake_server: FakeServer, key: str) -> None:
    result = stream_request(Endpoint(fake_server.url, KEY_ENV), "completions", {"prompt": "a", "max_tokens": 2})
    assert result.failure is not None
    assert str(result.failure) == "http_error: HTTP 500 Internal Server Error: Internal error. Bearer ***"


@pytest.mark.parametrize("fake_server", ["ok"], indirect=True)
def test_http_client_debug_output_never_prints_the_header(
    fake_server: FakeServer, key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(http.client.HTTPConnection, "debuglevel", 1)
    request_json(Endpoint(fake_server.url, KEY_ENV), "GET", "/v1/models")
    result = stream_request(Endpoint(fake_server.url, KEY_ENV), "completions", {"prompt": "a", "max_tokens": 2})
    assert result.ok, result.failure
    assert leaks(key, "".join(capsys.readouterr())) == []


@pytest.mark.skipif(server_unavailable_reason() is not None, reason=str(server_unavailable_reason()))
def test_a_server_started_here_refuses_a_newline_key_before_it_starts(
    key: str, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, key + "\n")
    server = LlamaCppServer(tiny_gguf, api_key_env=KEY_ENV, startup_timeout_s=5)
    with pytest.raises(MinervaError, match=f"^the API key in {KEY_ENV} ends in a newline"):
        server.start()
    assert server.pid is None


@pytest.mark.parametrize("error", [RuntimeError, OSError, MinervaError])
def test_the_command_line_never_prints_the_key_a_bug_put_in_a_message(
    key: str, error: type[Exception], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_minerva import commands
    from pytest_minerva.commands import serve_bench

    def buggy(args: object) -> int:
        raise error(f"{'x' * 200} while sending Authorization: Bearer {key}")

    monkeypatch.setattr(serve_bench, "cmd_serve_bench", buggy)
    monkeypatch.delenv(commands.TRACEBACK_VARIABLE, raising=False)
    status = commands.main(["serve-bench", "--endpoint", "http://127.0.0.1:1", "--api-key-env", KEY_ENV])
    err = capsys.readouterr().err
    assert status == 1
    assert len(err.splitlines()) == 1
    assert not leaks(key, err), err
