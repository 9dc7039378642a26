"""``minerva doctor``: does each engine work on this machine, and if not, what to do.

For every backend (or those named with ``--backend``) it reports the library versions,
how the engine was built (the adapter's ``build_facts()``: for llama.cpp the instruction
sets and GPU backends compiled in), and whether the embedded model loads and generates a
few greedy tokens. Everything that touches an engine runs in a worker process
(:mod:`pytest_minerva.guards`), so a build that segfaults is reported, not suffered:

* ``ok``: loaded and generated, with the times;
* ``crashed``: the worker died, with the signal and the engine's last stderr line;
* ``too slow``: a step ran past ``--timeout``;
* ``missing``: the engine is not installed (or its import fails);
* ``error``: anything else the engine raised, or the model could not be had.

Each problem comes with its fix. The exit status is 1 when any backend crashed, was too
slow or failed, and, with ``--require-all``, also when one is missing (``make setup``
uses that as the install's last check); else 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from pytest_minerva.errors import BackendUnavailable, MinervaError, printable

#: The prompt every backend completes; a trained model continues it with a capital city.
PROMPT = "The capital of France is"


@dataclass
class EngineCheck:
    """One backend's verdict on one device."""

    backend: str
    device: str
    status: str
    detail: str
    fix: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    artifact: str | None = None
    load_s: float | None = None
    generate_s: float | None = None
    text: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("crashed", "too slow", "error")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _stderr_tail(exc: BaseException) -> str:
    """The last stderr line a worker left, from a WorkerCrashed / BackendTimeout message."""
    lines = [line.strip() for line in str(exc).splitlines()[1:] if line.startswith("    ")]
    return lines[-1] if lines and lines[-1] != "(nothing)" else ""


def _verdict(exc: BaseException) -> str:
    from pytest_minerva.guards import BackendTimeout, WorkerCrashed

    if isinstance(exc, WorkerCrashed):
        return "crashed"
    if isinstance(exc, BackendTimeout):
        return "too slow"
    if isinstance(exc, BackendUnavailable):
        return "missing"
    return "error"


def _failure(spec: Any, exc: BaseException, limit_s: float) -> tuple[str, str, str]:
    """``(status, detail, fix)`` for an engine call that failed."""
    status = _verdict(exc)
    tail = _stderr_tail(exc)
    detail = _first_line(exc) + (f" (last stderr line: {tail})" if tail else "")
    return status, detail, _fix(spec, status, limit_s)


def _fix(spec: Any, status: str, limit_s: float) -> str:
    if status == "missing":
        return f"install it: {spec.install_hint}" if spec.install_hint else "install the engine's package"
    if status == "crashed":
        hint = spec.crash_hint or f"reinstall {', '.join(spec.distributions) or 'the engine'} built for this machine"
        return f"{hint}; until then, --minerva-no-isolate must not be used with it"
    if status == "too slow":
        return f"raise the limit with --timeout (now {limit_s:.0f} s), or check the engine uses this machine's cores"
    return "see the message; rerun with --backend NAME to check this engine alone"


def engine_facts(spec: Any, seconds: float) -> dict[str, Any]:
    """The backend class's ``build_facts()``, read in a worker process."""
    from pytest_minerva.guards import query_worker, spec_to_json

    value = query_worker({"op": "facts", "spec": spec_to_json(spec)}, f"{spec.name}: reading its build facts", seconds)
    return value if isinstance(value, dict) else {}


