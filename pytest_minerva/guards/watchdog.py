"""The last resort against a hang in native code that never returns to Python.

Without isolation a hang is interrupted by ``SIGALRM`` where the engine returns to
Python (:func:`pytest_minerva.guards.limits.time_limit`); a hang inside native code that
never returns ends the whole process after a grace period, with a message and every
thread's traceback, so a CI job fails instead of stalling. One daemon thread per process
(:func:`arm`, :func:`restore`) watches the deadline of the step running now.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import threading
import time

__all__ = ["arm", "keep_stderr", "restore"]

#: An armed deadline: ``(time.monotonic() deadline, what is running, grace seconds)``.
Armed = tuple[float, str, float]

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
        self._armed: Armed | None = None
        self._sleeping_until: float | None = None
        self._thread: threading.Thread | None = None

    def _set(self, armed: Armed | None) -> None:
        self._armed = armed
        if armed is not None and (self._sleeping_until is None or armed[0] < self._sleeping_until):
            self._cond.notify()

    def arm(self, deadline: float, what: str, grace: float) -> Armed | None:
        with self._cond:
            previous = self._armed
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="minerva-watchdog", daemon=True)
                self._thread.start()
            self._set((deadline, what, grace))
            return previous

    def restore(self, previous: Armed | None) -> None:
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


def arm(deadline: float, what: str, grace: float) -> Armed | None:
    """End the process if ``deadline`` passes before :func:`restore`; return what was armed before."""
    return _WATCHDOG.arm(deadline, what, grace)


def restore(previous: Armed | None) -> None:
    """Put back the deadline :func:`arm` returned (``None``: nothing armed)."""
    _WATCHDOG.restore(previous)
