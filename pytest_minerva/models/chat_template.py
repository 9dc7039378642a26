"""Render a model's chat template safely.

A GGUF file carries its chat template as Jinja source in ``tokenizer.chat_template``;
whoever made the file wrote it, so it is untrusted code. :func:`render_chat_template`
renders it in a child process (:mod:`pytest_minerva.models.template_worker`), in Jinja's
:class:`~jinja2.sandbox.ImmutableSandboxedEnvironment`, and adds what the sandbox leaves open:

* reaching an underscore attribute (``''.__class__``, ``x.__globals__``) raises at
  once instead of rendering as an empty string, so an attack fails loudly;
* the globals are only what chat templates use (``range``, ``dict``, ``namespace``,
  ``raise_exception``, ``strftime_now``): no ``cycler``, ``joiner`` or ``lipsum``,
  and ``namespace`` refuses underscore names;
* ``*`` and ``**`` refuse results that would be huge, and the output is capped at
  :data:`MAX_OUTPUT_CHARS`;
* the messages are rebuilt from plain JSON types, so the template sees no object
  with methods;
* one rendering gets :data:`MAX_SECONDS` of wall-clock time, after which the child is
  killed from outside (one long C-level operation such as comparing two huge lists
  cannot outlast it, and this holds on any thread), the same in CPU time from the kernel
  (so a child whose parent died stops too), and :data:`RENDER_MEMORY_BYTES` of address
  space beyond what the child holds after start-up. The CPU limit needs :mod:`resource`
  (POSIX) and the memory limit Linux; elsewhere the wall-clock limit still holds.

The child is started once per process, on first use, and again after one was killed; it
gets only the environment variables the interpreter needs, and exits when its stdin closes.
Renderings from several threads take turns. Every failure is a :class:`ChatTemplateError`
whose message is one line naming the template's source and the problem.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError

__all__ = [
    "MAX_OUTPUT_CHARS",
    "MAX_SECONDS",
    "POLL_PIPES",
    "RENDERER",
    "RENDER_MEMORY_BYTES",
    "STARTUP_SECONDS",
    "ChatTemplateError",
    "TemplateRenderer",
    "gguf_chat_template",
    "render_chat_template",
]

#: Longest rendered prompt accepted.
MAX_OUTPUT_CHARS = 1 << 20
#: Longest time one rendering may take.
MAX_SECONDS = 5.0
#: Address space one rendering may add to the child's (about 25 MiB after start-up, CPython
#: 3.11 with Jinja 3.1 on x86-64 Linux). A prompt is at most MAX_OUTPUT_CHARS (4 MiB of UTF-8,
#: 12 MiB as the JSON reply), so this is many times what a real template needs, yet a template
#: cannot grow a string to 2**28 characters or pad one to 3e8.
RENDER_MEMORY_BYTES = 256 << 20
#: How long a new child may take to import Jinja and say it is ready (a loaded CI machine).
STARTUP_SECONDS = 60.0
#: The child's reply escapes every character as ASCII JSON: at most 12 bytes (a surrogate pair).
_REPLY_BYTES_PER_CHAR = 12
#: What the child's interpreter needs from the environment (PYTHONPATH is set to the parent's
#: import path) and what ``strftime_now`` reads; nothing else, so no token or key reaches it.
_KEPT_ENVIRONMENT = ("PYTHONHOME", "LD_LIBRARY_PATH", "SYSTEMROOT", "TZ")
_WORKER = "pytest_minerva.models.template_worker"
#: Whether the deadline is kept by polling the child's stdout (POSIX) or by a timer thread that
#: kills the child (Windows, where pipes cannot be polled; slower by a thread start per rendering).
POLL_PIPES = hasattr(select, "poll")


class ChatTemplateError(MinervaError):
    """A chat template is invalid, unsafe, or failed to render."""


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ChatTemplateError("the messages nest more than 32 levels deep")
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {str(_plain(k, depth + 1)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    raise ChatTemplateError(f"message values must be JSON types, got {type(value).__name__}")


def _child_environment(root: str) -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEPT_ENVIRONMENT if name in os.environ}
    paths = [root, *(os.path.abspath(p) for p in sys.path if p and os.path.isdir(p))]
    env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if os.pathsep not in p)
    return env


class TemplateRenderer:
    """The child process that renders chat templates, started on first use and restarted after a
    failure that ended it. :func:`render_chat_template` uses :data:`RENDERER`; one is enough per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closing_registered = False
        self._inherited: list[subprocess.Popen[bytes]] = []
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget_after_fork)

    @property
    def pid(self) -> int | None:
        """The running child's process id, or ``None`` before the first rendering or after a failure."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def render(
        self, template: str, context: dict[str, Any], *, source: str, max_seconds: float, max_output_chars: int
    ) -> str:
        """``template`` rendered for the plain-JSON ``context``; :class:`ChatTemplateError` on any failure."""
        request = {
            "template": template,
            "context": context,
            "max_output_chars": max_output_chars,
            "max_seconds": max_seconds,
        }
        data = json.dumps(request, ensure_ascii=True).encode("ascii") + b"\n"
        with self._lock:
            proc = self._running(source)
            try:
                reply = self._exchange(proc, data, max_seconds, _REPLY_BYTES_PER_CHAR * max_output_chars + 4096)
            except BaseException:
                self._discard()
                raise
            if isinstance(reply, dict) and isinstance(reply.get("text"), str):
                return str(reply["text"])
            if not isinstance(reply, dict) or reply.get("error") in (None, "memory"):
                self._discard()  # killed, ended, or not to be trusted again
        raise ChatTemplateError(f"{source}: {_problem(reply, max_seconds, max_output_chars)}")

    def close(self) -> None:
        """Stop the child (it is started again by the next rendering)."""
        if self._lock.acquire(timeout=1.0):
            try:
                self._discard(ask_first=True)
            finally:
                self._lock.release()
        else:
            self._discard()

    def _running(self, source: str) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        self._discard()
        root = str(Path(__file__).resolve().parents[2])
        command = [sys.executable, "-P", "-s", "-m", _WORKER, str(RENDER_MEMORY_BYTES)]
        try:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=root,
                env=_child_environment(root),
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise ChatTemplateError(f"{source}: cannot start the chat-template renderer: {exc}") from None
        self._proc = proc
        if not self._closing_registered:
            atexit.register(self.close)
            self._closing_registered = True
        try:
            ready = self._exchange(proc, b"", STARTUP_SECONDS, 1 << 16)
        except BaseException:
            self._discard()
            raise
        if isinstance(ready, dict) and ready.get("ready") is True:
            return proc
        self._discard()
        if ready == "deadline":
            problem = f"it was not ready within {STARTUP_SECONDS:g} s"
        elif isinstance(ready, dict):
            problem = str(ready.get("error", "it sent a malformed greeting"))
        else:
            problem = f"it {ready}"
        raise ChatTemplateError(f"{source}: the chat-template renderer did not start: {problem}")

    def _exchange(self, proc: subprocess.Popen[bytes], data: bytes, seconds: float, max_bytes: int) -> Any:
        """Send ``data`` and read one reply line within ``seconds``: the reply, or what went wrong
        (a string: ``deadline``, ``too large``, ``not JSON``, or how the child ended)."""
        talk = _talk_polling if POLL_PIPES else _talk_with_timer
        try:
            line, expired = talk(proc, data, seconds, max_bytes)
        except (OSError, ValueError):
            line, expired = b"", False
        if line.endswith(b"\n"):
            try:
                return json.loads(line)
            except ValueError:
                return "not JSON"
        if expired:
            return "deadline"
        if len(line) > max_bytes:
            return "too large"
        return self._ended(proc)

    def _ended(self, proc: subprocess.Popen[bytes]) -> str:
        try:
            returncode = proc.wait(5.0)
        except subprocess.TimeoutExpired:
            return "closed its output but did not exit"
        cpu_signal = getattr(signal, "SIGXCPU", None)
        if cpu_signal is not None and returncode == -cpu_signal:
            return "cpu"
        from pytest_minerva.guards.process import describe_exit

        tail = b""
        if proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                tail = proc.stderr.read(1 << 16)
        last = next((ln for ln in reversed(tail.decode("utf-8", "replace").splitlines()) if ln.strip()), "")
        how = ("was " if returncode < 0 else "") + describe_exit(returncode)
        return how + (f": {last.strip()[:300]}" if last else "")

    def _discard(self, ask_first: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if ask_first and proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1.0)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()

    def _forget_after_fork(self) -> None:
        # The child belongs to the process that started it; this fork starts its own.
        self._lock = threading.Lock()
        proc, self._proc = self._proc, None
        if proc is not None:
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
            self._inherited.append(proc)


def _talk_polling(proc: subprocess.Popen[bytes], data: bytes, seconds: float, max_bytes: int) -> tuple[bytes, bool]:
    """Write ``data``, then read up to a newline, ``max_bytes`` or the deadline: what was read, and
    whether the deadline passed. It reads the pipe's descriptor, never through a buffer."""
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + seconds
    if data:
        proc.stdin.write(data)
        proc.stdin.flush()
    fd = proc.stdout.fileno()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    got = bytearray()
    while len(got) <= max_bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(got), True
        if not poller.poll(max(1, math.ceil(left * 1000))):
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        got += chunk
        end = got.find(b"\n", len(got) - len(chunk))
        if end >= 0:
            return bytes(got[: end + 1]), False
    return bytes(got), False


