"""The HTTP side of talking to an OpenAI-compatible server: its endpoint, timeouts and JSON requests.

:class:`Endpoint` holds the *name* of the environment variable with the API key; the key
itself travels as an :class:`ApiKey`, whose ``repr`` is redacted, and only
:func:`send_request` puts it on the wire, so no local that a traceback (``pytest -l``)
can show holds it. :func:`request_json` makes one non-streaming request and raises
:class:`~pytest_minerva.errors.MinervaError` with a one-line reason, whatever goes wrong.
Everything read from the server is redacted before it is parsed, quoted or shortened.
The helpers that turn an error body or a socket error into such a reason are shared
with the streaming client, :func:`pytest_minerva.serving.sse.stream_request`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import socket
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_minerva.errors import MinervaError, printable

#: How much of an error response's body is read to quote it.
ERROR_BODY_BYTES = 4096


@dataclass(frozen=True)
class Timeouts:
    """Bounds on one request: connecting, silence between bytes, and the whole request."""

    connect_s: float = 5.0
    read_s: float = 30.0
    total_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "read_s", "total_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise MinervaError(f"timeout {name} must be a positive number of seconds, got {value!r}")


#: What stands in for the key wherever a message or an answer would have shown it.
REDACTED = "***"
#: Methods that carry a body; http.client sends ``Content-Length: 0`` for them when there is none.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class ApiKey:
    """An API key that never shows itself: ``repr``, ``str`` and pickling give nothing away.

    A traceback with locals (``pytest -l``), a log line or a report that shows an
    ``ApiKey`` shows ``ApiKey(***)``. The value leaves it only through :meth:`authorize`
    (an ``Authorization`` header) and :meth:`reveal` (a child server's environment).
    """

    __slots__ = ("_forms", "_value")

    def __init__(self, value: str) -> None:
        self._value = value
        self._forms: list[str] | None = None

    @classmethod
    def from_env(cls, name: str) -> ApiKey:
        """The key in ``os.environ[name]``; a one-line :class:`MinervaError` (naming ``name``, never
        the value) when it is unset, empty, or holds what an HTTP header cannot carry."""
        key = cls(os.environ.get(name, ""))
        if not key._value:
            raise MinervaError(f"--minerva-api-key-env names {name}, which is not set or empty in the environment")
        problem = key.problem()
        if problem:
            raise MinervaError(f"the API key in {name} {problem}; an HTTP header cannot carry it, so it was not sent")
        return key

    def problem(self) -> str | None:
        """What makes the key unusable in a header (control characters, surrounding or inner
        whitespace, non-ASCII), or None."""
        value = self._value
        if value.rstrip("\r\n") != value and value.strip() == value.rstrip("\r\n"):
            return "ends in a newline (a key read from a file keeps its newline: strip it)"
        if value.strip() != value:
            return "starts or ends with whitespace"
        if not all(" " < ch <= "~" for ch in value):
            return "contains a control character, a space or a non-ASCII character"
        return None

    def __repr__(self) -> str:
        return f"ApiKey({REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("an ApiKey is not pickled: pass the name of its environment variable instead")

    def authorize(self, conn: http.client.HTTPConnection) -> None:
        """Send the ``Authorization: Bearer`` header on ``conn`` (between ``putrequest`` and ``endheaders``)."""
        conn.putheader("Authorization", "Bearer " + self._value)

    def reveal(self) -> str:
        """The key itself, for a child server's environment; never print or store it."""
        return self._value

    def redact(self, text: str, *, cut: bool = False) -> str:
        """``text`` with the key replaced by ``***``, also where it is escaped (``\\n``, JSON,
        URL encoding, a bytes ``repr``) or stripped of surrounding whitespace. ``cut``: the
        text was cut short, so a beginning of the key at its very end is replaced too."""
        if not self._value:
            return text
        if self._forms is None:
            self._forms = self._variants()
        for form in self._forms:
            text = text.replace(form, REDACTED)
        if cut:
            for form in self._forms:
                start = next((n for n in range(len(form) - 1, 0, -1) if text.endswith(form[:n])), 0)
                if start:
                    text = text[:-start] + REDACTED
        return text

    def _variants(self) -> list[str]:
        value = self._value
        forms = {
            value,
            value.strip(),
            printable(value),
            repr(value)[1:-1],
            repr(value.encode("utf-8", "backslashreplace"))[2:-1],
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value, safe=""),
        }
        return sorted((f for f in forms if f), key=len, reverse=True)


def _unchanged(text: str) -> str:
    return text