def check_backend(session: Any, spec: Any, *, limit_s: float, tokens: int) -> list[EngineCheck]:
    """Check ``spec`` on each device it has here; every engine call runs in a worker."""
    from pytest_minerva.backends.base import GenerationRequest
    from pytest_minerva.guards import IsolatedBackend, Limits

    versions = spec.versions()
    devices = session.devices_for(spec) or ["cpu"]
    reason = spec.unavailable_reason()
    if reason:
        return [EngineCheck(spec.name, d, "missing", reason, _fix(spec, "missing", limit_s), versions) for d in devices]
    try:
        facts = engine_facts(spec, limit_s)
    except MinervaError as exc:
        status, detail, fix = _failure(spec, exc, limit_s)
        return [EngineCheck(spec.name, d, status, detail, fix, versions) for d in devices]

    checks = []
    for device in devices:
        cases = [c for c in session.cases(backends=[spec.name]) if c.device == device]
        if not cases:
            checks.append(EngineCheck(spec.name, device, "error", "the model has no format this backend loads"))
            continue
        check = EngineCheck(spec.name, device, "ok", "", versions=versions, facts=facts)
        try:
            artifact = session.resolve(cases[0])
        except MinervaError as exc:
            check.status, check.detail = "error", f"could not get the model: {_first_line(exc)}"
            check.fix = "run: minerva models list"
            checks.append(check)
            continue
        check.artifact = artifact.id
        options = session.load_options(device)
        limits = Limits(load_s=limit_s, base_s=limit_s, explicit=True)
        started = time.perf_counter()
        loaded = None
        try:
            loaded = IsolatedBackend(spec, artifact, options, limits)
            check.load_s = time.perf_counter() - started
            ids = loaded.tokenize(PROMPT, add_bos=loaded.bos_id is not None)
            started = time.perf_counter()
            events = list(loaded.stream(GenerationRequest(prompt_ids=tuple(ids), max_tokens=tokens)))
            check.generate_s = time.perf_counter() - started
            check.text = "".join(e.text for e in events)
            if not events:
                raise MinervaError(f"{spec.name} generated no token")
            check.detail = (
                f"loaded {artifact.id} in {check.load_s:.1f} s; generated {len(events)} tokens in "
                f"{check.generate_s:.2f} s: {check.text!r}"
            )
        except MinervaError as exc:
            check.status, check.detail, check.fix = _failure(spec, exc, limit_s)
        finally:
            if loaded is not None:
                loaded.close()
        checks.append(check)
    return checks


def render(model: str, checks: Sequence[EngineCheck]) -> str:
    """The report; what an engine, a model file or a plugin said is escaped, one line each."""
    lines = [f"minerva doctor: each engine loads {printable(model)} in a worker process and completes {PROMPT!r}", ""]
    width = max((len(c.backend) for c in checks), default=8)
    for check in checks:
        versions = ", ".join(f"{k} {v}" for k, v in check.versions.items()) or "not installed"
        lines.append(f"{check.backend:<{width}}  {check.device:<5}  {check.status.upper():<8}  {versions}")
        features = check.facts.get("features")
        build = {k: v for k, v in check.facts.items() if k not in ("features", "system_info", "version")}
        if features is not None:
            lines.append(f"{'':<{width}}  build: {' '.join(map(str, features)) or 'no SIMD features reported'}")
        if build:
            lines.append(f"{'':<{width}}  build: " + ", ".join(f"{k}={v}" for k, v in build.items()))
        lines.append(f"{'':<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"{'':<{width}}  fix: {check.fix}")
    bad = [c for c in checks if c.status != "ok"]
    lines += ["", "every engine works here" if not bad else f"{len(bad)} of {len(checks)} checks need attention"]
    return "\n".join(printable(line) for line in lines) + "\n"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from pytest_minerva.option_types import Count, output_file, timeout_seconds
    from pytest_minerva.options import BACKEND, MODEL, THREADS, add_cli_options, add_location_options

    doctor = subparsers.add_parser(
        "doctor",
        help="check that each engine loads the embedded model and generates, and say how to fix it if not",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_cli_options(doctor, "doctor", BACKEND, MODEL, model={"action": None})
    doctor.add_argument(
        "--timeout", type=timeout_seconds, default=300.0, metavar="SECONDS", help="limit per step (default: 300)"
    )
    doctor.add_argument("--tokens", type=Count(1, 4096), default=8, metavar="N", help="tokens to generate (default: 8)")
    add_cli_options(doctor, "doctor", THREADS)
    doctor.add_argument("--require-all", action="store_true", help="a missing backend also fails (exit 1)")
    doctor.add_argument("--json", type=output_file, metavar="PATH", help="also write the checks as JSON here")
    add_location_options(doctor, "doctor")
    doctor.set_defaults(func=cmd_doctor)


def cmd_doctor(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session
    from pytest_minerva.storage.atomic import atomic_write_json

    out = out if out is not None else sys.stdout
    session = build_session(Settings.from_args(args))
    try:
        checks = [
            check
            for spec in session.backends
            for check in check_backend(session, spec, limit_s=args.timeout, tokens=args.tokens)
        ]
    finally:
        session.close()
    out.write(render(session.models[0].name, checks))
    if args.json:
        atomic_write_json(args.json, {"model": session.models[0].name, "checks": [asdict(c) for c in checks]})
    failed = [c for c in checks if c.failed or (args.require_all and c.status == "missing")]
    if failed:
        names = ", ".join(f"{c.backend} ({c.status})" for c in failed)
        print(f"minerva doctor: {printable(names)}; see the fixes above", file=sys.stderr)
        return 1
    return 0
