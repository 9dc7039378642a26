"""Time limits for every load and every engine step.

Each load and each ``logits``, ``incremental_logits`` or whole ``stream`` call has a limit
(:class:`Limits`): ``--minerva-timeout`` when given, otherwise one scaled to the
artifact's size. Past it the step fails with :class:`BackendTimeout`. In this process the
limit is enforced by :func:`time_limit` (``SIGALRM``, backed by the
:mod:`~pytest_minerva.guards.watchdog` for native code that never returns); an isolated
backend enforces it by waiting on its worker (:mod:`pytest_minerva.guards.isolated`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from pytest_minerva.errors import MinervaError
from pytest_minerva.guards.watchdog import arm as arm_watchdog
from pytest_minerva.guards.watchdog import restore as restore_watchdog

__all__ = ["BackendTimeout", "Limits", "time_limit"]


class BackendTimeout(MinervaError):
    """A backend load or generation ran past its time limit."""


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


def _alarm(signum: int, frame: Any) -> None:
    raise _Expired


class _Expired(BaseException):
    """Raised by SIGALRM: a BaseException so the engine's ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str, *, hint: str = "--minerva-timeout", hard: bool = True) -> Iterator[None]:
    """Run the body within ``seconds`` or raise :class:`BackendTimeout`.

    ``SIGALRM`` interrupts the body where it runs Python code (main thread only). With
    ``hard``, if native code holds on past ``min(seconds, 30)`` more, the process ends
    (see :mod:`pytest_minerva.guards.watchdog`).
    """
    if not math.isfinite(seconds):
        yield
        return
    seconds = max(seconds, 0.001)
    grace = min(seconds, 30.0)
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    started = time.monotonic()
    previous_watch = arm_watchdog(started + seconds + grace, what, grace) if hard else None
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
            restore_watchdog(previous_watch)
