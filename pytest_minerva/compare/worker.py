"""A warm benchmark worker: one side of ``minerva compare`` loads one case once, then times rounds on request.

``minerva compare`` starts this module under each side's own interpreter and code (the side's
git worktree first on ``PYTHONPATH``), so the adapter and engine measured are that side's. It
speaks :mod:`pytest_minerva.guards.protocol` (length-prefixed JSON; nothing is unpickled):

1. request ``{"argv": [...], "case": K, "warmup": W, "cpus": [...] | null}``: the worker first
   pins itself (and so every thread its engine starts) to ``cpus`` where given. ``argv`` are
   ``minerva bench`` options
   (``--model``, ``--backend``, ``--scenario``, ``--threads``, locations), parsed by this
   side's own parser. The worker builds the matrix, picks its ``K``-th case, loads it, builds
   each scenario's prompt and runs ``W`` untimed warm-up generations of each. Reply:
   ``{"ready": true, "cases": N, "case_id", "pid", "load_s"}``, or ``{"ready": false,
   "cases": N, "skipped": {"case_id", "status", "reason"}}`` for a case that cannot run here
   (and ``"skipped": null`` when ``K >= N``).
2. request ``{"op": "round", "runs": R}``: ``R`` timed runs of every scenario, exactly as
   ``minerva bench`` times them (:func:`~pytest_minerva.timing.runs.timed_run`, the harness's
   receipts, the clock check). Reply ``{"figures": {benchmark: {figure: median}}, "failed":
   [...]}`` with every wall-clock figure and, where recorded, the CPU-time figures.
3. request ``{"op": "stop"}``: the backend is closed and the worker exits 0.

The model is loaded once per worker; ``minerva compare`` restarts workers every few rounds so
that no side keeps one memory layout (lucky or not) for a whole comparison.
"""

from __future__ import annotations

import os
from typing import IO, Any

from pytest_minerva.errors import MinervaError

__all__ = ["serve"]


def _figures(records: list[Any]) -> dict[str, float]:
    from pytest_minerva.stats.summary import Stats

    per_run = [r.figures() for r in records]
    shared = set.intersection(*(set(f) for f in per_run))
    return {name: Stats([f[name] for f in per_run]).median for name in sorted(shared)}


class _Case:
    """The loaded case: its backend, scenarios and their prompts."""

    def __init__(self, request: dict[str, Any], out: IO[bytes]) -> None:
        from pytest_minerva.commands import make_parser
        from pytest_minerva.commands.bench import context_of_model, split_values, why_not_runnable
        from pytest_minerva.guards import write_message
        from pytest_minerva.options import Settings
        from pytest_minerva.session import build_session
        from pytest_minerva.timing import harness, scenarios
        from pytest_minerva.timing.scenarios import build_prompt

        args = make_parser().parse_args(["bench", *[str(word) for word in request["argv"]]])
        args.backend = split_values(args.backend)
        session = build_session(Settings.from_args(args))
        cases = session.cases(formats=args.format or None)
        index = int(request["case"])
        self.loaded: Any = None
        if index >= len(cases):
            write_message(out, {"ready": False, "cases": len(cases), "skipped": None})
            return
        case = cases[index]
        skipped = why_not_runnable(session, case)
        if skipped is not None:
            write_message(out, {"ready": False, "cases": len(cases), "skipped": skipped})
            return
        self.scenarios = [scenarios.get(name) for name in dict.fromkeys(args.scenario or ["short"])]
        n_ctx = harness.needed_context(self.scenarios, context_of_model(session, session.models[0], cases))
        self.case_id = case.id
        self.loaded = harness.load_backend(session, case, n_ctx)
        backend = self.loaded.backend
        self.prompts = [build_prompt(backend, scenario) for scenario in self.scenarios]
        for scenario, prompt in zip(self.scenarios, self.prompts, strict=True):
            for i in range(int(request.get("warmup", 1))):
                self._run(prompt.ids, scenario.generate_tokens, i + 1, warmup=True)
        write_message(
            out,
            {
                "ready": True,
                "cases": len(cases),
                "case_id": case.id,
                "pid": os.getpid(),
                "load_s": self.loaded.load_s,
            },
        )

    def _run(self, ids: Any, tokens: int, run: int, *, warmup: bool = False) -> Any:
        from pytest_minerva.timing.runs import timed_run

        record = timed_run(self.loaded.backend, ids, tokens, run=run)
        problem = record.stream_problem() if warmup else record.problem()
        if problem:
            raise MinervaError(f"{'warm-up ' if warmup else ''}{problem}")
        return record

    def round(self, runs: int) -> dict[str, Any]:
        figures: dict[str, dict[str, float]] = {}
        failed: list[str] = []
        for scenario, prompt in zip(self.scenarios, self.prompts, strict=True):
            name = f"{self.case_id}::{scenario.name}"
            try:
                records = [self._run(prompt.ids, scenario.generate_tokens, i + 1) for i in range(runs)]
            except MinervaError as exc:
                failed.append(f"{name}: {exc}")
                continue
            figures[name] = _figures(records)
        return {"figures": figures, "failed": failed}

    def close(self) -> None:
        if self.loaded is not None:
            self.loaded.backend.close()


def serve() -> int:
    """The worker's main loop (see the module doc); returns its exit status."""
    from pytest_minerva.guards import protocol_input, protocol_output, read_message_blocking, write_message

    out = protocol_output()
    requests = protocol_input()  # an engine that reads stdin gets end-of-file
    message = read_message_blocking(requests)
    if message is None:
        return 2
    try:
        if message[0].get("cpus"):
            os.sched_setaffinity(0, [int(cpu) for cpu in message[0]["cpus"]])
        case = _Case(message[0], out)
    except Exception as exc:  # reported to the parent in one line; its stderr keeps the rest
        write_message(out, {"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    try:
        while case.loaded is not None:
            message = read_message_blocking(requests)
            if message is None or message[0].get("op") != "round":
                break
            try:
                reply = case.round(int(message[0]["runs"]))
            except Exception as exc:
                reply = {"figures": {}, "failed": [f"{case.case_id}: {type(exc).__name__}: {exc}"]}
            write_message(out, reply)
    finally:
        case.close()
    return 0
