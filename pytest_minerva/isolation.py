"""Keep a crashing, hanging or memory-hungry engine from taking the test session down.

Three guards, applied by :meth:`pytest_minerva.session.MinervaSession.build_backend` to every
backend it loads:

* **Time limits.** Each load and each ``logits``, ``incremental_logits`` or whole
  ``stream`` call has a limit (:class:`Limits`): ``--minerva-timeout`` when given,
  otherwise one scaled to the artifact's size. Past it the step fails with
  :class:`BackendTimeout`.
* **Memory.** Before a load, the memory the load needs (estimated from the file size
  and the backend) is compared with what the device has free; when it cannot fit, the
  case is skipped with both figures (:class:`NotEnoughMemory`). An out-of-memory error
  raised by the engine becomes :class:`OutOfMemory`, a failure carrying the same figures.
* **Isolation** (on by default for every engine that runs native code: the
  ``BackendSpec.native`` flag). The engine runs in a worker process
  (:class:`IsolatedBackend`), one per engine and device in a session
  (:class:`WorkerPool`), which loads every model that engine is asked for, so the engine
  is imported once per session, not once per load. A segfault or abort there fails the
  one test that was running with :class:`WorkerCrashed`, naming the signal and the
  worker's last stderr lines; the next call starts a fresh worker and loads again, and
  after :data:`MAX_CONSECUTIVE_CRASHES` crashes in a row the backend is given up on. The
  terminal summary lists the engines that crashed and points to ``minerva doctor``.
  ``--minerva-no-isolate`` loads engines in the test process instead (faster loads, but a
  crash ends the session); ``--minerva-isolate`` isolates pure-Python backends too.
  Without isolation a hang is interrupted by ``SIGALRM`` where the engine returns to
  Python; a hang inside native code that never returns ends the whole process after a
  grace period, with a message and every thread's traceback, so a CI job fails instead
  of stalling.

The worker speaks length-prefixed JSON over its stdin and stdout; arrays travel as raw
bytes with a dtype from a short allowlist and a shape. Nothing is ever unpickled, so a
worker that a hostile model file has subverted cannot run code in the test process
through the channel.

Why on by default: a new engine build, a new CPU or a new driver crashing is what users
run this to find out (llama.cpp's ``-march=native`` build segfaults at the first decode
of every Q4_0/Q4_1/Q8_0 model on Xeons with AMX), so the default must survive it. The
cost is one engine import per worker and a pipe round trip per call (~0.3 ms, plus
copying the logits); the README gives the measured cost on the main job and on
``make test``. ``python -m pytest_minerva.isolation --measure BACKEND PATH`` measures a
load and a call both ways.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import math
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pytest_minerva.errors import BackendUnavailable, MinervaError

if TYPE_CHECKING:
    import numpy as np

    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.backends.base import Backend, GenerationRequest, LoadOptions, TokenEvent
    from pytest_minerva.resolve import ResolvedArtifact

__all__ = [
    "BackendTimeout",
    "GuardedBackend",
    "IsolatedBackend",
    "Limits",
    "NotEnoughMemory",
    "OutOfMemory",
    "WorkerCrashed",
    "WorkerPool",
    "WorkerProcess",
    "available_memory",
    "check_memory",
    "load_guarded",
    "needed_memory",
    "time_limit",
]


class WorkerCrashed(MinervaError):
    """The worker process running a backend died (signal or exit) in the middle of a step."""


class BackendTimeout(MinervaError):
    """A backend load or generation ran past its time limit."""


class OutOfMemory(MinervaError):
    """The engine ran out of memory; the message gives what was needed and what was free."""


class NotEnoughMemory(BackendUnavailable):
    """A load would not fit in the device's free memory; the case is skipped with the figures."""


