"""Stream one completion from an OpenAI-compatible server over SSE and time it.

Definitions (all ``time.perf_counter()`` readings in this process):

``request_s``
    just before the TCP connection is opened.
chunk time
    when the first line of an SSE event carrying generated text was read. Events with
    no text (the chat role header, the final ``finish_reason`` event, keep-alive
    comments) are not token chunks.
TTFT
    first chunk time minus ``request_s``: connection, request, queueing in the server,
    prefill and the first token. It is measured at the first *content*, not at the
    HTTP headers (a server may send headers long before it has a token).
TpT
    ``(last chunk time - first chunk time) / (N - 1)`` with ``N`` the generated token
    count. A chunk may carry several tokens, so ``N`` is not the chunk count: it is the
    server's ``usage.completion_tokens`` when the stream reports it, else the number of
    per-token logprob entries when the server sent them, else the requested
    ``max_tokens`` when the server reports ``finish_reason: length``, else the
    generated text re-tokenized, else the chunk count (:meth:`StreamResult.count_tokens`).
    :attr:`StreamResult.token_count_source` says which. Re-tokenizing is the least
    exact: llama.cpp may generate ``"\n"`` twice where the tokenizer reads one ``"\n\n"``.

A request that fails never raises, whatever the exception: it returns a
:class:`StreamResult` whose :attr:`~StreamResult.failure` names the reason (one of
:data:`FAILURE_REASONS`) and says what happened in one line. Failed requests carry no
figures. Only a configuration error (the API key's variable unset, or a key an HTTP
header cannot carry) raises :class:`~pytest_minerva.errors.MinervaError`, before
anything is sent. Every line read is redacted (the API key replaced by ``***``) before
it is parsed, quoted or shortened.

The endpoint, the timeouts and plain (non-streaming) JSON requests are in
:mod:`pytest_minerva.serving.client`.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pytest_minerva.errors import MinervaError, printable
from pytest_minerva.serving.client import (
    Endpoint,
    Timeouts,
    error_message,
    os_reason,
    parse_retry_after,
    read_error,
    redact_data,
    send_request,
    shorten,
)

#: Why a request failed; every failed request carries exactly one of these.
FAILURE_REASONS = (
    "unreachable",
    "rate_limited",
    "http_error",
    "not_a_stream",
    "server_error_in_stream",
    "malformed_sse",
    "stream_broken",
    "timeout",
)
COUNT_SOURCES = ("usage", "logprobs", "length", "tokenizer", "chunks")
APIS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
MAX_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class Failure:
    """Why one request produced no usable figures."""

    reason: str
    message: str
    http_status: int | None = None
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "message": self.message,
            "http_status": self.http_status,
            "retry_after_s": self.retry_after_s,
        }


@dataclass
class SSEEvent:
    """One dispatched server-sent event: its data lines joined by newlines."""

    data: str
    event: str = "message"
    time_s: float = 0.0


class SSEParser:
    """The SSE line protocol (WHATWG "event stream interpretation"), one line at a time.

    Feed decoded lines without their line terminator; a blank line dispatches the
    event. Comments (``:...``) and ``id``/``retry`` fields are ignored. The event time
    is the time of its first line.
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._first_s: float | None = None

    def feed(self, line: str, now: float) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event, self._first_s = "", None
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message", self._first_s or now)
            self._data, self._event, self._first_s = [], "", None
            return event
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if self._first_s is None:
            self._first_s = now
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def finish(self, now: float) -> SSEEvent | None:
        """A stream that ends without the final blank line still delivers its last event."""
        return self.feed("", now)