def _talk_with_timer(proc: subprocess.Popen[bytes], data: bytes, seconds: float, max_bytes: int) -> tuple[bytes, bool]:
    """:func:`_talk_polling` where pipes cannot be polled (Windows): a timer kills the child at the deadline."""
    assert proc.stdin is not None and proc.stdout is not None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(OSError):
            proc.kill()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        if data:
            proc.stdin.write(data)
            proc.stdin.flush()
        line = proc.stdout.readline(max_bytes + 1)
    finally:
        timer.cancel()
        timer.join()
    return line, expired.is_set() and not line.endswith(b"\n")


def _problem(reply: Any, max_seconds: float, max_output_chars: int) -> str:
    """What went wrong, for a reply that is not a rendered prompt (see :meth:`TemplateRenderer._exchange`)."""
    if not isinstance(reply, dict):
        kind, detail, line = reply, "", None
    else:
        kind, detail, line = reply.get("error"), reply.get("detail", ""), reply.get("line")
    problems = {
        "deadline": f"rendering took more than {max_seconds:g} s",
        "cpu": f"rendering used more than {max_seconds:g} s of CPU time",
        "memory": f"rendering needed more than {RENDER_MEMORY_BYTES >> 20} MiB of memory",
        "output": f"the rendered prompt passed {max_output_chars} characters",
        "too large": f"the rendered prompt passed {max_output_chars} characters",
        "unsafe": f"refused unsafe template code: {detail}",
        "syntax": f"not a valid Jinja template: {detail} (line {line})",
        "raised": f"the template raised an error: {detail}",
        "recursion": "the template nests or recurses too deeply",
        "failed": f"rendering failed: {detail}",
        "not JSON": "the chat-template renderer sent a reply that is not JSON",
        None: "the chat-template renderer sent a malformed reply",
    }
    if isinstance(kind, str | None) and kind in problems:
        return problems[kind]
    return f"the chat-template renderer died while rendering: it {kind}"