#: Lines of worker stderr kept for crash and timeout messages.
STDERR_LINES = 20
#: How long a worker that was told to stop, or whose stdout closed, gets to exit.
EXIT_WAIT_S = 5.0
#: Optional backend methods an :class:`IsolatedBackend` forwards (they take and return JSON).
FORWARDED_METHODS = ("perf_counters", "reset_perf_counters", "kv_cache_bytes", "generate_batch")
_ARRAY_DTYPES = ("float32", "float16", "float64", "int32", "int64", "uint8")
_MAX_HEADER = 64 << 20
_GIB = 1 << 30


def human_bytes(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / (1 << 20):.0f} MiB"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Time limits for one loaded backend.

    With an explicit ``--minerva-timeout`` every load and every step gets that many
    seconds. Without it they scale with the artifact: a load gets 120 s plus 1 s per
    25 MB, a step (a ``logits`` call or a whole generation) 60 s plus, per token it
    processes, 1 s per 100 MB of weights, about a hundred times what a CPU needs.
    """

    load_s: float
    base_s: float
    per_token_s: float = 0.0
    explicit: bool = False

    @classmethod
    def for_size(cls, size_bytes: int, timeout_s: float | None) -> Limits:
        if timeout_s is not None:
            return cls(load_s=timeout_s, base_s=timeout_s, explicit=True)
        return cls(load_s=120.0 + size_bytes / 25e6, base_s=60.0, per_token_s=size_bytes / 100e6)

    def step_s(self, tokens: int) -> float:
        return self.base_s + self.per_token_s * max(tokens, 0)

    def source(self) -> str:
        return "--minerva-timeout" if self.explicit else "the default for the model's size; set --minerva-timeout"


def artifact_bytes(path: Path) -> int:
    """Size of a model file, or of the files directly inside a model directory."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


# -- memory ------------------------------------------------------------------------------


def available_memory(device: str) -> int | None:
    """Free memory in bytes on ``device`` now, or ``None`` where it cannot be read."""
    if device == "cuda":
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return int(free)
        from pytest_minerva.hardware import detect_cuda

        gpus, _how = detect_cuda()
        frees = [g.memory_free_mb for g in gpus if g.memory_free_mb is not None]
        return max(frees) * (1 << 20) if frees else None
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def needed_memory(backend_name: str, artifact: ResolvedArtifact, options: LoadOptions) -> tuple[int, str]:
    """Bytes a load needs, and how that was estimated (for the message).

    transformers holds every weight in ``options.dtype`` (a GGUF is dequantized), so it
    needs parameters x dtype size; other engines hold the file as it is. Both get 10 %
    plus 256 MiB for the KV cache, activations and the engine itself.
    """
    size = artifact_bytes(artifact.path)
    parameters = getattr(artifact.summary, "parameter_count", 0) or 0
    if backend_name == "transformers" and parameters:
        width = _DTYPE_BYTES.get(options.dtype, 4)
        weights = parameters * width
        how = f"{parameters:,} parameters x {width} bytes ({options.dtype})"
    else:
        weights = size
        how = f"the {human_bytes(size)} of weights"
    return int(weights * 1.1) + (256 << 20), how + " + 10% + 256 MiB"


def check_memory(what: str, backend_name: str, artifact: ResolvedArtifact, options: LoadOptions) -> int:
    """Raise :class:`NotEnoughMemory` when the load cannot fit; return the bytes needed."""
    needed, how = needed_memory(backend_name, artifact, options)
    free = available_memory(options.device)
    if free is not None and needed > free:
        raise NotEnoughMemory(
            f"{what}: needs about {human_bytes(needed)} of {options.device} memory ({how}), "
            f"but only {human_bytes(free)} is free"
        )
    return needed


