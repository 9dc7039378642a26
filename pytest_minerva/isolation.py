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
* **Isolation** (``--minerva-isolate``). The engine runs in a worker process
  (:class:`IsolatedBackend`); a segfault or abort there fails the one test that was
  running with :class:`WorkerCrashed`, naming the signal and the worker's last stderr
  lines, and the next call starts a fresh worker. Without isolation a hang is
  interrupted by ``SIGALRM`` where the engine returns to Python; a hang inside native
  code that never returns ends the whole process after a grace period, with a message
  and every thread's traceback, so a CI job fails instead of stalling.

The worker speaks length-prefixed JSON over its stdin and stdout; arrays travel as raw
bytes with a dtype from a short allowlist and a shape. Nothing is ever unpickled, so a
worker that a hostile model file has subverted cannot run code in the test process
through the channel.

Isolation is off by default, because it is slow where this suite spends its time:
every load starts a worker that imports the engine again. Measured on a shared 2-core
CPU (``python -m pytest_minerva.isolation --measure BACKEND PATH``, medians of 3), a
load costs 0.31 s here vs 1.2 s in a worker for llama_cpp on SmolLM2-135M Q4_1, 0.03 s
vs 7.3 s for transformers and 0.01 s vs 4.8 s for mlx_lm on tiny-random-llama, and
each call pays ~0.3 ms more for the round trip; ``suites/test_backend_contract.py`` on
tiny-random-llama took 221 s isolated against 76 s in process (90 tests pass both
ways). ``minerva bench`` also reads RSS and engine counters in its own process. And
crashes are rare: every model file is checked by :func:`pytest_minerva.formats.verify`
before an engine sees it, and of 80 mutated SmolLM2 headers loaded into llama.cpp in
workers, none crashed it (it refused the 77 that ``verify`` refused and ran the 3 that
passed). Turn isolation on in CI for new engines, GPU runs (a CUDA OOM can abort the
process) and models you did not check yourself. In process, the guards add about
12 µs per generated token.
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
        "that does not return to Python; ending the process so the job does not hang (run with "
        "--minerva-isolate to fail only this test). Tracebacks of every thread:\n"
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
    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.backends.base import LoadOptions

    spec_data = request["spec"]
    for key in ("formats", "devices", "requires", "distributions"):
        spec_data[key] = tuple(spec_data[key])
    spec = BackendSpec(**spec_data)
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


def worker_main() -> int:
    """The worker: load one backend, then answer requests until told to stop or stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the engine prints must not corrupt the protocol on stdout
    sys.stdout = sys.stderr
    faulthandler.enable()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    stdin = sys.stdin.buffer
    backend: Backend | None = None
    while True:
        message = read_message_blocking(stdin)
        if message is None:
            break
        header, _payload = message
        if header.get("op") == "stop":
            break
        try:
            if header.get("op") == "load":
                backend = _build_in_worker(header)
                forwarded = [m for m in FORWARDED_METHODS if callable(getattr(backend, m, None))]
                value = {
                    "name": backend.name,
                    "device": backend.device,
                    "vocab_size": backend.vocab_size,
                    "bos_id": backend.bos_id,
                    "eos_id": backend.eos_id,
                    "forwarded": forwarded,
                    "pid": os.getpid(),
                }
                write_message(out, {"ok": True, "value": value})
            elif backend is None:
                write_message(out, {"ok": False, "error": {"type": "ProtocolError", "message": "no backend loaded"}})
            else:
                _serve(backend, header, out)
        except Exception as exc:
            write_message(out, _error_reply(exc))
    if backend is not None:
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
    """One worker process and the reader of its stderr."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from pytest_minerva.isolation import worker_main; raise SystemExit(worker_main())"],
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

    def kill(self) -> None:
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


