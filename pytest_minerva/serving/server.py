"""Start ``llama_cpp.server`` (from ``llama-cpp-python[server]``) on loopback, and stop it.

:class:`LlamaCppServer` is a context manager: it picks a free port on 127.0.0.1,
starts ``python -m llama_cpp.server`` on a GGUF file in a child process, waits until
``GET /v1/models`` answers (with a deadline, and failing early if the process dies),
and on exit stops it with SIGTERM, then SIGKILL after a grace period. The child
also dies with this process on Linux (``PR_SET_PDEATHSIG``), so a killed test run
leaves no server behind.

Settings that change what is measured are explicit: ``threads`` (decode and
prefill), ``n_ctx``, ``logits_all`` (llama_cpp.server's default is True, which makes
every prefill compute logits for all prompt positions; it is needed only for
logprobs, so it is off here unless asked for), and ``interrupt_requests=False``
(the server's default True cancels a streaming request whenever another arrives,
which would turn a concurrency benchmark into a cancellation benchmark).

The child gets a small allow-listed environment: llama_cpp.server reads its
settings from environment variables too (``MODEL``, ``PORT``, ``API_KEY``...), so the
caller's environment must not leak in. An API key is passed as ``API_KEY`` in the
child's environment, never on its command line; it is checked before the child
starts (:meth:`~pytest_minerva.serving.client.ApiKey.from_env`), and the environment
that holds it is built inside the call that starts the child, so no local that a
traceback can show holds it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_minerva.errors import BackendUnavailable, MinervaError
from pytest_minerva.serving.client import ApiKey, Endpoint, Timeouts, request_json

#: The K and V cache type of the llama_cpp.server this module starts: llama.cpp's default,
#: which the server keeps (it is not passed --type_k / --type_v).
SERVER_KV_CACHE_DTYPE = "f16"

#: Import names llama_cpp.server needs (``llama-cpp-python[server]``).
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_ENV_KEEP = ("PATH", "HOME", "LANG", "TMPDIR", "TEMP", "TMP", "SYSTEMROOT", "LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")
_ENV_PREFIXES = ("LC_", "GGML_", "CUDA_", "HIP_", "OMP_")
_PORT_TRIES = 3


def server_unavailable_reason() -> str | None:
    """Why llama_cpp.server cannot start here (a missing module), or None. Imports nothing."""
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (
        f"llama_cpp.server needs {', '.join(missing)}, which is not installed; "
        "install it with pip install 'pytest-minerva[serve]' (llama-cpp-python[server])"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (the server retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LlamaCppServer:
    """``python -m llama_cpp.server`` serving one GGUF file on ``host`` (loopback by default).

    ``api_key_env`` names an environment variable of *this* process whose value becomes
    the server's API key; :attr:`endpoint` carries the same name, so clients send it.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        n_ctx: int = 2048,
        threads: int = 1,
        threads_batch: int | None = None,
        logits_all: bool = False,
        flash_attn: bool = False,
        api_key_env: str | None = None,
        host: str = "127.0.0.1",
        startup_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise MinervaError(f"{self.model_path}: no such model file to serve")
        self.n_ctx = n_ctx
        self.threads = threads
        self.threads_batch = threads_batch or threads
        self.logits_all = logits_all
        self.flash_attn = flash_attn
        self.api_key_env = api_key_env
        self.host = host
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self.startup_s: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._start_error = ""

    def __repr__(self) -> str:
        state = f"running on {self.url}" if self.running else "stopped"
        return f"LlamaCppServer({self.model_path.name!r}, threads={self.threads}, {state})"

    @property
    def url(self) -> str:
        if self.port is None:
            raise MinervaError("llama_cpp.server has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.url, self.api_key_env)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def command(self, port: int) -> list[str]:
        """The child's command line (it never contains the API key)."""

        def flag(value: bool) -> str:
            return "True" if value else "False"

        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--host",
            self.host,
            "--port",
            str(port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_batch",
            str(min(self.n_ctx, 512)),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads_batch),
            "--n_gpu_layers",
            "0",
            "--logits_all",
            flag(self.logits_all),
            "--flash_attn",
            flag(self.flash_attn),
            "--interrupt_requests",
            "False",
            "--cache",
            "False",
            "--verbose",
            "False",
            *self.extra_args,
        ]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP or k.startswith(_ENV_PREFIXES)}
        env["PYTHONUNBUFFERED"] = "1"
        if self.api_key_env is not None:
            env["API_KEY"] = ApiKey.from_env(self.api_key_env).reveal()
        return env

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the server's output (stdout and stderr), for error messages."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.strip().splitlines()[-lines:])

    def _last_line(self) -> str:
        tail = [line for line in self.log_tail(40).splitlines() if line.strip()]
        return tail[-1].strip() if tail else "(no output)"

    def start(self) -> LlamaCppServer:
        """Start the server and wait until it answers; raises :class:`MinervaError` if it cannot."""
        if self.running:
            return self
        reason = server_unavailable_reason()
        if reason:
            raise BackendUnavailable(reason)
        if self.api_key_env is not None:
            ApiKey.from_env(self.api_key_env)
        for attempt in range(_PORT_TRIES):
            port = free_port(self.host)
            if self._launch(port):
                return self
            in_use = "address already in use" in self.log_tail(40).lower()
            self._cleanup()
            if not in_use or attempt == _PORT_TRIES - 1:
                break
        raise MinervaError(self._start_error)

    def _launch(self, port: int) -> bool:
        fd, log_name = tempfile.mkstemp(prefix="minerva-llama-server-", suffix=".log")
        self._log_path = Path(log_name)
        started = time.perf_counter()
        with os.fdopen(fd, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    self.command(port),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self._environment(),
                    preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                )
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                # subprocess's frames hold the child's environment: report the error, not its traceback
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                self._start_error = f"cannot start llama_cpp.server on {self.model_path.name}: {why}"
                return False
        self.port = port
        deadline = started + self.startup_timeout_s
        probe = Timeouts(connect_s=1.0, read_s=5.0, total_s=5.0)
        while True:
            code = self._process.poll()
            if code is not None:
                self._start_error = (
                    f"llama_cpp.server on {self.model_path.name} exited with status {code} before it was ready: "
                    f"{self._last_line()}"
                )
                return False
            try:
                request_json(self.endpoint, "GET", "/v1/models", timeouts=probe)
            except MinervaError:
                if time.perf_counter() > deadline:
                    self._start_error = (
                        f"llama_cpp.server on {self.model_path.name} did not answer within "
                        f"{self.startup_timeout_s:g} s; last output: {self._last_line()}"
                    )
                    return False
                time.sleep(0.1)
                continue
            self.startup_s = time.perf_counter() - started
            return True

    def _cleanup(self) -> int | None:
        code = None
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(self.stop_timeout_s)
            code = process.returncode
        return code

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout_s``); returns its exit status."""
        code = self._cleanup()
        if self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None
        return code

    def rss_bytes(self) -> int | None:
        """The server process's resident set size now, or None when it is not running."""
        if not self.running or self.pid is None:
            return None
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return None

    def info(self) -> dict[str, Any]:
        """What identifies this server run (no secrets)."""
        return {
            "server": "llama_cpp.server",
            "model_path": str(self.model_path),
            "url": self.url if self.port is not None else None,
            "threads": self.threads,
            "threads_batch": self.threads_batch,
            "n_ctx": self.n_ctx,
            "logits_all": self.logits_all,
            "flash_attn": self.flash_attn,
            "interrupt_requests": False,
            "startup_s": self.startup_s,
            "auth": self.api_key_env is not None,
        }

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._cleanup()


