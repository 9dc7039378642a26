"""A loopback stand-in for the Hugging Face Hub's file endpoints, so download tests never leave 127.0.0.1.

It answers what huggingface_hub 2.4 reads (``file_download.get_hf_file_metadata`` and ``http_get``):

``HEAD|GET {hub}/{org}/{name}/resolve/{revision}/{file}``
    ``X-Repo-Commit`` (required: without it huggingface_hub raises FileMetadataError). A regular
    file answers 200 with ``ETag: "<git blob sha1>"`` and its bytes. An LFS file answers
    ``302`` to the CDN with ``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``: huggingface_hub
    does not follow a redirect that leaves the Hub's origin, so it reads the metadata from the
    302 itself, as it does for huggingface.co -> cdn-lfs / cas-bridge.
    Failures carry ``X-Error-Code`` (``GatedRepo``, ``RepoNotFound``, ``RevisionNotFound``,
    ``EntryNotFound``), which ``hf_raise_for_status`` turns into its typed errors.
``GET {cdn}/lfs/{sha256}``
    The LFS bytes, honouring ``Range: bytes=N-`` with ``206`` and ``Content-Range``. The CDN
    listens on a second port, so it is another origin, like the real one.

Faults are queued with :meth:`FakeHub.fail_next` and spent one per ``GET`` (of either server):
``"cut"`` sends the headers and half the body, then drops the connection; ``"corrupt"`` flips
the first byte; an int answers with that HTTP status.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    lfs: set[str]
    commit: str
    gated_token: str | None = None


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake saw it; header names are lower-case."""

    server: str
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    """Two loopback HTTP servers (hub and CDN) sharing one set of repos and a request log."""

    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[SeenRequest] = field(default_factory=list)
    faults: list[str | int] = field(default_factory=list)
    endpoint: str = ""
    cdn: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        lfs: set[str] | None = None,
        gated_token: str | None = None,
    ) -> FakeRepo:
        """Serve ``files`` at ``main`` (and at their commit hash); names in ``lfs`` are LFS files."""
        commit = hashlib.sha1("\n".join([repo_id, *sorted(files)]).encode()).hexdigest()
        repo = FakeRepo(dict(files), set(lfs if lfs is not None else files), commit, gated_token)
        self.repos[repo_id] = repo
        return repo

    def fail_next(self, *faults: str | int) -> None:
        self.faults.extend(faults)

    def seen(self, server: str, method: str = "GET") -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.server == server and r.method == method]

    def _record(self, request: SeenRequest) -> str | int | None:
        with self._lock:
            self.requests.append(request)
            if request.method == "GET" and self.faults:
                return self.faults.pop(0)
        return None

    def _lfs_blob(self, sha: str) -> bytes | None:
        for repo in self.repos.values():
            for name in repo.lfs:
                if hashlib.sha256(repo.files[name]).hexdigest() == sha:
                    return repo.files[name]
        return None


def _handler(hub: FakeHub, server_name: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(send_body=False)

        def do_GET(self) -> None:
            self._serve(send_body=True)

        def _serve(self, *, send_body: bool) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            fault = hub._record(SeenRequest(server_name, self.command, self.path, headers))
            if server_name == "hub":
                self._hub(send_body, fault)
            else:
                self._cdn(send_body, fault)

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _hub(self, send_body: bool, fault: str | int | None) -> None:
            match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlsplit(self.path).path)
            if match is None:
                self._error(404, "NotFound", "no such route")
                return
            repo_id, revision, name = unquote(match[1]), unquote(match[2]), unquote(match[3])
            auth = self.headers.get("Authorization")
            repo = hub.repos.get(repo_id)
            if repo is None:
                # The real Hub answers 401 to anonymous requests for a missing (or private) repo.
                self._error(404 if auth else 401, "RepoNotFound", "Repository not found")
                return
            if repo.gated_token is not None and auth != f"Bearer {repo.gated_token}":
                self._error(
                    403 if auth else 401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must be authenticated to access it.",
                )
                return
            if revision not in ("main", repo.commit):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return
            data = repo.files.get(name)
            if data is None:
                self._error(404, "EntryNotFound", f"{name} does not exist on main", commit=repo.commit)
                return
            if name in repo.lfs:
                sha = hashlib.sha256(data).hexdigest()
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                self.send_response(302)
                self.send_header("Location", f"{hub.cdn}/lfs/{sha}?name={name}")
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("X-Linked-Etag", f'"{sha}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("ETag", f'"{git_blob_sha1(pointer.encode())}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._send_bytes(data, send_body, fault, {"X-Repo-Commit": repo.commit, "ETag": f'"{git_blob_sha1(data)}"'})

        def _cdn(self, send_body: bool, fault: str | int | None) -> None:
            match = re.fullmatch(r"/lfs/([0-9a-f]{64})", urlsplit(self.path).path)
            data = hub._lfs_blob(match[1]) if match else None
            if data is None:
                self._error(404, "NotFound", "no such object")
                return
            self._send_bytes(data, send_body, fault, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"'})

        def _send_bytes(self, data: bytes, send_body: bool, fault: str | int | None, extra: dict[str, str]) -> None:
            """The file's bytes, from the ``Range`` start if asked, with the queued fault applied."""
            if isinstance(fault, int):
                self._error(fault, "Injected", f"injected HTTP {fault}")
                return
            if fault == "corrupt":
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            range_header = self.headers.get("Range")
            if range_header:
                start = int(re.fullmatch(r"bytes=(\d+)-", range_header)[1])  # type: ignore[index]
                if start >= len(data):
                    self._error(416, "RangeNotSatisfiable", "range past the end")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if not send_body:
                return
            if fault == "cut":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def running_hub() -> Iterator[FakeHub]:
    """A started :class:`FakeHub` on two free loopback ports, shut down on exit."""
    hub = FakeHub()
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, name)) for name in ("hub", "cdn")]
    hub.endpoint, hub.cdn = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
    # A short poll interval: shutdown() waits up to one interval per server.
    threads = [threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        yield hub
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
