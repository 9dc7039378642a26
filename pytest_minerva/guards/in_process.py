"""The guards for a backend loaded in this process (``--minerva-no-isolate``, or a backend
that is not ``native``): a time limit on the load and on each step, and out-of-memory errors
with figures. A crash here ends the process; see :mod:`pytest_minerva.guards.isolated` for
the engines that run in a worker process.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pytest_minerva.backends.base import capability_methods
from pytest_minerva.errors import MinervaError
from pytest_minerva.guards.limits import BackendTimeout, Limits, time_limit
from pytest_minerva.guards.memory import is_out_of_memory, out_of_memory

if TYPE_CHECKING:
    import numpy as np

    from pytest_minerva.backends.base import Backend, GenerationRequest, TokenEvent

__all__ = ["GuardedBackend", "load_guarded"]


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
        # The optional capabilities the engine has, as attributes of this object, so that
        # isinstance(guarded, PerfCounters) and the rest hold exactly when they hold for the
        # engine (Python 3.12's runtime Protocol checks do not consult __getattr__).
        for method in (*capability_methods(), "device_memory"):
            found = getattr(inner, method, None)
            if callable(found):
                setattr(self, method, found)

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