@contextlib.contextmanager
def serve_gguf(model_path: str | Path, **options: Any) -> Iterator[LlamaCppServer]:
    """``with serve_gguf(path, threads=1) as server: ... server.endpoint ...``; stops on any exit."""
    server = LlamaCppServer(model_path, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def served_tokenizers(endpoint: Endpoint, artifact: Any) -> tuple[Callable[[str], list[int]] | None, Any, str]:
    """(tokenize, detokenize, source): the server's /extras endpoints, else llama.cpp on the GGUF."""

    def tokenize(text: str) -> list[int]:
        answer = request_json(endpoint, "POST", "/extras/tokenize", {"input": text})
        tokens = answer.get("tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise MinervaError(f"{endpoint.url}/extras/tokenize answered without a list of token ids")
        return tokens

    def detokenize(ids: Sequence[int]) -> str:
        answer = request_json(endpoint, "POST", "/extras/detokenize", {"tokens": list(ids)})
        if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
            raise MinervaError(f"{endpoint.url}/extras/detokenize answered without a text")
        return str(answer["text"])

    try:
        tokenize("a")
        return tokenize, detokenize, "server /extras/tokenize"
    except MinervaError:
        pass
    if artifact is None:
        return None, None, "none (prompts cut by words, tokens counted by chunks)"
    import llama_cpp

    vocab = llama_cpp.Llama(str(artifact.path), vocab_only=True, verbose=False)
    return (
        lambda text: list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)),
        lambda ids: vocab.detokenize(list(ids)).decode("utf-8", errors="replace"),
        "llama.cpp on the local GGUF",
    )