def redact_data(value: Any, redact: Callable[[str], str]) -> Any:
    """A decoded JSON value with ``redact`` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_data(v, redact) for v in value]
    if isinstance(value, dict):
        return {redact_data(k, redact): redact_data(v, redact) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Endpoint:
    """The base URL of an OpenAI-compatible server and the *name* of the variable holding its key.

    ``url`` is ``http://host:port`` or ``https://...``, optionally ending in ``/v1``
    (which is dropped: paths like ``/v1/completions`` are added per request). The API
    key in ``os.environ[api_key_env]`` is checked when the endpoint is made (a missing
    key or one an HTTP header cannot carry is a one-line :class:`MinervaError`) and read
    again at each request; it is never stored on this object, shown by ``repr`` or put
    in an error message.
    """

    url: str
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        raw = self.url.strip()
        try:
            parts = urllib.parse.urlsplit(raw)
        except ValueError as exc:  # e.g. "http://[::1": an unclosed IPv6 bracket
            raise MinervaError(f"endpoint {raw!r} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise MinervaError(f"endpoint {raw!r} is not an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise MinervaError(
                "the endpoint URL carries credentials; pass the key through --minerva-api-key-env instead"
            )
        if parts.query or parts.fragment:
            raise MinervaError(f"endpoint {raw!r}: a base URL has no query or fragment")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise MinervaError(f"endpoint {raw!r} has an invalid port") from None
        path = parts.path.rstrip("/")
        path = path.removesuffix("/v1")
        object.__setattr__(self, "url", urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", "")))
        if self.api_key_env is not None and not self.api_key_env.strip():
            raise MinervaError("--minerva-api-key-env needs the name of an environment variable")
        self.api_key()

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return str(urllib.parse.urlsplit(self.url).hostname)

    @property
    def port(self) -> int:
        parts = urllib.parse.urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def path(self, suffix: str) -> str:
        return urllib.parse.urlsplit(self.url).path + suffix

    def api_key(self) -> ApiKey | None:
        """The key from the environment now (None without ``api_key_env``); see :meth:`ApiKey.from_env`."""
        return None if self.api_key_env is None else ApiKey.from_env(self.api_key_env)

    def headers(self, *, stream: bool) -> dict[str, str]:
        """The request headers except ``Authorization``, which :func:`send_request` adds last."""
        return {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": "pytest-minerva",
        }

    def redact(self, text: str, *, cut: bool = False) -> str:
        """``text`` with the API key (if any is set) replaced by ``***``; see :meth:`ApiKey.redact`."""
        if self.api_key_env is None:
            return text
        return ApiKey(os.environ.get(self.api_key_env, "")).redact(text, cut=cut)

    def redactor(self) -> Callable[[str], str]:
        """:meth:`redact` for many strings: the key is read from the environment once."""
        if self.api_key_env is None:
            return _unchanged
        return ApiKey(os.environ.get(self.api_key_env, "")).redact

    def connection(self, timeouts: Timeouts) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        conn = cls(self.host, self.port, timeout=timeouts.connect_s)
        conn.set_debuglevel(0)  # a debug level set elsewhere would print the Authorization header
        return conn


def send_request(
    conn: http.client.HTTPConnection,
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes | None,
    *,
    stream: bool,
) -> None:
    """Send one request on ``conn`` (what ``conn.request`` does), the key added last by :meth:`ApiKey.authorize`.

    No frame from here up holds the key as a string: only http.client's own frames do,
    and the callers catch every exception from them (so no traceback shows them).
    """
    key = endpoint.api_key()
    conn.putrequest(method, endpoint.path(path))
    for name, value in endpoint.headers(stream=stream).items():
        conn.putheader(name, value)
    if body is not None or method.upper() in _BODY_METHODS:
        conn.putheader("Content-Length", str(len(body or b"")))
    if key is not None:
        key.authorize(conn)
    conn.endheaders(body)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def shorten(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters. Redact it first: cutting a key makes it unfindable."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_message(body: bytes | str, redact: Callable[[str], str] = _unchanged, limit: int = 160) -> str:
    """The message of an error answer (OpenAI's ``error.message``, FastAPI's ``detail``, else the
    text), redacted and then shortened to ``limit``."""
    text = body if isinstance(body, str) else body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return shorten(redact(text), limit) or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return shorten(redact(str(err)), limit)
    return shorten(redact(text), limit)


def read_error(response: http.client.HTTPResponse, endpoint: Endpoint) -> str:
    """The first :data:`ERROR_BODY_BYTES` of an error answer as text, the key redacted (a key cut
    at the limit too), so that what is quoted from it can be shortened safely."""
    raw = response.read(ERROR_BODY_BYTES)
    return endpoint.redact(raw.decode("utf-8", errors="replace"), cut=len(raw) >= ERROR_BODY_BYTES)


def os_reason(exc: BaseException) -> str:
    """A socket or protocol error in a few words. It can quote what was sent: redact it before showing it."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__ + (f" ({exc})" if str(exc) else "")


def _exchange(
    endpoint: Endpoint, method: str, path: str, body: bytes | None, timeouts: Timeouts
) -> tuple[Any, MinervaError | None]:
    """(the redacted JSON answer, None), or (None, the error to raise).

    Every exception stays in here, and so do the raw body and http.client's frames (which
    hold the header lines): the caller raises a fresh error, which carries no context.
    """
    where = f"{endpoint.url}{path}"
    redact = endpoint.redactor()
    conn = endpoint.connection(timeouts)
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(timeouts.read_s)
        send_request(conn, endpoint, method, path, body, stream=False)
        response = conn.getresponse()
        status, text = response.status, redact(response.read().decode("utf-8", errors="replace"))
    except MinervaError as exc:
        return None, MinervaError(f"{where}: {exc}")
    except Exception as exc:  # socket, TLS, protocol, encoding: each becomes one line
        return None, MinervaError(f"{where}: {shorten(redact(os_reason(exc)), 240)}")
    finally:
        conn.close()
    if status != 200:
        return None, HttpStatusError(status, f"{where}: HTTP {status}: {error_message(text, redact)}")
    try:
        return redact_data(json.loads(text), redact), None
    except (ValueError, RecursionError):
        return None, MinervaError(f"{where}: the response is not JSON: {shorten(text, 80)!r}")


def request_json(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    timeouts: Timeouts | None = None,
) -> Any:
    """One non-streaming JSON request; raises :class:`MinervaError` with a one-line reason.

    The answer comes back with the API key redacted from every string in it.
    """
    data = None if body is None else json.dumps(body).encode("utf-8")
    answer, failure = _exchange(endpoint, method, path, data, timeouts or Timeouts())
    if failure is not None:
        raise failure
    return answer


class HttpStatusError(MinervaError):
    """A non-200 answer to a JSON request; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)