#: The renderer :func:`render_chat_template` uses.
RENDERER = TemplateRenderer()


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    source: str = "chat template",
    bos_token: str = "",
    eos_token: str = "",
    **variables: Any,
) -> str:
    """Render ``template`` for ``messages`` (``[{"role": ..., "content": ...}]``) in the sandbox.

    ``variables`` (``tools``, ``date_string``...) are passed to the template as plain
    JSON values. ``source`` names the template in error messages (e.g. the GGUF path).
    Time, memory and output are bounded as the module says, from any thread.
    """
    context = _plain(
        {
            "messages": list(messages),
            "add_generation_prompt": bool(add_generation_prompt),
            "bos_token": bos_token,
            "eos_token": eos_token,
            **variables,
        }
    )
    if not isinstance(template, str):
        raise ChatTemplateError(f"{source}: the chat template is a {type(template).__name__}, not a string")
    return RENDERER.render(template, context, source=source, max_seconds=MAX_SECONDS, max_output_chars=MAX_OUTPUT_CHARS)


def gguf_chat_template(path: str | Path) -> str | None:
    """The ``tokenizer.chat_template`` of a GGUF file, or ``None`` when it has none.

    The file is read by :func:`pytest_minerva.formats.verify`, so a malformed file
    raises :class:`~pytest_minerva.errors.FormatError` and nothing else.
    """
    from pytest_minerva.errors import FormatError
    from pytest_minerva.formats import verify

    summary = verify(path)
    value = summary.metadata.get("tokenizer.chat_template")
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormatError(path, f"tokenizer.chat_template is a {type(value).__name__}, not a string it can keep")
    return value