class IsolatedBackend:
    """A :class:`~pytest_minerva.backends.base.Backend` whose engine runs in a worker process.

    The worker is started and the model loaded when this object is built. If the worker
    dies or overruns a limit, the call raises :class:`WorkerCrashed` or
    :class:`BackendTimeout`, and the next call starts a new worker and loads again.
    Token timestamps are the worker's ``time.perf_counter()`` readings, which use the
    same system-wide monotonic clock as this process on Linux and macOS.
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
    ) -> None:
        self.spec = spec
        self.artifact = artifact
        self.options = options
        self.limits = limits
        self.needed = needed
        self.what = what or f"{spec.name} on {options.device} with {artifact.id}"
        self.name = spec.name
        self.device = options.device
        self._worker: _Worker | None = None
        self._loaded: dict[str, Any] = {}
        self.restarts = -1
        self._start()

    @property
    def pid(self) -> int | None:
        return self._worker.proc.pid if self._worker is not None else None

    def _start(self) -> None:
        self._worker = _Worker(worker_environment())
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
            if self._worker is not None:
                self._worker.stop()
                self._worker = None
            raise

    def _ensure(self) -> _Worker:
        if self._worker is None:
            self._start()
        assert self._worker is not None
        return self._worker

    def _died(self, worker: _Worker, step: str) -> WorkerCrashed | OutOfMemory:
        try:
            code = worker.proc.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            code = worker.proc.wait()
        tail = worker.stderr_tail()
        worker.kill()
        self._worker = None
        detail = ""
        if code == -signal.SIGKILL and self.needed is not None:
            free = available_memory(self.device)
            shown = f", {human_bytes(free)} is free now" if free is not None else ""
            detail = f"; the load needs about {human_bytes(self.needed)}{shown}"
        how = describe_exit(code, detail)
        lines = "\n".join(f"    {line}" for line in tail) or "    (nothing)"
        return WorkerCrashed(
            f"{self.what}: the worker process (pid {worker.proc.pid}) {how} during {step}; the next call "
            f"starts a new worker.\n  last lines of its stderr:\n{lines}"
        )

    def _timed_out(self, worker: _Worker, step: str, seconds: float) -> BackendTimeout:
        if hasattr(signal, "SIGUSR1") and worker.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(worker.proc.pid, signal.SIGUSR1)  # the worker's faulthandler prints where it is stuck
            time.sleep(0.5)
        worker.kill()
        tail = worker.stderr_tail()
        self._worker = None
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
            worker.kill()
            self._worker = None
            raise
        if message is None:
            raise self._died(worker, step)
        header, payload = message
        if not header.get("ok"):
            self._raise_remote(header.get("error") or {}, step)
        return header, payload

    def _call(self, request: dict[str, Any], step: str, seconds: float) -> dict[str, Any]:
        worker = self._ensure() if request["op"] != "load" else self._worker
        assert worker is not None
        try:
            worker.send(request)
        except (BrokenPipeError, OSError):
            raise self._died(worker, step) from None
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
        from pytest_minerva.backends.base import TokenEvent

        step = f"generating {request.max_tokens} tokens"
        seconds = self.limits.step_s(len(request.prompt_ids) + request.max_tokens)
        deadline = time.monotonic() + seconds
        worker = self._ensure()
        payload = dataclasses.asdict(request)
        payload["prompt_ids"] = [int(t) for t in request.prompt_ids]
        try:
            worker.send({"op": "stream", "request": payload})
        except (BrokenPipeError, OSError):
            raise self._died(worker, step) from None
        done = False
        try:
            while True:
                header, _ = self._receive(worker, step, deadline, seconds)
                if header.get("done"):
                    done = True
                    return
                event = header["event"]
                yield TokenEvent(
                    int(event["index"]),
                    int(event["token"]),
                    str(event["text"]),
                    float(event["time_s"]),
                    event.get("finish_reason"),
                )
        finally:
            if not done and self._worker is worker:
                self._drain_stream(worker, step, deadline, seconds)

    def _drain_stream(self, worker: _Worker, step: str, deadline: float, seconds: float) -> None:
        """The caller stopped early: read the rest of the events so the next reply lines up."""
        with contextlib.suppress(MinervaError):
            while not self._receive(worker, step, deadline, seconds)[0].get("done"):
                pass

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
        if self._worker is not None:
            worker, self._worker = self._worker, None
            worker.stop()


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
