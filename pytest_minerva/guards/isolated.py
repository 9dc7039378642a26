"""Engines in a worker process, so a crash fails one test instead of ending the session.

Isolation is on by default for every engine that runs native code (the
``BackendSpec.native`` flag). The engine runs in a worker process
(:class:`IsolatedBackend`), one per engine and device in a session (:class:`WorkerPool`),
which loads every model that engine is asked for, so the engine is imported once per
session, not once per load. A segfault or abort there fails the one test that was running
with :class:`WorkerCrashed`, naming the signal and the worker's last stderr lines; the next
call starts a fresh worker and loads again, and after :data:`MAX_CONSECUTIVE_CRASHES`
crashes in a row the backend is given up on. The terminal summary lists the engines that
crashed and points to ``minerva doctor``. ``--minerva-no-isolate`` loads engines in the
test process instead (faster loads, but a crash ends the session:
:mod:`pytest_minerva.guards.in_process`); ``--minerva-isolate`` isolates pure-Python
backends too.

Why on by default: a new engine build, a new CPU or a new driver crashing is what users
run this to find out (llama.cpp's ``-march=native`` build segfaults at the first decode
of every Q4_0/Q4_1/Q8_0 model on Xeons with AMX), so the default must survive it. The
cost is one engine import per worker and a pipe round trip per call (~0.3 ms, plus
copying the logits); the README gives the measured cost on the main job and on
``make test``. ``python -m pytest_minerva.guards --measure BACKEND PATH`` measures a
load and a call both ways.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pytest_minerva.errors import BackendUnavailable, EscapedLines, MinervaError
from pytest_minerva.guards.limits import BackendTimeout, Limits
from pytest_minerva.guards.memory import OutOfMemory, killed_detail, out_of_memory
from pytest_minerva.guards.process import WorkerProcess, describe_exit, worker_environment
from pytest_minerva.guards.protocol import (
    FORWARDED_METHODS,
    ProtocolError,
    artifact_to_json,
    decode_array,
    event_from_json,
    result_from_json,
    spec_to_json,
)

if TYPE_CHECKING:
    import numpy as np

    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.backends.base import GenerationRequest, LoadOptions, TokenEvent
    from pytest_minerva.models.resolve import ResolvedArtifact

__all__ = ["MAX_CONSECUTIVE_CRASHES", "IsolatedBackend", "WorkerCrashed", "WorkerPool", "query_worker"]


class WorkerCrashed(MinervaError):
    """The worker process running a backend died (signal or exit) in the middle of a step."""


def query_worker(request: dict[str, Any], what: str, seconds: float) -> Any:
    """Send one request to a fresh worker process and return its ``value``: for questions that
    need the engine imported (and so may crash) but no model loaded."""
    worker = WorkerProcess(worker_environment())
    try:
        worker.send(request)
        try:
            message = worker.receive(time.monotonic() + seconds)
        except TimeoutError:
            raise BackendTimeout(f"{what}: no answer within {seconds:.0f} s") from None
        if message is None:
            code = worker.exit_code()
            raise WorkerCrashed(
                EscapedLines.of(
                    f"{what}: the worker process (pid {worker.proc.pid}) {describe_exit(code)}.",
                    "  last lines of its stderr:",
                    quoted=worker.stderr_tail(),
                )
            )
        header, _payload = message
        if not header.get("ok"):
            error = header.get("error") or {}
            cls = BackendUnavailable if error.get("category") == "unavailable" else MinervaError
            raise cls(f"{what}: {error.get('type')}: {error.get('message')}")
        return header.get("value")
    finally:
        worker.stop()


class WorkerPool:
    """The worker processes of one session: one per engine and device, shared by every model
    that engine loads, so the engine is imported once per session rather than once per load.

    A worker that dies (or is killed at a time limit) is dropped; the backends it held
    notice at their next call and load again in a fresh one.
    """

    def __init__(self) -> None:
        self._workers: dict[tuple[str, str], WorkerProcess] = {}
        self.started = 0
        #: Backend name -> the first line of its first crash in this pool (for the summary).
        self.crashes: dict[str, str] = {}

    def get(self, key: tuple[str, str]) -> WorkerProcess:
        worker = self._workers.get(key)
        if worker is None or not worker.alive:
            worker = WorkerProcess(worker_environment())
            self._workers[key] = worker
            self.started += 1
        return worker

    def discard(self, key: tuple[str, str], worker: WorkerProcess) -> None:
        if self._workers.get(key) is worker:
            del self._workers[key]

    def close(self) -> None:
        while self._workers:
            _, worker = self._workers.popitem()
            worker.stop()


#: After this many crashes in a row of one backend, later calls fail at once with the last one.
MAX_CONSECUTIVE_CRASHES = 3


class IsolatedBackend:
    """A :class:`~pytest_minerva.backends.base.Backend` whose engine runs in a worker process.

    The model is loaded in the ``pool``'s worker for this engine and device (a private
    worker when no pool is given) when this object is built. If the worker dies or
    overruns a limit, the call raises :class:`WorkerCrashed` or :class:`BackendTimeout`,
    and the next call starts a new worker and loads again; after
    :data:`MAX_CONSECUTIVE_CRASHES` crashes in a row the backend is given up on and each
    call fails at once with the last crash. Token timestamps, and the harness's receipts of
    them (:meth:`stream_received`), are the worker's ``time.perf_counter()`` readings, which
    use the same system-wide monotonic clock as this process on Linux and macOS.
    """

    def __init__(
        self,
        spec: BackendSpec,
        artifact: ResolvedArtifact,
        options: LoadOptions,
        limits: Limits,
        *,
        what: str | None = None,
        needed: int | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        self.spec = spec
        self.artifact = artifact
        self.options = options
        self.limits = limits
        self.needed = needed
        self.what = what or f"{spec.name} on {options.device} with {artifact.id}"
        self.name = spec.name
        self.device = options.device
        self._own_pool = pool is None
        self._pool = pool if pool is not None else WorkerPool()
        self._key = (spec.name, options.device)
        self._worker: WorkerProcess | None = None
        self._handle: int | None = None
        self._loaded: dict[str, Any] = {}
        self.restarts = -1
        self.crashes = 0
        self._given_up: MinervaError | None = None
        self._start()

    @property
    def pid(self) -> int | None:
        return self._worker.proc.pid if self._worker is not None else None

    def _start(self) -> None:
        if self._given_up is not None:
            raise type(self._given_up)(
                f"{self.what}: not tried again after {self.crashes} crashes in a row; the last: {self._given_up}"
            )
        self._worker = self._pool.get(self._key)
        self._handle = None
        self.restarts += 1
        request = {
            "op": "load",
            "spec": spec_to_json(self.spec),
            "artifact": artifact_to_json(self.artifact),
            "options": json.loads(json.dumps(dataclasses.asdict(self.options), default=str)),
        }
        try:
            self._loaded = self._call(request, "loading", self.limits.load_s)["value"]
        except BaseException:
            self._worker = None
            raise
        self._handle = int(self._loaded["handle"])
        self._bind_forwarded()

    def _ensure(self) -> WorkerProcess:
        if self._worker is None or not self._worker.alive:
            self._start()
        assert self._worker is not None
        return self._worker

    def _lost(self, worker: WorkerProcess) -> None:
        worker.kill()
        self._pool.discard(self._key, worker)
        if self._worker is worker:
            self._worker = None

    def _died(self, worker: WorkerProcess, step: str) -> WorkerCrashed | OutOfMemory:
        code = worker.exit_code()
        tail = worker.stderr_tail()
        self._lost(worker)
        detail = killed_detail(self.needed, self.device) if code == -signal.SIGKILL else ""
        how = describe_exit(code, detail)
        self.crashes += 1
        again = (
            "the next call starts a new worker"
            if self.crashes < MAX_CONSECUTIVE_CRASHES
            else f"after {self.crashes} crashes in a row it is not tried again in this session"
        )
        error = WorkerCrashed(
            EscapedLines.of(
                f"{self.what}: the worker process (pid {worker.proc.pid}) {how} during {step}; {again}. "
                f"Check the engine with: minerva doctor --backend {self.name}",
                "  last lines of its stderr:",
                quoted=tail,
            )
        )
        if self.crashes >= MAX_CONSECUTIVE_CRASHES:
            self._given_up = error
        self._pool.crashes.setdefault(self.name, f"{self.what}: {how} during {step}")
        return error

    def _timed_out(self, worker: WorkerProcess, step: str, seconds: float) -> BackendTimeout:
        if hasattr(signal, "SIGUSR1") and worker.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(worker.proc.pid, signal.SIGUSR1)  # the worker's faulthandler prints where it is stuck
            time.sleep(0.5)
        self._lost(worker)
        tail = worker.stderr_tail()
        return BackendTimeout(
            EscapedLines.of(
                f"{self.what}: {step} did not finish within {seconds:.0f} s ({self.limits.source()}); the worker "
                f"(pid {worker.proc.pid}) was killed and the next call starts a new one.",
                "  last lines of its stderr:",
                quoted=tail,
            )
        )

    def _raise_remote(self, error: dict[str, Any], step: str) -> None:
        from pytest_minerva import errors

        message = str(error.get("message", ""))
        if error.get("category") == "oom":
            raise out_of_memory(self.what, step, self.needed, self.device, f"{error.get('type')}: {message}")
        known = error.get("known")
        cls = getattr(errors, known, None) if isinstance(known, str) else None
        if isinstance(cls, type) and issubclass(cls, MinervaError) and cls is not errors.FormatError:
            raise cls(message)
        if error.get("category") == "unavailable":
            raise BackendUnavailable(message)
        if known:
            raise MinervaError(message)
        frames = [line.strip() for line in "".join(error.get("traceback") or []).splitlines()]
        where = next((line for line in reversed(frames) if line.startswith("File ")), "")
        raise MinervaError(
            f"{self.what}: {step} raised {error.get('type')}: {message}" + (f" ({where})" if where else "")
        )

    def _receive(
        self, worker: WorkerProcess, step: str, deadline: float, seconds: float
    ) -> tuple[dict[str, Any], bytearray]:
        try:
            message = worker.receive(deadline)
        except TimeoutError:
            raise self._timed_out(worker, step, seconds) from None
        except ProtocolError:
            self._lost(worker)
            raise
        if message is None:
            raise self._died(worker, step)
        header, payload = message
        if not header.get("ok"):
            self._raise_remote(header.get("error") or {}, step)
        if step != "loading":
            self.crashes = 0  # a load that works says nothing about the step that crashed
        return header, payload

    def _send(self, worker: WorkerProcess, request: dict[str, Any], step: str) -> None:
        if request["op"] != "load":
            request = {**request, "handle": self._handle}
        try:
            worker.send(request)
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(worker, step) from None

    def _call(self, request: dict[str, Any], step: str, seconds: float) -> dict[str, Any]:
        worker = self._ensure() if request["op"] != "load" else self._worker
        assert worker is not None
        self._send(worker, request, step)
        header, payload = self._receive(worker, step, time.monotonic() + seconds, seconds)
        if "array" in header:
            header["value"] = decode_array(header["array"], payload)
        return header

    @property
    def vocab_size(self) -> int:
        return int(self._loaded["vocab_size"])

    @property
    def bos_id(self) -> int | None:
        return self._loaded.get("bos_id")

    @property
    def eos_id(self) -> int | None:
        return self._loaded.get("eos_id")

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        request = {"op": "tokenize", "text": text, "add_bos": add_bos}
        return list(self._call(request, "tokenize", self.limits.step_s(len(text)))["value"])

    def detokenize(self, ids: Sequence[int]) -> str:
        request = {"op": "detokenize", "ids": [int(i) for i in ids]}
        return str(self._call(request, "detokenize", self.limits.step_s(len(ids)))["value"])

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        request = {"op": "logits", "ids": [int(i) for i in ids]}
        return self._call(request, f"logits of {len(ids)} tokens", self.limits.step_s(len(ids)))["value"]  # type: ignore[no-any-return]

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        request = {"op": "incremental_logits", "ids": [int(i) for i in ids], "prefix_len": int(prefix_len)}
        step = f"incremental logits of {len(ids)} tokens"
        return self._call(request, step, self.limits.step_s(len(ids)))["value"]  # type: ignore[no-any-return]

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """The worker's events. The request is sent at the first ``next()``, and every event is
        read before the first is yielded: the worker is shared with other models, so a caller
        that interleaves two streams (or a stream and a ``logits`` call) must not read another
        request's replies. If the worker fails part way, the events it sent are yielded first,
        then the error is raised. Each event keeps the worker's own timestamp, taken when the
        engine produced the token."""
        received: list[tuple[TokenEvent, float]] = []
        try:
            self._collect_stream(request, received)
        except BaseException:
            yield from (event for event, _ in received)
            raise
        yield from (event for event, _ in received)

    def stream_received(self, request: GenerationRequest) -> list[tuple[TokenEvent, float]]:
        """Every event of a generation with the worker's receipt of it: the worker's own
        ``time.perf_counter()`` as the engine's generator handed the event over
        (:func:`pytest_minerva.timing.clock.receipts`), so the pipe's latency is in neither."""
        received: list[tuple[TokenEvent, float]] = []
        self._collect_stream(request, received)
        return received

    def _collect_stream(self, request: GenerationRequest, received: list[tuple[TokenEvent, float]]) -> None:
        step = f"generating {request.max_tokens} tokens"
        seconds = self.limits.step_s(len(request.prompt_ids) + request.max_tokens)
        deadline = time.monotonic() + seconds
        worker = self._ensure()
        payload = dataclasses.asdict(request)
        payload["prompt_ids"] = [int(t) for t in request.prompt_ids]
        self._send(worker, {"op": "stream", "request": payload}, step)
        while True:
            header, _ = self._receive(worker, step, deadline, seconds)
            if header.get("done"):
                return
            received_s = header.get("received_s")
            if isinstance(received_s, bool) or not isinstance(received_s, int | float):
                self._lost(worker)
                raise ProtocolError(f"a stream event without its receipt time: {str(header)[:100]}")
            received.append((event_from_json(header["event"]), float(received_s)))

    def info(self) -> dict[str, Any]:
        value = self._call({"op": "info"}, "info", self.limits.base_s)["value"]
        info = dict(value) if isinstance(value, dict) else {"info": value}
        info["isolated"] = {"worker_pid": self.pid, "restarts": self.restarts}
        return info

    def _bind_forwarded(self) -> None:
        """Give this object each optional capability method (:data:`FORWARDED_METHODS`) that the
        worker's backend has, and none of the others, so ``isinstance(backend, Capability)``
        answers as it would for the engine itself. They are instance attributes rather than
        ``__getattr__`` answers because Python 3.12's protocol checks look attributes up
        statically."""
        offered = set(self._loaded.get("forwarded", ()))
        for name in FORWARDED_METHODS:
            if name in offered:
                self.__dict__[name] = self._forwarder(name)
            else:
                self.__dict__.pop(name, None)

    def _forwarder(self, name: str) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            request = {"op": "call", "name": name, "args": list(args), "kwargs": kwargs}
            return result_from_json(self._call(request, name, self.limits.base_s))

        forward.__name__ = forward.__qualname__ = name
        return forward

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.alive and self._handle is not None and not self._own_pool:
            # Free this model in the shared worker; the worker itself serves the others on.
            with contextlib.suppress(MinervaError, OSError, ValueError):
                self._send(worker, {"op": "unload"}, "unloading")
                self._receive(worker, "unloading", time.monotonic() + self.limits.base_s, self.limits.base_s)
        if self._own_pool:
            self._pool.close()