def is_out_of_memory(exc: BaseException) -> bool:
    """True for MemoryError and the engines' own out-of-memory errors (torch, CUDA, Metal)."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ in ("OutOfMemoryError", "OutOfMemory"):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate" in text


def out_of_memory(what: str, step: str, needed: int | None, device: str, detail: str) -> OutOfMemory:
    free = available_memory(device)
    figures = []
    if needed is not None:
        figures.append(f"needed about {human_bytes(needed)}")
    if free is not None:
        figures.append(f"{human_bytes(free)} of {device} memory is free now")
    shown = " ".join(detail.split())[:200]
    return OutOfMemory(f"{what}: ran out of memory during {step} ({'; '.join(figures) or 'no figures'}): {shown}")


# -- in-process time limits -----------------------------------------------------------------


_REPORT_FD: int | None = None


def keep_stderr() -> None:
    """Remember where stderr points now, so a hard exit during a test (when pytest has
    redirected fd 2 into a capture file) still reaches the terminal or CI log."""
    global _REPORT_FD
    if _REPORT_FD is None:
        with contextlib.suppress(OSError):
            _REPORT_FD = os.dup(2)


def _hard_exit(what: str, seconds: float) -> None:
    message = (
        f"\npytest-minerva: {what} is still running {seconds:.0f} s past its time limit, inside native code "
        "that does not return to Python; ending the process so the job does not hang (this engine ran in "
        "process; without --minerva-no-isolate it runs in a worker and only this test fails). Tracebacks of "
        "every thread:\n"
    )
    fd = _REPORT_FD if _REPORT_FD is not None else 2
    os.write(fd, message.encode())
    faulthandler.dump_traceback(file=fd, all_threads=True)
    os._exit(70)


class _Watchdog:
    """One daemon thread per process that ends it when an armed deadline passes unanswered.

    Arming happens around every engine step (each generated token), so the thread is
    woken only when a new deadline is earlier than the one it already sleeps towards.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: tuple[float, str, float] | None = None
        self._sleeping_until: float | None = None
        self._thread: threading.Thread | None = None

    def _set(self, armed: tuple[float, str, float] | None) -> None:
        self._armed = armed
        if armed is not None and (self._sleeping_until is None or armed[0] < self._sleeping_until):
            self._cond.notify()

    def arm(self, deadline: float, what: str, grace: float) -> tuple[float, str, float] | None:
        with self._cond:
            previous = self._armed
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="minerva-watchdog", daemon=True)
                self._thread.start()
            self._set((deadline, what, grace))
            return previous

    def restore(self, previous: tuple[float, str, float] | None) -> None:
        with self._cond:
            self._set(previous)

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._armed is None:
                    self._sleeping_until = None
                    self._cond.wait()
                    continue
                deadline, what, grace = self._armed
                left = deadline - time.monotonic()
                if left <= 0:
                    _hard_exit(what, grace)
                self._sleeping_until = deadline
                self._cond.wait(left)


_WATCHDOG = _Watchdog()


def _alarm(signum: int, frame: Any) -> None:
    raise _Expired


