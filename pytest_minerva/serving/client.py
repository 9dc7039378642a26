"""The HTTP side of talking to an OpenAI-compatible server: its endpoint, timeouts and JSON requests.

:class:`Endpoint` reads the API key from the environment only when a request is made, and
redacts it from every message. :func:`request_json` makes one non-streaming request and
raises :class:`~pytest_minerva.errors.MinervaError` with a one-line reason. The helpers
that turn an error body or a socket error into such a reason are shared with the
streaming client, :func:`pytest_minerva.serving.sse.stream_request`.
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pytest_minerva.errors import MinervaError

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


@dataclass(frozen=True)
class Endpoint:
    """The base URL of an OpenAI-compatible server and the *name* of the variable holding its key.

    ``url`` is ``http://host:port`` or ``https://...``, optionally ending in ``/v1``
    (which is dropped: paths like ``/v1/completions`` are added per request). The API
    key is read from ``os.environ[api_key_env]`` when a request is made; it is never
    stored on this object, shown by ``repr`` or put in an error message.
    """

    url: str
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        raw = self.url.strip()
        parts = urllib.parse.urlsplit(raw)
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

    def _api_key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise MinervaError(
                f"--minerva-api-key-env names {self.api_key_env}, which is not set or empty in the environment"
            )
        return key

    def headers(self, *, stream: bool) -> dict[str, str]:
        out = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": "pytest-minerva",
        }
        key = self._api_key()
        if key is not None:
            out["Authorization"] = f"Bearer {key}"
        return out

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any is set) replaced by ``***``."""
        if self.api_key_env is None:
            return text
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def connection(self, timeouts: Timeouts) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeouts.connect_s)


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
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_message(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except ValueError:
        return shorten(text) or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return shorten(str(err))
    return shorten(text)


def os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__ + (f" ({exc})" if str(exc) else "")


def request_json(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    *,
    timeouts: Timeouts | None = None,
) -> Any:
    """One non-streaming JSON request; raises :class:`MinervaError` with a one-line reason."""
    timeouts = timeouts or Timeouts()
    conn = endpoint.connection(timeouts)
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(timeouts.read_s)
        data = None if body is None else json.dumps(body).encode("utf-8")
        conn.request(method, endpoint.path(path), body=data, headers=endpoint.headers(stream=False))
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise MinervaError(endpoint.redact(f"{endpoint.url}{path}: {os_reason(exc)}")) from None
    finally:
        conn.close()
    if response.status != 200:
        detail = error_message(raw[:ERROR_BODY_BYTES])
        message = endpoint.redact(f"{endpoint.url}{path}: HTTP {response.status}: {detail}")
        raise HttpStatusError(response.status, message)
    try:
        return json.loads(raw)
    except ValueError:
        shown = shorten(raw.decode("utf-8", errors="replace"), 80)
        raise MinervaError(f"{endpoint.url}{path}: the response is not JSON: {shown!r}") from None


class HttpStatusError(MinervaError):
    """A non-200 answer to a JSON request; ``status`` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)
