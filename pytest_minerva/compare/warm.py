"""Warm workers: each side of a comparison keeps its model loaded and times many rounds.

A round measured by invocation (``minerva bench`` in a fresh process) spends most of its time
starting Python, importing the engine and loading the model. Here each side runs one
:mod:`pytest_minerva.compare.worker` per matrix case, under that side's interpreter, from its
own code; a round asks each worker for ``runs`` timed runs. Every ``restart_every`` rounds all
workers are stopped and started again, so no side keeps one memory layout (lucky or unlucky)
for the whole comparison; starting them is never part of a timed figure.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from pytest_minerva.compare.builds import Build
from pytest_minerva.compare.schedule import Figures
from pytest_minerva.errors import MinervaError, printable

#: The worker module a side must have to be measured warm (older revisions are measured by invocation).
WORKER_MODULE = "pytest_minerva.compare.worker"
WORKER_ENTRY = f"{WORKER_MODULE}:serve"
#: Rounds between restarts of every worker (a comparison that stops at its first look, 8 rounds,
#: has then measured each side in two processes).
RESTART_EVERY = 4


def pinned_cpus(choice: str, threads: int | None) -> list[int] | None:
    """The CPUs both sides' workers are pinned to: ``choice`` is ``auto``, ``none`` or a list (``2,3``).

    ``auto`` pins to the last ``threads`` CPUs this process may use when ``threads`` is fewer
    than those: both sides then run on the same cores. Left to the scheduler, a worker lands on
    either core of a two-core machine round by round, and on this project's machines that alone
    spread SmolLM2's per-round TTFT ratios by 11.8% where pinned gave 1.6% (see docs/compare.md).
    """
    if choice == "none":
        return None
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # no affinity mask on macOS and Windows: nothing to pin
        return None
    if choice != "auto":
        wanted = [int(part) for part in choice.split(",") if part.strip()]
        outside = [cpu for cpu in wanted if cpu not in allowed]
        if outside:
            raise MinervaError(f"--cpus {choice}: CPU {outside[0]} is not one this process may use ({allowed})")
        return wanted
    if threads is None or threads >= len(allowed):
        return None
    return allowed[-threads:]


class WarmWorker:
    """One side's worker for one matrix case."""

    def __init__(
        self, build: Build, argv: Sequence[str], case: int, warmup: int, timeout: float, cpus: list[int] | None = None
    ) -> None:
        from pytest_minerva.guards import WorkerProcess

        self.build = build
        self.timeout = timeout
        env = build.environ()
        env["PYTHONUNBUFFERED"] = "1"
        self.process = WorkerProcess(env, WORKER_ENTRY, python=build.python, cwd=build.cwd)
        self.process.send({"argv": list(argv), "case": case, "warmup": warmup, "cpus": cpus})
        self.ready = self._receive("loading the model")

    def _receive(self, doing: str) -> dict[str, Any]:
        from pytest_minerva.guards import ProtocolError, describe_exit

        label = f"{self.build.label} ({self.build.spec})"
        try:
            message = self.process.receive(time.monotonic() + self.timeout)
        except TimeoutError:
            self.process.kill()
            raise MinervaError(
                f"{label}: its benchmark worker made no progress {doing} within {self.timeout:g} s"
            ) from None
        except ProtocolError as exc:
            self.process.kill()
            raise MinervaError(f"{label}: its benchmark worker broke the protocol {doing}: {exc}") from None
        if message is None:
            code = self.process.exit_code()
            last = "; ".join([line for line in self.process.stderr_tail() if line.strip()][-3:]) or "nothing on stderr"
            raise MinervaError(
                f"{label}: its benchmark worker {describe_exit(code)} {doing}; last stderr lines: {last}"
            )
        header = message[0]
        if header.get("error"):
            self.process.kill()
            raise MinervaError(f"{label}: its benchmark worker failed {doing}: {printable(header['error'], 300)}")
        return header

    def round(self, runs: int) -> tuple[Figures, list[str]]:
        """One round's figures (benchmark -> figure -> median of ``runs``) and its failures."""
        self.process.send({"op": "round", "runs": runs})
        reply = self._receive("timing a round")
        figures = reply.get("figures")
        failed = reply.get("failed")
        if not isinstance(figures, dict) or not isinstance(failed, list):
            raise MinervaError(f"{self.build.label} ({self.build.spec}): its benchmark worker sent a malformed round")
        return figures, [str(line) for line in failed]

    def stop(self) -> None:
        self.process.stop()


class WarmSides:
    """Every worker of both sides; started lazily, restarted every ``restart_every`` rounds."""

    def __init__(
        self,
        builds: dict[str, Build],
        argv: Sequence[str],
        *,
        runs: int,
        warmup: int,
        timeout: float,
        restart_every: int,
        cpus: list[int] | None = None,
    ) -> None:
        self.builds = builds
        self.argv = list(argv)
        self.runs = runs
        self.warmup = warmup
        self.timeout = timeout
        self.restart_every = max(1, restart_every)
        self.cpus = cpus
        self.workers: dict[str, list[WarmWorker]] = {}
        self.skipped: list[dict[str, Any]] = []
        self.starts = 0
        self.start_s = 0.0
        self._round = 0

    def _start(self) -> None:
        started = time.perf_counter()
        self.skipped = []
        for side, build in self.builds.items():
            workers: list[WarmWorker] = []
            case, count = 0, 1
            while case < count:
                worker = WarmWorker(build, self.argv, case, self.warmup, self.timeout, self.cpus)
                count = int(worker.ready.get("cases", 0))
                if worker.ready.get("ready"):
                    workers.append(worker)
                else:
                    worker.stop()
                    if worker.ready.get("skipped"):
                        self.skipped.append({"side": side, **worker.ready["skipped"]})
                case += 1
            self.workers[side] = workers
        self.starts += 1
        self.start_s += time.perf_counter() - started

    def stop(self) -> None:
        for workers in self.workers.values():
            for worker in workers:
                worker.stop()
        self.workers = {}

    def measure(self, side: str, index: int) -> tuple[Figures, list[str]]:
        """Side ``side``'s figures in round ``index``; workers are (re)started before a round that needs it."""
        if index != self._round:
            self._round = index
            if not self.workers or ((index - 1) % self.restart_every == 0 and index > 1):
                self.stop()
                self._start()
        figures: Figures = {}
        failed: list[str] = []
        for worker in self.workers[side]:
            got, problems = worker.round(self.runs)
            figures.update(got)
            failed += problems
        return figures, failed

    def problems(self) -> tuple[list[str], list[str]]:
        """Cases that could not run: errors (a failed or crashed load) and notes (unavailable here)."""
        errors: list[str] = []
        notes: list[str] = []
        for entry in self.skipped:
            label = self.builds[entry["side"]].label
            line = f"{label}: {entry.get('case_id')}: {entry.get('status')}: {entry.get('reason')}"
            (errors if entry.get("status") in ("error", "crashed") else notes).append(line)
        return errors, notes