@dataclass
class StreamResult:
    """One streamed request: timestamps, generated text, token count, or the failure."""

    api: str
    request_s: float = 0.0
    headers_s: float | None = None
    end_s: float | None = None
    http_status: int | None = None
    chunk_times_s: list[float] = field(default_factory=list)
    chunk_texts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    logprob_entries: list[dict[str, Any]] = field(default_factory=list)
    failure: Failure | None = None
    completion_tokens: int | None = None
    token_count_source: str | None = None
    tag: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def text(self) -> str:
        return "".join(self.chunk_texts)

    def count_tokens(self, tokenize: Callable[[str], list[int]] | None = None, *, requested: int | None = None) -> int:
        """Fill :attr:`completion_tokens` and :attr:`token_count_source`; call it after the stream.

        In order: the server's ``usage``; the number of per-token logprob entries; the
        requested ``max_tokens`` when the server says it stopped for ``length`` (what
        OpenAI's ``finish_reason`` means); ``tokenize(text)``; the number of chunks.
        """
        usage_count = (self.usage or {}).get("completion_tokens")
        if isinstance(usage_count, int) and usage_count >= 0:
            self.completion_tokens, self.token_count_source = usage_count, "usage"
        elif self.logprob_entries:
            self.completion_tokens, self.token_count_source = len(self.logprob_entries), "logprobs"
        elif requested is not None and self.finish_reason == "length" and len(self.chunk_texts) <= requested:
            self.completion_tokens, self.token_count_source = requested, "length"
        elif tokenize is not None and self.chunk_texts:
            self.completion_tokens, self.token_count_source = len(tokenize(self.text)), "tokenizer"
        else:
            self.completion_tokens, self.token_count_source = len(self.chunk_texts), "chunks"
        return self.completion_tokens

    @property
    def ttft_s(self) -> float | None:
        if not self.ok or not self.chunk_times_s:
            return None
        return self.chunk_times_s[0] - self.request_s

    @property
    def e2e_s(self) -> float | None:
        if not self.ok or not self.chunk_times_s:
            return None
        return self.chunk_times_s[-1] - self.request_s

    @property
    def tpt_s(self) -> float | None:
        """Mean time per output token after the first; None below 2 tokens or before counting."""
        n = self.completion_tokens
        if not self.ok or n is None or n < 2 or len(self.chunk_times_s) < 2:
            return None
        return (self.chunk_times_s[-1] - self.chunk_times_s[0]) / (n - 1)

    def as_dict(self) -> dict[str, Any]:
        ttft, tpt, e2e = self.ttft_s, self.tpt_s, self.e2e_s
        return {
            "api": self.api,
            "tag": self.tag,
            "ok": self.ok,
            "failure": self.failure.as_dict() if self.failure else None,
            "http_status": self.http_status,
            "chunks": len(self.chunk_times_s),
            "completion_tokens": self.completion_tokens,
            "token_count_source": self.token_count_source,
            "finish_reason": self.finish_reason,
            "ttft_ms": None if ttft is None else ttft * 1e3,
            "tpt_ms": None if tpt is None else tpt * 1e3,
            "e2e_ms": None if e2e is None else e2e * 1e3,
        }


class _Abort(Exception):
    def __init__(self, failure: Failure) -> None:
        self.failure = failure


def _lines(response: http.client.HTTPResponse, deadline: float, total_s: float) -> Iterator[tuple[str, float]]:
    while True:
        raw = response.readline(MAX_LINE_BYTES + 1)
        now = time.perf_counter()
        if not raw:
            return
        if len(raw) > MAX_LINE_BYTES:
            raise _Abort(Failure("malformed_sse", f"an SSE line is longer than {MAX_LINE_BYTES} bytes"))
        if now > deadline:
            raise _Abort(Failure("timeout", f"the request took longer than its total limit of {total_s:g} s"))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Abort(Failure("malformed_sse", "an SSE line is not valid UTF-8")) from None
        yield line.rstrip("\r\n").removesuffix("\r"), now


def _content(api: str, choice: Mapping[str, Any]) -> str:
    if api == "chat":
        delta = choice.get("delta") or {}
        return str(delta.get("content") or "") if isinstance(delta, dict) else ""
    return str(choice.get("text") or "")


def _logprob_entries(api: str, choice: Mapping[str, Any]) -> list[dict[str, Any]]:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return []
    if api == "chat":
        content = logprobs.get("content")
        return [dict(e) for e in content if isinstance(e, dict)] if isinstance(content, list) else []
    tokens = logprobs.get("tokens")
    if not isinstance(tokens, list):
        return []
    token_lp = logprobs.get("token_logprobs") or [None] * len(tokens)
    top = logprobs.get("top_logprobs") or [None] * len(tokens)
    return [{"token": t, "logprob": lp, "top_logprobs": tp} for t, lp, tp in zip(tokens, token_lp, top, strict=False)]


def _handle_event(result: StreamResult, event: SSEEvent, redact: Callable[[str], str] | None) -> bool:
    """Record one event; True once the stream says ``[DONE]``. ``redact`` is applied to what it decodes."""
    number = len(result.chunk_times_s) + 1
    data = event.data.strip()
    if data == "[DONE]":
        return True
    if not data:
        return False
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        raise _Abort(Failure("malformed_sse", f"event {number} is not JSON: {shorten(data, 80)!r}")) from None
    if redact is not None:
        payload = redact_data(payload, redact)
    try:
        return _record(result, event, payload, data)
    except _Abort:
        raise
    except Exception as exc:  # a field of the wrong type or shape
        why = shorten(f"{type(exc).__name__}: {exc}", 100)
    raise _Abort(Failure("malformed_sse", f"event {number} does not have the shape of a completion chunk ({why})"))


