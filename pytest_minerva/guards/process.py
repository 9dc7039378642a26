"""A child process that speaks :mod:`pytest_minerva.guards.protocol`, seen from the parent.

:class:`WorkerProcess` starts one (running :func:`pytest_minerva.guards.worker.worker_main`
unless another ``module:function`` is named, like ``minerva bench``'s child), sends it
requests, reads its replies against a deadline and keeps the last lines of its stderr for
crash and timeout messages; :func:`describe_exit` says how it ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import IO, Any

from pytest_minerva.guards.protocol import MAX_HEADER, PREFIX, ProtocolError, write_message

__all__ = ["EXIT_WAIT_S", "STDERR_LINES", "WorkerProcess", "describe_exit", "worker_environment"]

#: Lines of worker stderr kept for crash and timeout messages.
STDERR_LINES = 20
#: How long a worker that was told to stop, or whose stdout closed, gets to exit.
EXIT_WAIT_S = 5.0


def describe_exit(returncode: int, oom_detail: str = "") -> str:
    """``killed by signal SIGSEGV (Segmentation fault)`` or ``exited with status 3``."""
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"killed by signal {-returncode}"
        text = signal.strsignal(sig) or ""
        if sig == signal.SIGKILL:
            text += f"; the kernel's out-of-memory killer sends this one{oom_detail}"
        return f"killed by signal {sig.name} ({text})"
    return f"exited with status {returncode}"


class WorkerProcess:
    """One worker process and the reader of its stderr; ``entry`` is the ``module:function`` it
    runs (:func:`~pytest_minerva.guards.worker.worker_main` unless another protocol is spoken,
    like ``minerva bench``'s)."""

    def __init__(
        self,
        env: dict[str, str],
        entry: str = "pytest_minerva.guards.worker:worker_main",
        *,
        python: str | None = None,
        cwd: str | None = None,
    ) -> None:
        module, _, function = entry.partition(":")
        self.proc = subprocess.Popen(
            [python or sys.executable, "-c", f"from {module} import {function}; raise SystemExit({function}())"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.stdin = self.proc.stdin
        self.stdout_fd = self.proc.stdout.fileno()
        self.stderr_lines: deque[str] = deque(maxlen=STDERR_LINES)
        self._stderr = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        self._stderr.start()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.stdout_fd, selectors.EVENT_READ)
        self.dead = False

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def _drain(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_lines.append(line[:300])

    def stderr_tail(self, wait: float = 0.3) -> list[str]:
        self._stderr.join(wait)
        return list(self.stderr_lines)

    def send(self, header: dict[str, Any]) -> None:
        write_message(self.stdin, header)

    def _read_exactly(self, n: int, deadline: float) -> bytearray | None:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise TimeoutError
            count = os.readv(self.stdout_fd, [view[got:]])
            if count == 0:
                return None
            got += count
        return buf

    def receive(self, deadline: float) -> tuple[dict[str, Any], bytearray] | None:
        """The next message, ``None`` if the worker closed its stdout; TimeoutError past ``deadline``."""
        prefix = self._read_exactly(PREFIX.size, deadline)
        if prefix is None:
            return None
        header_len, payload_len = PREFIX.unpack(prefix)
        if header_len > MAX_HEADER:
            raise ProtocolError(f"worker sent a {header_len}-byte header")
        body = self._read_exactly(header_len, deadline)
        payload = self._read_exactly(payload_len, deadline) if payload_len else bytearray()
        if body is None or payload is None:
            return None
        try:
            header = json.loads(body)
        except ValueError as exc:
            raise ProtocolError(f"worker sent a header that is not JSON: {exc}") from None
        if not isinstance(header, dict):
            raise ProtocolError("worker sent a header that is not a JSON object")
        return header, payload

    def exit_code(self) -> int:
        """The exit status of a worker whose stdout closed: waited for briefly, then killed."""
        try:
            return self.proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.dead = True
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(EXIT_WAIT_S)
        self._selector.close()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"op": "stop"})
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(EXIT_WAIT_S)
        self.kill()


def worker_environment() -> dict[str, str]:
    """The parent's environment, with its import path so the worker finds the same modules."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env