class _Expired(BaseException):
    """Raised by SIGALRM: a BaseException so the engine's ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str, *, hint: str = "--minerva-timeout", hard: bool = True) -> Iterator[None]:
    """Run the body within ``seconds`` or raise :class:`BackendTimeout`.

    ``SIGALRM`` interrupts the body where it runs Python code (main thread only). With
    ``hard``, if native code holds on past ``min(seconds, 30)`` more, the process ends
    (see the module docs).
    """
    if not math.isfinite(seconds):
        yield
        return
    seconds = max(seconds, 0.001)
    grace = min(seconds, 30.0)
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    started = time.monotonic()
    previous_watch = _WATCHDOG.arm(started + seconds + grace, what, grace) if hard else None
    previous_handler: Any = None
    previous_timer = (0.0, 0.0)
    if use_alarm:
        previous_handler = signal.signal(signal.SIGALRM, _alarm)
        previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except _Expired:
        raise BackendTimeout(f"{what} did not finish within {seconds:.0f} s ({hint})") from None
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_handler)
            if previous_timer[0] > 0:
                left = previous_timer[0] - (time.monotonic() - started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), previous_timer[1])
        if hard:
            _WATCHDOG.restore(previous_watch)


@contextlib.contextmanager
def _translated(what: str, step: str, needed: int | None, device: str) -> Iterator[None]:
    try:
        yield
    except MinervaError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise out_of_memory(what, step, needed, device, f"{type(exc).__name__}: {exc}") from exc
        raise


def load_guarded(
    what: str,
    build: Callable[[], Backend],
    limits: Limits,
    *,
    needed: int | None = None,
    device: str = "cpu",
) -> GuardedBackend:
    """Build a backend in this process under the load limit; the result guards each step."""
    with time_limit(limits.load_s, f"{what}: loading", hint=limits.source()), _translated(what, "load", needed, device):
        inner = build()
    return GuardedBackend(inner, what, limits, needed=needed)


class GuardedBackend:
    """A backend in this process whose ``logits``, ``incremental_logits`` and ``stream``
    run under time limits and report out-of-memory with figures.

    Other attributes (engine handles, counters) are read from the wrapped backend.
    After a timeout the engine's state is unknown, so every later call fails at once.
    """

    def __init__(self, inner: Backend, what: str, limits: Limits, *, needed: int | None = None) -> None:
        self.inner = inner
        self.what = what
        self.limits = limits
        self.needed = needed
        self.name = inner.name
        self.device = inner.device
        self._broken: str | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    @property
    def bos_id(self) -> int | None:
        return self.inner.bos_id

    @property
    def eos_id(self) -> int | None:
        return self.inner.eos_id

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self.inner.tokenize(text, add_bos=add_bos)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.inner.detokenize(ids)

    @contextlib.contextmanager
    def _step(self, step: str, seconds: float) -> Iterator[None]:
        if self._broken:
            raise BackendTimeout(self._broken)
        try:
            with (
                time_limit(seconds, f"{self.what}: {step}", hint=self.limits.source()),
                _translated(self.what, step, self.needed, self.device),
            ):
                yield
        except BackendTimeout as exc:
            self._broken = f"{self.what}: unusable after an earlier timeout ({exc})"
            raise

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        with self._step(f"logits of {len(ids)} tokens", self.limits.step_s(len(ids))):
            return self.inner.logits(ids)

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        with self._step(f"incremental logits of {len(ids)} tokens", self.limits.step_s(len(ids))):
            return self.inner.incremental_logits(ids, prefix_len)

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        step = f"generating {request.max_tokens} tokens"
        deadline = time.monotonic() + self.limits.step_s(len(request.prompt_ids) + request.max_tokens)
        with self._step(step, deadline - time.monotonic()):
            events = self.inner.stream(request)
        while True:
            with self._step(step, deadline - time.monotonic()):
                try:
                    event = next(events)
                except StopIteration:
                    return
            yield event

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def close(self) -> None:
        self.inner.close()


# -- the wire protocol --------------------------------------------------------------------

_PREFIX = struct.Struct(">IQ")


def encode_array(array: Any) -> tuple[dict[str, Any], memoryview]:
    import numpy as np

    arr = np.ascontiguousarray(array)
    if arr.dtype.name not in _ARRAY_DTYPES:
        arr = arr.astype(np.float32)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape)}, arr.data.cast("B")


def decode_array(meta: Any, payload: bytearray) -> np.ndarray:
    """Rebuild an array from its ``{"dtype", "shape"}`` and raw bytes; refuse anything inconsistent."""
    import numpy as np

    if not isinstance(meta, dict) or meta.get("dtype") not in _ARRAY_DTYPES:
        raise ProtocolError(f"array with a dtype outside {_ARRAY_DTYPES}: {str(meta)[:100]}")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"array with a bad shape {str(shape)[:100]}")
    dtype = np.dtype(meta["dtype"])
    if math.prod(shape) * dtype.itemsize != len(payload):
        raise ProtocolError(f"array of shape {shape} {dtype} does not match its {len(payload)} bytes")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


class ProtocolError(MinervaError):
    """The worker sent something that is not a well-formed message."""


def write_message(out: IO[bytes], header: dict[str, Any], payload: memoryview | bytes = b"") -> None:
    body = json.dumps(header, allow_nan=True).encode()
    out.write(_PREFIX.pack(len(body), len(payload)))
    out.write(body)
    if len(payload):
        out.write(payload)
    out.flush()


def read_message_blocking(stream: IO[bytes]) -> tuple[dict[str, Any], bytearray] | None:
    """One message from a blocking stream (the worker's stdin); ``None`` at end of file."""
    prefix = stream.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        return None
    header_len, payload_len = _PREFIX.unpack(prefix)
    header = json.loads(stream.read(header_len))
    payload = bytearray(stream.read(payload_len)) if payload_len else bytearray()
    return header, payload


# -- the worker side -----------------------------------------------------------------------


def _artifact_from_json(data: dict[str, Any]) -> ResolvedArtifact:
    from pytest_minerva.resolve import ResolvedArtifact

    parent = data.pop("derived_from", None)
    return ResolvedArtifact(
        model=data["model"],
        format=data["format"],
        quant=data["quant"],
        path=Path(data["path"]),
        source=data["source"],
        architecture=data["architecture"],
        sha256=data.get("sha256"),
        derived_from=_artifact_from_json(parent) if parent else None,
        detail=data.get("detail", ""),
        extra=data.get("extra") or {},
    )


def artifact_to_json(artifact: ResolvedArtifact) -> dict[str, Any]:
    """The fields a worker needs to rebuild ``artifact`` (its summary stays behind)."""
    return {
        "model": artifact.model,
        "format": artifact.format,
        "quant": artifact.quant,
        "path": str(artifact.path),
        "source": artifact.source,
        "architecture": artifact.architecture,
        "sha256": artifact.sha256,
        "derived_from": artifact_to_json(artifact.derived_from) if artifact.derived_from else None,
        "detail": artifact.detail,
        "extra": json.loads(json.dumps(artifact.extra, default=str)),
    }


def spec_to_json(spec: BackendSpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    data["options"] = json.loads(json.dumps(data["options"], default=str))
    return data


def _build_in_worker(request: dict[str, Any]) -> Backend:
    from pytest_minerva.backends.base import LoadOptions

    spec = _spec_from_json(request["spec"])
    artifact = _artifact_from_json(request["artifact"])
    options = LoadOptions(**request["options"])
    import importlib.metadata

    if importlib.metadata.entry_points(group="pytest_minerva"):
        from pytest_minerva.cli import standalone_hook

        hook: Any = standalone_hook()
        built = hook.pytest_minerva_make_backend(spec=spec, artifact=artifact, options=options)
        if built is not None:
            return built  # type: ignore[no-any-return]
    return spec.build(artifact, options)


def _spec_from_json(data: dict[str, Any]) -> BackendSpec:
    from pytest_minerva.backends import BackendSpec

    data = dict(data)
    for key in ("formats", "devices", "requires", "distributions"):
        data[key] = tuple(data[key])
    return BackendSpec(**data)


def _facts_in_worker(request: dict[str, Any]) -> dict[str, Any]:
    """The backend class's ``build_facts()`` (how its engine was built), ``{}`` where it has none."""
    factory = _spec_from_json(request["spec"]).factory()
    facts = getattr(factory, "build_facts", None)
    value = facts() if callable(facts) else {}
    return json.loads(json.dumps(value, default=str)) if isinstance(value, dict) else {"facts": str(value)}


def _error_reply(exc: BaseException) -> dict[str, Any]:
    from pytest_minerva import errors

    kind = type(exc).__name__
    known = kind if isinstance(exc, MinervaError) and hasattr(errors, kind) else None
    category = "oom" if is_out_of_memory(exc) else "unavailable" if isinstance(exc, BackendUnavailable) else "error"
    tail = traceback.format_exception(exc)[-6:]
    return {
        "ok": False,
        "error": {"type": kind, "known": known, "category": category, "message": str(exc), "traceback": tail},
    }


def _event_json(event: TokenEvent) -> dict[str, Any]:
    return {
        "index": event.index,
        "token": event.token,
        "text": event.text,
        "time_s": event.time_s,
        "finish_reason": event.finish_reason,
    }


def _serve(backend: Backend, header: dict[str, Any], out: IO[bytes]) -> None:
    from pytest_minerva.backends.base import GenerationRequest

    op = header["op"]
    if op in ("logits", "incremental_logits"):
        args = [header["ids"]] + ([header["prefix_len"]] if op == "incremental_logits" else [])
        meta, payload = encode_array(getattr(backend, op)(*args))
        write_message(out, {"ok": True, "array": meta}, payload)
    elif op == "stream":
        request = GenerationRequest(**{**header["request"], "prompt_ids": tuple(header["request"]["prompt_ids"])})
        for event in backend.stream(request):
            write_message(out, {"ok": True, "event": _event_json(event)})
        write_message(out, {"ok": True, "done": True})
    elif op == "tokenize":
        write_message(out, {"ok": True, "value": backend.tokenize(header["text"], add_bos=header["add_bos"])})
    elif op == "detokenize":
        write_message(out, {"ok": True, "value": backend.detokenize(header["ids"])})
    elif op == "info":
        write_message(out, {"ok": True, "value": json.loads(json.dumps(backend.info(), default=str))})
    elif op == "call" and header["name"] in FORWARDED_METHODS:
        value = getattr(backend, header["name"])(*header.get("args", []), **header.get("kwargs", {}))
        write_message(out, {"ok": True, "value": json.loads(json.dumps(value, default=str))})
    else:
        write_message(out, {"ok": False, "error": {"type": "ProtocolError", "message": f"unknown op {op!r}"}})


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _loaded_json(backend: Backend, handle: int) -> dict[str, Any]:
    return {
        "handle": handle,
        "name": backend.name,
        "device": backend.device,
        "vocab_size": backend.vocab_size,
        "bos_id": backend.bos_id,
        "eos_id": backend.eos_id,
        "forwarded": [m for m in FORWARDED_METHODS if callable(getattr(backend, m, None))],
        "pid": os.getpid(),
    }


def worker_main() -> int:
    """The worker: load backends on request (each gets a handle), answer requests for them until
    told to stop or stdin closes. One worker serves every model of one engine in a session, so
    the engine is imported once, not once per load."""
    out = protocol_output()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stdin = sys.stdin.buffer
    backends: dict[int, Backend] = {}
    next_handle = 1
    while True:
        message = read_message_blocking(stdin)
        if message is None:
            break
        header, _payload = message
        op = header.get("op")
        if op == "stop":
            break
        try:
            if op == "facts":
                write_message(out, {"ok": True, "value": _facts_in_worker(header)})
                continue
            if op == "load":
                built = _build_in_worker(header)
                backends[next_handle] = built
                write_message(out, {"ok": True, "value": _loaded_json(built, next_handle)})
                next_handle += 1
                continue
            handle = header.get("handle")
            if handle is None and len(backends) == 1:
                handle = next(iter(backends))
            backend = backends.get(handle) if isinstance(handle, int) else None
            if backend is None:
                write_message(
                    out, {"ok": False, "error": {"type": "ProtocolError", "message": f"no backend loaded as {handle}"}}
                )
            elif op == "unload":
                del backends[handle]  # type: ignore[arg-type]
                backend.close()
                write_message(out, {"ok": True, "value": None})
            else:
                _serve(backend, header, out)
        except Exception as exc:
            write_message(out, _error_reply(exc))
    for backend in backends.values():
        with contextlib.suppress(Exception):
            backend.close()
    return 0


# -- the parent side -------------------------------------------------------------------------


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


class _Worker:
    """One worker process and the reader of its stderr; ``entry`` is the ``module:function``
    it runs (:func:`worker_main` unless another protocol is spoken, like ``minerva bench``'s)."""

    def __init__(self, env: dict[str, str], entry: str = "pytest_minerva.isolation:worker_main") -> None:
        module, _, function = entry.partition(":")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from {module} import {function}; raise SystemExit({function}())"],
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
        prefix = self._read_exactly(_PREFIX.size, deadline)
        if prefix is None:
            return None
        header_len, payload_len = _PREFIX.unpack(prefix)
        if header_len > _MAX_HEADER:
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


WorkerProcess = _Worker


def protocol_output() -> IO[bytes]:
    """In a child process: the stream that carries the protocol (the original stdout), after
    pointing fd 1 at stderr so whatever an engine prints cannot corrupt it."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    faulthandler.enable()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    return out


def query_worker(request: dict[str, Any], what: str, seconds: float) -> Any:
    """Send one request to a fresh worker process and return its ``value``: for questions that
    need the engine imported (and so may crash) but no model loaded."""
    worker = _Worker(worker_environment())
    try:
        worker.send(request)
        try:
            message = worker.receive(time.monotonic() + seconds)
        except TimeoutError:
            raise BackendTimeout(f"{what}: no answer within {seconds:.0f} s") from None
        if message is None:
            code = worker.exit_code()
            lines = "\n".join(f"    {line}" for line in worker.stderr_tail()) or "    (nothing)"
            raise WorkerCrashed(
                f"{what}: the worker process (pid {worker.proc.pid}) {describe_exit(code)}.\n"
                f"  last lines of its stderr:\n{lines}"
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
        self._workers: dict[tuple[str, str], _Worker] = {}
        self.started = 0
        #: Backend name -> the first line of its first crash in this pool (for the summary).
        self.crashes: dict[str, str] = {}

    def get(self, key: tuple[str, str]) -> _Worker:
        worker = self._workers.get(key)
        if worker is None or not worker.alive:
            worker = _Worker(worker_environment())
            self._workers[key] = worker
            self.started += 1
        return worker

    def discard(self, key: tuple[str, str], worker: _Worker) -> None:
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
    call fails at once with the last crash. Token timestamps are the worker's
    ``time.perf_counter()`` readings, which use the same system-wide monotonic clock as
    this process on Linux and macOS.
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
        self._worker: _Worker | None = None
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

    def _ensure(self) -> _Worker:
        if self._worker is None or not self._worker.alive:
            self._start()
        assert self._worker is not None
        return self._worker

    def _lost(self, worker: _Worker) -> None:
        worker.kill()
        self._pool.discard(self._key, worker)
        if self._worker is worker:
            self._worker = None

    def _died(self, worker: _Worker, step: str) -> WorkerCrashed | OutOfMemory:
        code = worker.exit_code()
        tail = worker.stderr_tail()
        self._lost(worker)
        detail = ""
        if code == -signal.SIGKILL and self.needed is not None:
            free = available_memory(self.device)
            shown = f", {human_bytes(free)} is free now" if free is not None else ""
            detail = f"; the load needs about {human_bytes(self.needed)}{shown}"
        how = describe_exit(code, detail)
        lines = "\n".join(f"    {line}" for line in tail) or "    (nothing)"
        self.crashes += 1
        again = (
            "the next call starts a new worker"
            if self.crashes < MAX_CONSECUTIVE_CRASHES
            else f"after {self.crashes} crashes in a row it is not tried again in this session"
        )
        error = WorkerCrashed(
            f"{self.what}: the worker process (pid {worker.proc.pid}) {how} during {step}; {again}. "
            f"Check the engine with: minerva doctor --backend {self.name}\n  last lines of its stderr:\n{lines}"
        )
        if self.crashes >= MAX_CONSECUTIVE_CRASHES:
            self._given_up = error
        self._pool.crashes.setdefault(self.name, f"{self.what}: {how} during {step}")
        return error

    def _timed_out(self, worker: _Worker, step: str, seconds: float) -> BackendTimeout:
        if hasattr(signal, "SIGUSR1") and worker.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(worker.proc.pid, signal.SIGUSR1)  # the worker's faulthandler prints where it is stuck
            time.sleep(0.5)
        self._lost(worker)
        tail = worker.stderr_tail()
        lines = "\n".join(f"    {line}" for line in tail) or "    (nothing)"
        return BackendTimeout(
            f"{self.what}: {step} did not finish within {seconds:.0f} s ({self.limits.source()}); the worker "
            f"(pid {worker.proc.pid}) was killed and the next call starts a new one.\n"
            f"  last lines of its stderr:\n{lines}"
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
        where = "".join(error.get("traceback") or []).rstrip()
        raise MinervaError(f"{self.what}: {step} raised {error.get('type')}: {message}\n{where}")

    def _receive(self, worker: _Worker, step: str, deadline: float, seconds: float) -> tuple[dict[str, Any], bytearray]:
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

    def _send(self, worker: _Worker, request: dict[str, Any], step: str) -> None:
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
        events: list[TokenEvent] = []
        try:
            self._collect_stream(request, events)
        except BaseException:
            yield from events
            raise
        yield from events

    def _collect_stream(self, request: GenerationRequest, events: list[TokenEvent]) -> None:
        from pytest_minerva.backends.base import TokenEvent

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
            event = header["event"]
            events.append(
                TokenEvent(
                    int(event["index"]),
                    int(event["token"]),
                    str(event["text"]),
                    float(event["time_s"]),
                    event.get("finish_reason"),
                )
            )

    def info(self) -> dict[str, Any]:
        value = self._call({"op": "info"}, "info", self.limits.base_s)["value"]
        info = dict(value) if isinstance(value, dict) else {"info": value}
        info["isolated"] = {"worker_pid": self.pid, "restarts": self.restarts}
        return info

    def __getattr__(self, name: str) -> Any:
        if name in FORWARDED_METHODS and name in self.__dict__.get("_loaded", {}).get("forwarded", ()):

            def forward(*args: Any, **kwargs: Any) -> Any:
                request = {"op": "call", "name": name, "args": list(args), "kwargs": kwargs}
                return self._call(request, name, self.limits.base_s)["value"]

            return forward
        raise AttributeError(name)

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker.alive and self._handle is not None and not self._own_pool:
            # Free this model in the shared worker; the worker itself serves the others on.
            with contextlib.suppress(MinervaError, OSError, ValueError):
                self._send(worker, {"op": "unload"}, "unloading")
                self._receive(worker, "unloading", time.monotonic() + self.limits.base_s, self.limits.base_s)
        if self._own_pool:
            self._pool.close()


def measure(backend: str, path: Path, repeats: int = 3) -> dict[str, float]:
    """Median seconds: a load here (imports already done) vs starting a worker and loading
    there, and one 64-token ``logits`` and one ``tokenize`` call each way."""
    from pytest_minerva.backends import builtin_registry
    from pytest_minerva.backends.base import LoadOptions
    from pytest_minerva.formats import detect_format
    from pytest_minerva.resolve import ResolvedArtifact

    spec = builtin_registry().get(backend)
    artifact = ResolvedArtifact("m", detect_format(path), None, path, "explicit", "llama")
    options = LoadOptions(threads=1, n_ctx=256)
    limits = Limits.for_size(artifact_bytes(path), None)
    spec.build(artifact, options).close()  # imports happen once per process, not per load
    figures: dict[str, list[float]] = {}

    def timed(key: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        figures.setdefault(key, []).append(time.perf_counter() - started)
        return result

    for _ in range(repeats):
        local = timed("load_here_s", lambda: spec.build(artifact, options))
        remote = timed("load_in_worker_s", lambda: IsolatedBackend(spec, artifact, options, limits))
        ids = local.tokenize("The quick brown fox jumps over the lazy dog. " * 8)[:64]
        for where, loaded in (("here", local), ("in_worker", remote)):
            loaded.logits(ids)
            timed(f"logits_{len(ids)}_{where}_s", lambda b=loaded, i=ids: b.logits(i))  # type: ignore[misc]
            timed(f"tokenize_{where}_s", lambda b=loaded: b.tokenize("hello"))  # type: ignore[misc]
        local.close()
        remote.close()
    return {key: sorted(values)[len(values) // 2] for key, values in figures.items()}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3])), indent=2))
    else:
        raise SystemExit(worker_main())