def _record(result: StreamResult, event: SSEEvent, payload: Any, data: str) -> bool:
    """Add a decoded event to ``result``; a field of the wrong type raises, and the caller says so."""
    if not isinstance(payload, dict):
        raise _Abort(Failure("malformed_sse", f"an event is JSON but not an object: {shorten(data, 80)!r}"))
    if payload.get("error") is not None or event.event == "error":
        error = payload.get("error", payload)
        message = error.get("message", error) if isinstance(error, dict) else error
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) else None
        raise _Abort(
            Failure(
                "server_error_in_stream",
                f"the server reported an error after {len(result.chunk_times_s)} chunks: {shorten(str(message))}",
                http_status=status,
            )
        )
    usage = payload.get("usage")
    if isinstance(usage, dict):
        result.usage = usage
    choices = payload.get("choices")
    if not isinstance(choices, list):
        if usage is None:
            raise _Abort(Failure("malformed_sse", f"an event has no choices: {shorten(data, 80)!r}"))
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        text = _content(result.api, choice)
        if text:
            result.chunk_times_s.append(event.time_s)
            result.chunk_texts.append(text)
        result.logprob_entries += _logprob_entries(result.api, choice)
        if choice.get("finish_reason"):
            result.finish_reason = str(choice["finish_reason"])
    return False


def stream_request(
    endpoint: Endpoint,
    api: str,
    payload: Mapping[str, Any],
    *,
    timeouts: Timeouts | None = None,
    tag: str = "",
) -> StreamResult:
    """POST ``payload`` (``stream`` is forced on) to the ``api`` route and read the SSE stream.

    ``api`` is ``"completions"`` or ``"chat"``. The token count is not filled in:
    call :meth:`StreamResult.count_tokens` afterwards, outside any timed region.
    """
    if api not in APIS:
        raise MinervaError(f"unknown API {api!r}; choose from {', '.join(APIS)}")
    timeouts = timeouts or Timeouts()
    body = json.dumps({**payload, "stream": True}).encode("utf-8")
    redact = None if endpoint.api_key() is None else endpoint.redactor()
    result = StreamResult(api=api, tag=tag)
    result.request_s = start = time.perf_counter()
    deadline = start + timeouts.total_s
    conn = endpoint.connection(timeouts)
    done = False
    try:
        try:
            conn.connect()
        except Exception as exc:  # refused, unresolvable, TLS, an IDNA host name too long...
            raise _Abort(Failure("unreachable", f"cannot connect to {endpoint.url}: {os_reason(exc)}")) from None
        if conn.sock is not None:
            conn.sock.settimeout(timeouts.read_s)
        send_request(conn, endpoint, "POST", APIS[api], body, stream=True)
        response = conn.getresponse()
        result.headers_s = time.perf_counter()
        result.http_status = response.status
        if response.status != 200:
            detail = error_message(read_error(response, endpoint), endpoint.redact)
            if response.status == 429:
                retry = parse_retry_after(response.getheader("Retry-After"))
                hint = f"retry after {retry:g} s" if retry is not None else "no Retry-After given"
                raise _Abort(Failure("rate_limited", f"HTTP 429 ({hint}): {detail}", 429, retry))
            raise _Abort(Failure("http_error", f"HTTP {response.status} {response.reason}: {detail}", response.status))
        kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "text/event-stream":
            raise _Abort(
                Failure("not_a_stream", f"the server answered {kind or 'no content type'}, not text/event-stream")
            )
        parser = SSEParser()
        for line, now in _lines(response, deadline, timeouts.total_s):
            event = parser.feed(line if redact is None else redact(line), now)
            if event is not None and _handle_event(result, event, redact):
                done = True
                break
        if not done:
            event = parser.finish(time.perf_counter())
            done = event is not None and _handle_event(result, event, redact)
        if not done:
            raise _Abort(
                Failure(
                    "stream_broken",
                    f"the stream ended after {len(result.chunk_times_s)} chunks without [DONE]",
                )
            )
    except _Abort as abort:
        result.failure = abort.failure
    except TimeoutError:
        waited = "for the response headers" if result.headers_s is None else "between stream lines"
        result.failure = Failure(
            "timeout",
            f"no data for {timeouts.read_s:g} s {waited} after {len(result.chunk_times_s)} chunks",
            result.http_status,
        )
    except (OSError, http.client.HTTPException) as exc:
        result.failure = Failure(
            "stream_broken",
            f"the connection broke after {len(result.chunk_times_s)} chunks: {os_reason(exc)}",
            result.http_status,
        )
    except Exception as exc:  # anything else on the HTTP path (a header http.client refuses, a decoder error)
        result.failure = Failure(
            "stream_broken",
            f"the request failed after {len(result.chunk_times_s)} chunks: {os_reason(exc)}",
            result.http_status,
        )
    finally:
        conn.close()
        result.end_s = time.perf_counter()
    if result.failure is not None:
        result.failure = Failure(
            result.failure.reason,
            printable(shorten(endpoint.redact(result.failure.message), 400)),
            result.failure.http_status,
            result.failure.retry_after_s,
        )
    return result
