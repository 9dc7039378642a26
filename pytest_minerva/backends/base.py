"""The small protocol every inference backend implements.

A backend loads one artifact on one device and can then tokenize, return full
logits for a token sequence, and stream a generation with a timestamp per token.
Adapters live beside this module; third parties register more through the
``pytest_minerva_register_backends`` hook (see :mod:`pytest_minerva.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, as the engine produced it.

    ``time_s`` is a ``time.perf_counter()`` reading taken when the token became
    available to the caller; ``index`` counts generated tokens from 0.
    """

    index: int
    token: int
    text: str
    time_s: float
    finish_reason: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``ignore_eos`` keeps generating past EOS so runs have equal length."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = True


@dataclass
class LoadOptions:
    """Knobs shared by all backends; adapters ignore what they cannot honour."""

    device: str = "cpu"
    threads: int | None = None
    n_ctx: int = 2048
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """An engine with one model loaded."""

    name: str
    device: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids for ``text``; special-token syntax in ``text`` is treated as plain text."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Full next-token logits, shape ``(len(ids), vocab_size)``, float32, one forward pass."""
        ...

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Like :meth:`logits`, but computed as a prefill of ``ids[:prefix_len]``
        followed by one decode step per remaining token, reusing the KV cache."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Generate ``request.max_tokens`` tokens (greedy when temperature is 0)."""
        ...

    def info(self) -> dict[str, Any]:
        """Engine name, version, device, threads and anything else that identifies the run."""
        ...

    def close(self) -> None: ...


# Optional capabilities. A backend has one when it defines the methods of its Protocol;
# code that uses one checks ``isinstance(backend, Capability)``, never the backend's name,
# and an isolated backend (pytest_minerva.guards) forwards exactly these methods.


@dataclass(frozen=True)
class BatchGeneration:
    """Greedy tokens for a batch of prompts, with one timestamp per decoding step.

    ``step_times_s[i]`` is the ``time.perf_counter()`` at which token ``i`` of every
    sequence was on the host; ``start_s`` is taken just before the prefill.
    """

    tokens: list[list[int]]
    start_s: float
    step_times_s: list[float]

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    @property
    def time_to_first_token_s(self) -> float:
        return self.step_times_s[0] - self.start_s

    @property
    def decode_tokens_per_s(self) -> float:
        """Generated tokens per second over all sequences, prefill excluded."""
        steps = len(self.step_times_s) - 1
        elapsed = self.step_times_s[-1] - self.step_times_s[0]
        return self.batch_size * steps / elapsed if steps and elapsed > 0 else float("nan")


@runtime_checkable
class PerfCounters(Protocol):
    """The engine's own timers (llama.cpp's ``llama_perf_context``), to cross-check the harness's clock."""

    def perf_counters(self, *, reset: bool = False) -> dict[str, Any]: ...

    def reset_perf_counters(self) -> None: ...


@runtime_checkable
class KvCacheBytes(Protocol):
    """Bytes the engine's KV cache holds now (for the KV-growth figure)."""

    def kv_cache_bytes(self) -> int: ...


@runtime_checkable
class BatchGenerator(Protocol):
    """Greedy generation for several prompts in one batch."""

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]: ...


@runtime_checkable
class TimedBatchGenerator(Protocol):
    """Batched generation with one timestamp per decoding step (serve-bench's batch sweep)."""

    def timed_generate_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> BatchGeneration: ...


@runtime_checkable
class DeviceMemoryCounters(Protocol):
    """The accelerator's memory counters, or None where the engine's memory is this process's
    RSS (torch on the CPU). Read in the process that runs the engine, so not forwarded."""

    def device_memory(self) -> DeviceMemory | None: ...


@dataclass(frozen=True)
class DeviceMemory:
    """Peak and current memory of an accelerator, read from the library the engine runs on
    (``torch.cuda``, ``mlx``): ``method`` names the call that reads the peak."""

    library: str
    method: str
    reset: Callable[[], None]
    peak: Callable[[], int]
    current: Callable[[], int]


@runtime_checkable
class BufferedStream(Protocol):
    """A stream that holds the whole response before its first event (an HTTP client that reads
    the response to the end, then yields). Its per-token timestamps cannot be checked against
    the harness's clock, so the reports label them adapter-reported, with this reason."""

    def stream_buffering(self) -> str:
        """Why, in a few words, for the reports: "reads the whole HTTP response before the first event"."""
        ...


#: The optional capabilities, by Protocol; their methods are what an isolated backend forwards.
CAPABILITIES: tuple[type, ...] = (PerfCounters, KvCacheBytes, BatchGenerator, TimedBatchGenerator, BufferedStream)


@runtime_checkable
class ReceivedStream(Protocol):
    """A stream whose events were received, in the process that runs the engine, by the
    harness's own code (:func:`pytest_minerva.timing.clock.receive`): each event with the
    ``time.perf_counter()`` at which the engine's generator handed it over. An isolated
    backend has this, so the harness holds the engine's timestamps against receipts taken in
    the worker rather than against the pipe's. Not a capability an engine declares."""

    def stream_received(self, request: GenerationRequest) -> list[tuple[TokenEvent, float]]: ...


def capability_methods() -> tuple[str, ...]:
    """The method names of :data:`CAPABILITIES`, in declaration order."""
    names: list[str] = []
    for protocol in CAPABILITIES:
        names.extend(name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_"))
    return tuple(names)
