"""``minerva bench``: time real generations on every backend that can load a model.

The command loads one backend at a time, runs the scenarios (warm-up, then timed
runs), measures memory, the KV cache and the roofline, closes the backend, and moves
on. It prints markdown tables and writes the JSON document and CSV on request.
Backends that cannot run here are listed with the reason; a backend that fails part
way (for example stops before the requested token count) is reported as an error
and makes the exit status 1.

Each engine that runs native code is measured in a child process of its own
(:func:`bench_child`), which loads it, times it with the same harness in that process
(so no figure includes any inter-process traffic) and sends the results back. A
segfault or abort there is reported as ``crashed`` for that backend, with the signal
and the engine's last stderr lines, and the other backends are still measured.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pytest_minerva.errors import ArtifactMissing, BackendUnavailable, MinervaError, printable
from pytest_minerva.option_types import output_file
from pytest_minerva.options import (
    API_KEY_ENV,
    BACKEND,
    DEVICE,
    ENDPOINT,
    ISOLATE,
    MODEL,
    RUNS,
    SCENARIO,
    THREADS,
    WARMUP,
    Settings,
    add_cli_options,
    add_location_options,
)
from pytest_minerva.session import build_session


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``bench`` on the ``minerva`` command line."""
    bench = subparsers.add_parser(
        "bench",
        help="time generation on real models: TTFT, TpT, throughput, memory, roofline",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    add_cli_options(bench, "bench", MODEL, BACKEND, DEVICE, model={"required": True, "action": None})
    bench.add_argument(
        "--format",
        action="append",
        choices=["gguf", "safetensors", "mlx"],
        help="only artifacts of this format; repeatable (default: every format a backend loads)",
    )
    add_cli_options(bench, "bench", SCENARIO, RUNS, WARMUP, THREADS)
    bench.add_argument(
        "--sweep",
        action="store_true",
        help="add the context-length sweep: prompts of 32, 64, ..., 2048 tokens "
        "(up to the model's context), 16 generated tokens each",
    )
    bench.add_argument(
        "--no-kv-probe",
        dest="kv_probe",
        action="store_false",
        help="skip the extra untimed generation that measures KV-cache growth",
    )
    bench.add_argument(
        "--no-numerics",
        dest="numerics",
        action="store_false",
        help="skip the numerics: each measured backend's logits against its reference's "
        "(KL mean/max, top-1 agreement, max |dlogit|), the equivalence suite's pairs and prompts",
    )
    add_cli_options(bench, "bench", ENDPOINT, API_KEY_ENV, ISOLATE)
    bench.add_argument(
        "--json", type=output_file, metavar="PATH", help="write the results document (schema version 1) here"
    )
    bench.add_argument("--csv", type=output_file, metavar="PATH", help="write one row per timed run here")
    add_location_options(bench, "bench")
    bench.set_defaults(func=cmd_bench)


def split_values(values: Sequence[str] | None) -> list[str]:
    """Repeated, comma-separated option values as one list (``--backend a,b --backend c``)."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _unavailable(case: Any, reason: str, status: str = "unavailable") -> dict[str, Any]:
    reason = reason.removeprefix(f"{case.id}: ")
    return {
        "case_id": case.id,
        "backend": case.backend.name,
        "model": case.model.name,
        "format": case.artifact.format,
        "quant": case.artifact.quant,
        "device": case.device,
        "status": status,
        "reason": reason,
    }


def _session(args: argparse.Namespace) -> Any:
    return build_session(Settings.from_args(args))


def why_not_runnable(session: Any, case: Any) -> dict[str, Any] | None:
    """The backends entry of a case that cannot run here (device, library, model file), or None."""
    reason = session.check_runnable(case)
    if reason:
        return _unavailable(case, reason)
    try:
        session.resolve(case)
    except ArtifactMissing as exc:
        return _unavailable(case, str(exc))
    except MinervaError as exc:
        return _unavailable(case, str(exc), "error")
    return None


def context_of_model(session: Any, model: Any, cases: Sequence[Any]) -> int | None:
    """The model's context length: from the catalog, else from the first of its files found here."""
    if model.context_length:
        return int(model.context_length)
    for case in cases:
        try:
            artifact = session.resolve(case)
        except MinervaError:
            continue
        if artifact.summary is not None and artifact.summary.context_length:
            return int(artifact.summary.context_length)
    return None


def _benchmark_entry(result: Any, scenario: Any) -> dict[str, Any]:
    return {
        "name": f"{result.case_id}::{scenario.scenario.name}",
        "case_id": result.case_id,
        "backend": result.backend,
        "model": result.model,
        "format": result.format,
        "quant": result.quant,
        "device": result.device,
        **scenario.as_dict(),
    }


def _settings_json(settings: Any) -> dict[str, Any]:
    return {
        "models": list(settings.models),
        "backends": list(settings.backends),
        "devices": list(settings.devices),
        "cache_dir": str(settings.cache_dir) if settings.cache_dir else None,
        "model_dir": str(settings.model_dir) if settings.model_dir else None,
        "threads": settings.threads,
        "derive": settings.derive,
        "timeout_s": settings.timeout_s,
        "endpoint": settings.endpoint,
        "api_key_env": settings.api_key_env,
    }


def _bench_in_child(
    session: Any,
    case: Any,
    chosen: Sequence[Any],
    args: argparse.Namespace,
    bandwidth_gb_per_s: float,
    n_ctx: int,
    on_run: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measure ``case`` in a child process; its crash becomes a ``crashed`` entry."""
    import time

    from pytest_minerva.guards import ProtocolError, WorkerProcess, describe_exit, worker_environment

    limits = session.limits(session.resolve(case))
    per_message = limits.load_s + limits.step_s(max(s.context_tokens for s in chosen))
    request = {
        "settings": _settings_json(session.settings),
        "case_id": case.id,
        "scenarios": [s.name for s in chosen],
        "runs": args.runs,
        "warmup": args.warmup,
        "bandwidth_gb_per_s": bandwidth_gb_per_s,
        "kv_probe": bool(args.kv_probe),
        "n_ctx": n_ctx,
    }
    child = WorkerProcess(worker_environment(), entry="pytest_minerva.commands.bench:bench_child")
    try:
        child.send(request)
        while True:
            try:
                message = child.receive(time.monotonic() + per_message)
            except TimeoutError:
                child.kill()
                last = "; ".join(child.stderr_tail()[-3:]) or "nothing on stderr"
                return _unavailable(case, f"no progress within {per_message:.0f} s; killed (last: {last})", "error"), []
            except ProtocolError as exc:
                child.kill()
                return _unavailable(case, f"its benchmark process broke the protocol: {exc}", "error"), []
            if message is None:
                code = child.exit_code()
                last = "; ".join([line for line in child.stderr_tail() if line.strip()][-3:]) or "nothing on stderr"
                reason = (
                    f"the engine's process {describe_exit(code)} while benchmarking; last stderr lines: {last}. "
                    f"Check this engine with: minerva doctor --backend {case.backend.name}"
                )
                return _unavailable(case, reason, "crashed"), []
            header, _payload = message
            if header.get("run"):
                on_run()
            elif "result" in header:
                result = header["result"]
                return result["backend"], result["benchmarks"]
    finally:
        child.stop()


def bench_child() -> int:
    """The child of :func:`_bench_in_child`: load one case here, measure, send the results."""
    from pytest_minerva.guards import protocol_input, protocol_output, read_message_blocking, write_message
    from pytest_minerva.timing import harness, scenarios

    out = protocol_output()
    message = read_message_blocking(protocol_input())  # an engine that reads stdin gets end-of-file
    if message is None:
        return 2
    request = message[0]
    raw = dict(request["settings"])
    settings = Settings(**{**raw, "isolate": False})
    settings.cache_dir = Path(raw["cache_dir"]) if raw["cache_dir"] else None
    settings.model_dir = Path(raw["model_dir"]) if raw["model_dir"] else None
    session = build_session(settings)
    case = next((c for c in session.cases() if c.id == request["case_id"]), None)
    if case is None:
        write_message(
            out,
            {
                "result": {
                    "backend": {
                        "case_id": request["case_id"],
                        "status": "error",
                        "reason": "the case is not in the child's matrix",
                    },
                    "benchmarks": [],
                }
            },
        )
        return 0
    chosen = [scenarios.get(name) for name in request["scenarios"]]
    try:
        loaded = harness.load_backend(session, case, int(request["n_ctx"]))
    except BackendUnavailable as exc:
        entry = _unavailable(case, str(exc))
        write_message(out, {"result": {"backend": entry, "benchmarks": []}})
        return 0
    except Exception as exc:
        entry = _unavailable(case, f"failed to load: {type(exc).__name__}: {exc}", "error")
        write_message(out, {"result": {"backend": entry, "benchmarks": []}})
        return 0
    try:
        result = harness.bench_backend(
            loaded,
            case,
            chosen,
            runs=int(request["runs"]),
            warmup=int(request["warmup"]),
            bandwidth_gb_per_s=float(request["bandwidth_gb_per_s"]),
            kv_probe=bool(request["kv_probe"]),
            on_run=lambda: write_message(out, {"run": 1}),
        )
        payload = {
            "backend": result.as_dict(),
            "benchmarks": [_benchmark_entry(result, scenario) for scenario in result.scenarios],
        }
    except Exception as exc:
        payload = {
            "backend": _unavailable(case, f"failed while running: {type(exc).__name__}: {exc}", "error"),
            "benchmarks": [],
        }
    finally:
        loaded.backend.close()
    import json

    write_message(out, {"result": json.loads(json.dumps(payload, default=str))})
    return 0


def pair_numerics(session: Any, cases: Sequence[Any], measured: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The equivalence suite's pairs among the backends that ran (status ``ok``), each measured by
    :func:`pytest_minerva.equivalence.runner.measure_pair`: the same figures as the suite and the asv
    history (``benchmarks/bench_numerics.py``), with the tolerance profile's bounds beside them."""
    from pytest_minerva.equivalence import runner
    from pytest_minerva.equivalence.profiles import ProfileError

    ran = {b["case_id"] for b in measured if b.get("status") == "ok"}
    wanted = {case.id for case in cases}
    entries: list[dict[str, Any]] = []
    for pair in session.pairs():
        if pair.candidate.id not in wanted or pair.candidate.id not in ran or pair.reference.id not in ran:
            continue
        entry: dict[str, Any] = {
            "pair_id": pair.id,
            "kind": pair.kind,
            "reference": pair.reference.id,
            "candidate": pair.candidate.id,
            "status": "ok",
            "reason": None,
            "profile": None,
            "bounds": {},
            "positions": None,
            "figures": {},
            "per_prompt": {},
        }
        try:
            numerics = runner.measure_pair(session, pair)
            same = session.resolve(pair.reference).same_weights_as(session.resolve(pair.candidate))
        except (BackendUnavailable, ArtifactMissing) as exc:
            entries.append({**entry, "status": "unavailable", "reason": printable(exc)})
            continue
        except Exception as exc:  # one pair's failure must not lose the timings or the other pairs
            entries.append({**entry, "status": "error", "reason": f"{type(exc).__name__}: {printable(exc)}"})
            continue
        try:
            profile = runner.profile_for(pair.reference, pair.candidate, same, session.settings.tolerances)
            entry["profile"] = profile.name
            entry["bounds"] = {m: float(v) for m, v in profile.bounds.items() if m in runner.NUMERICS_FIGURES}
        except ProfileError:
            pass  # no calibrated profile covers these precisions: the figures stand alone
        entry.update(positions=numerics.positions, figures=numerics.figures(), per_prompt=numerics.per_prompt)
        entries.append(entry)
    return entries


def cmd_bench(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from pytest_minerva.session import default_threads
    from pytest_minerva.storage import results
    from pytest_minerva.timing import harness, report, scenarios
    from pytest_minerva.timing.roofline import probe_bandwidth

    out = out if out is not None else sys.stdout
    args.backend = split_values(args.backend)
    session = _session(args)
    model = session.models[0]
    cases = session.cases(formats=args.format or None)
    if not cases:
        raise MinervaError(
            f"no backend in [{', '.join(b.name for b in session.backends)}] loads a format of {model.name}"
        )
    model_context = context_of_model(session, model, cases)
    chosen = [scenarios.get(name) for name in dict.fromkeys(args.scenario or scenarios.SCENARIOS)]
    if args.sweep:
        chosen += [s for s in scenarios.sweep(model_context or 2048) if s not in chosen]
    too_long = [s.name for s in chosen if model_context and s.context_tokens > model_context]
    if too_long:
        raise MinervaError(f"{model.name}: scenarios {', '.join(too_long)} exceed its context of {model_context}")
    threads = session.settings.threads or default_threads()
    bandwidth = None
    n_ctx = harness.needed_context(chosen, model_context)

    from tqdm import tqdm

    progress = tqdm(
        total=len(cases) * len(chosen) * (args.runs + args.warmup),
        unit="run",
        disable=not out.isatty(),
        file=sys.stderr,
        leave=False,
    )
    backends: list[dict[str, Any]] = []
    benchmarks: list[dict[str, Any]] = []
    per_case = len(chosen) * (args.runs + args.warmup)
    try:
        for case in cases:
            progress.set_description(case.id)
            skipped = why_not_runnable(session, case)
            if skipped is not None:
                backends.append(skipped)
                progress.update(per_case)
                continue
            if bandwidth is None:
                # Before any backend loads: the probe's buffer must not count in a backend's peak RSS.
                bandwidth = probe_bandwidth(threads)
            if session.isolates(case.backend):
                entry, entries = _bench_in_child(
                    session, case, chosen, args, bandwidth.gb_per_s, n_ctx, lambda: progress.update(1)
                )
                backends.append(entry)
                benchmarks += entries
                continue
            try:
                loaded = harness.load_backend(session, case, n_ctx)
            except BackendUnavailable as exc:
                backends.append(_unavailable(case, str(exc)))
                progress.update(per_case)
                continue
            except Exception as exc:  # a crash in one engine must not lose the others' results
                backends.append(_unavailable(case, f"failed to load: {type(exc).__name__}: {exc}", "error"))
                progress.update(per_case)
                continue
            try:
                result = harness.bench_backend(
                    loaded,
                    case,
                    chosen,
                    runs=args.runs,
                    warmup=args.warmup,
                    bandwidth_gb_per_s=bandwidth.gb_per_s,
                    kv_probe=args.kv_probe,
                    on_run=lambda: progress.update(1),
                )
            except Exception as exc:  # as above: report it and go on to the next backend
                backends.append(_unavailable(case, f"failed while running: {type(exc).__name__}: {exc}", "error"))
                continue
            finally:
                loaded.backend.close()
            backends.append(result.as_dict())
            benchmarks += [_benchmark_entry(result, scenario) for scenario in result.scenarios]
    finally:
        progress.close()
    numerics: list[dict[str, Any]] = []
    if args.numerics:
        try:
            numerics = pair_numerics(session, cases, backends)
        finally:
            session.close()

    settings = {
        "model": model.name,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": threads,
        "n_ctx": n_ctx,
        "model_context": model_context,
        "scenarios": [s.name for s in chosen],
        "sweep": bool(args.sweep),
        "kv_probe": bool(args.kv_probe),
        "numerics": bool(args.numerics),
    }
    document = results.make_document(
        settings=settings,
        backends=backends,
        benchmarks=benchmarks,
        versions=session.versions(),
        bandwidth=bandwidth.as_dict() if bandwidth is not None else None,
        machine=session.machine_info(),
        numerics=numerics,
    )
    session.update_report(document)
    out.write(report.markdown(document))
    if args.json:
        path = results.write_json(args.json, document)
        out.write(f"\nwrote {path}\n")
    if args.csv:
        path = results.write_csv(args.csv, document)
        out.write(f"wrote {path}\n")
    if not any(b["status"] == "ok" for b in backends):
        print("minerva: bench: no backend could run this model here (see 'Not run' above)", file=sys.stderr)
        return 1
    return 0 if all(b["status"] not in ("error", "crashed") for b in backends) else 1
