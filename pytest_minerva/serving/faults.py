"""A small fault-injecting HTTP proxy in front of a real server, for error tests.

``with FaultProxy(upstream_url, "malformed_sse") as proxy:`` listens on a free
loopback port (``proxy.url``) and forwards each request to the upstream server,
injecting one fault into the response. Faults:

``pass``
    forward everything unchanged (a control).
``unreachable``
    nothing listens at ``proxy.url``: connecting is refused.
``status_429``
    answer ``429 Too Many Requests`` with ``Retry-After: <retry_after_s>`` at once.
``status_503``
    answer ``503 Service Unavailable`` at once.
``error_midstream``
    forward ``after_events`` SSE events, then send an OpenAI-style error event
    (``data: {"error": {"code": 500, ...}}``) and close: a 5xx in mid-stream.
``drop_midstream``
    forward ``after_events`` events, then close the connection without ``[DONE]``.
``malformed_sse``
    forward ``after_events`` events, then a ``data:`` line that is not JSON, then the rest.
``stall``
    forward ``after_events`` events, then send nothing more until the client gives up
    or the proxy is closed.

The proxy speaks HTTP/1.0 to the client (the body ends when the connection closes)
and reads the upstream with :mod:`http.client`, so the client really parses bytes
from a socket. It is a test tool: one upstream, no TLS, loopback only.
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import urllib.parse
from typing import Any

from pytest_minerva.errors import MinervaError

FAULTS = (
    "pass",
    "unreachable",
    "status_429",
    "status_503",
    "error_midstream",
    "drop_midstream",
    "malformed_sse",
    "stall",
)
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def refused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on (bound, then closed), so connecting to it is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._forward(self.rfile.read(length))

    def _forward(self, body: bytes | None) -> None:
        proxy = self.server.proxy
        with proxy._lock:
            proxy.requests += 1
            fault = proxy.fault if proxy.requests % proxy.every == 0 else "pass"
        if fault == "status_429":
            message = {"error": {"message": "rate limited by the fault proxy", "code": 429}}
            self._reply(429, message, {"Retry-After": f"{proxy.retry_after_s:g}"})
            return
        if fault == "status_503":
            self._reply(503, {"error": {"message": "service unavailable (fault proxy)", "code": 503}})
            return
        upstream = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout_s
        )
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_HEADERS:
                    self.send_header(name, value)
            self.end_headers()
            if response.getheader("Content-Type", "").startswith("text/event-stream") and fault != "pass":
                self._inject(response, fault, proxy)
            else:
                self._copy(response)
        except (OSError, http.client.HTTPException):
            return
        finally:
            upstream.close()

    def _copy(self, response: http.client.HTTPResponse) -> None:
        while chunk := response.read1(65536):
            self.wfile.write(chunk)
            self.wfile.flush()

    def _inject(self, response: http.client.HTTPResponse, fault: str, proxy: FaultProxy) -> None:
        events = 0
        while line := response.readline():
            self.wfile.write(line)
            self.wfile.flush()
            if line.strip():
                continue
            events += 1
            if events < proxy.after_events:
                continue
            if fault == "error_midstream":
                error = {"error": {"message": "injected upstream failure", "type": "server_error", "code": 500}}
                self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
                self.wfile.flush()
                return
            if fault == "drop_midstream":
                return
            if fault == "malformed_sse":
                self.wfile.write(b'data: {"choices": [{"text": "unterminated\n\n')
                self.wfile.flush()
                self._copy(response)
                return
            if fault == "stall":
                proxy.release.wait(proxy.stall_s)
                return


class FaultProxy:
    """A loopback HTTP proxy to ``upstream_url`` that injects ``fault`` (one of :data:`FAULTS`).

    ``after_events`` is how many SSE events pass before a mid-stream fault;
    ``retry_after_s`` is the 429's ``Retry-After``; a ``stall`` lasts until the client
    disconnects, :meth:`close` is called, or ``stall_s`` passes. With ``every=n`` only
    every ``n``-th request (the ``n``-th, ``2n``-th...) gets the fault; the others pass.
    ``requests`` counts the requests the proxy received.
    """

    def __init__(
        self,
        upstream_url: str | None,
        fault: str,
        *,
        after_events: int = 2,
        retry_after_s: float = 2.0,
        stall_s: float = 120.0,
        upstream_timeout_s: float = 60.0,
        every: int = 1,
    ) -> None:
        if fault not in FAULTS:
            raise MinervaError(f"unknown fault {fault!r}; choose from {', '.join(FAULTS)}")
        if every < 1:
            raise MinervaError(f"every must be at least 1, got {every}")
        if after_events < 1:
            raise MinervaError(f"after_events must be at least 1, got {after_events}")
        self.fault = fault
        self.after_events = after_events
        self.retry_after_s = retry_after_s
        self.stall_s = stall_s
        self.upstream_timeout_s = upstream_timeout_s
        self.every = every
        self.requests = 0
        self._lock = threading.Lock()
        self.release = threading.Event()
        parts = urllib.parse.urlsplit(upstream_url or "http://127.0.0.1:9")
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        if self.fault == "unreachable":
            self.port = refused_port()
            return self
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="minerva-fault-proxy", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Release stalled responses, stop listening, and wait for the serving thread."""
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
