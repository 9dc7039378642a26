"""Running a comparison: two results files compared unpaired, or two builds measured interleaved.

:func:`compare_results_files` reads two ``minerva bench --json`` files; :func:`compare_builds`
checks out or locates both builds, runs the benchmark command for each in ABBA rounds
(:mod:`~pytest_minerva.compare.schedule`) and judges the rounds pairwise. Both return the
comparison document of :func:`~pytest_minerva.compare.render.compare_document`.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from pytest_minerva.compare.builds import (
    CLI_MODULE,
    Build,
    check_provenance,
    make_builds,
    probe_build,
    run_benchmark,
    worktrees,
)
from pytest_minerva.compare.render import compare_document
from pytest_minerva.compare.samples import round_figures, run_samples
from pytest_minerva.compare.schedule import Figures, Round, iter_rounds
from pytest_minerva.compare.sequential import (
    MAX_ROUNDS,
    ClockChoice,
    Look,
    choose_all_clocks,
    first_look,
    judge_look,
    look_alpha,
    look_points,
)
from pytest_minerva.compare.verdict import DEFAULT_FIGURES, Comparison, Criteria, compare_unpaired
from pytest_minerva.compare.warm import WarmSides, pinned_cpus
from pytest_minerva.errors import MinervaError
from pytest_minerva.stats.rank import min_paired_rounds, unpaired_can_conclude
from pytest_minerva.timing.clock import CPU_FIGURES

#: What the choice of clock reads besides the judged figures (:func:`.sequential.choose_clocks`).
CLOCK_CHOICE_FIGURES = ("total_ms", "total_cpu_ms", "runqueue_wait_ms")
#: Rounds of a comparison without ``--sequential`` when ``--rounds`` does not say.
FIXED_ROUNDS = 10


def bench_command(args: argparse.Namespace) -> list[str]:
    """The benchmark command for one round: ``--command`` split into words, or ``minerva bench`` from the options."""
    if args.command:
        words = shlex.split(args.command)
        if not any("{json}" in word for word in words):
            raise MinervaError("--command must contain {json}, where the command writes its results document")
        return words
    if not args.model:
        raise MinervaError("compare needs --model (or --command, or --results)")
    words = ["{python}", "-m", CLI_MODULE, "bench", "--model", args.model]
    for backend in args.backend or []:
        words += ["--backend", backend]
    for scenario in args.scenario or ["short"]:
        words += ["--scenario", scenario]
    words += ["--runs", str(args.runs), "--warmup", str(args.warmup), "--no-kv-probe", "--json", "{json}"]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    for option in ("cache_dir", "model_dir"):
        value = getattr(args, option, None)
        if value:
            words += [f"--{option.replace('_', '-')}", str(Path(value).absolute())]
    return words


def _results_side(path: str, document: Mapping[str, Any]) -> dict[str, Any]:
    commit = document.get("commit_info") or {}
    machine = document.get("machine_info") or {}
    return {
        "spec": path,
        "kind": "results",
        "commit": commit.get("id"),
        "python_version": machine.get("python_version"),
        "datetime": document.get("datetime"),
    }


def compare_results_files(
    base_path: str, head_path: str, criteria: Criteria, figures: Sequence[str] = DEFAULT_FIGURES
) -> dict[str, Any]:
    """The comparison document of two ``minerva bench --json`` files, compared unpaired."""
    from pytest_minerva.storage import results

    started = time.perf_counter()
    base_document, head_document = results.load(base_path), results.load(head_path)
    base_samples, base_failed, base_notes = run_samples(base_document, figures)
    head_samples, head_failed, head_notes = run_samples(head_document, figures)
    errors = [f"{base_path}: {f}" for f in base_failed] + [f"{head_path}: {f}" for f in head_failed]
    notes = [f"{base_path}: {n}" for n in base_notes] + [f"{head_path}: {n}" for n in head_notes]
    notes += [f"{name}: only in {base_path}" for name in sorted(set(base_samples) - set(head_samples))]
    notes += [f"{name}: only in {head_path}" for name in sorted(set(head_samples) - set(base_samples))]
    comparisons = []
    for name in sorted(set(base_samples) & set(head_samples)):
        m, n = len(base_samples[name][figures[0]]), len(head_samples[name][figures[0]])
        if not unpaired_can_conclude(m, n, criteria.confidence):
            errors.append(
                f"{name}: {m} runs in {base_path} and {n} in {head_path} are too few for a test at "
                f"{criteria.confidence:g} confidence (4 runs on each side is the least at 0.95)"
            )
            continue
        for figure in figures:
            comparisons.append(
                compare_unpaired(
                    base_samples[name][figure],
                    head_samples[name][figure],
                    criteria=criteria,
                    benchmark=name,
                    figure=figure,
                )
            )
    base_node = (base_document.get("machine_info") or {}).get("node")
    head_node = (head_document.get("machine_info") or {}).get("node")
    if base_node != head_node:
        notes.append(f"measured on different machines ({base_node} and {head_node}): the ratio includes the machine")
    return compare_document(
        mode="results",
        criteria=criteria,
        comparisons=comparisons,
        errors=errors,
        notes=notes,
        base=_results_side(base_path, base_document),
        head=_results_side(head_path, head_document),
        settings={"figures": list(figures)},
        elapsed_s=time.perf_counter() - started,
    )


def bench_options(args: argparse.Namespace) -> list[str]:
    """The ``minerva bench`` options a warm worker parses: the model, backends, scenarios, threads, locations."""
    command = bench_command(args)
    words = command[command.index("bench") + 1 :]
    out: list[str] = []
    skip = {"--runs", "--warmup", "--json"}
    i = 0
    while i < len(words):
        if words[i] in skip:
            i += 2
            continue
        out.append(words[i])
        i += 1
    return out


def _method(args: argparse.Namespace, base: Build, head: Build) -> tuple[str, str | None]:
    """``warm`` or ``invocations``, and why the warm method was not used where it was asked for."""
    if args.method != "warm":
        return "invocations", None
    if args.command:
        return "invocations", "--command given: each round runs it in a fresh process (method: invocations)"
    old = [f"{b.label} ({b.spec})" for b in (base, head) if not b.warm]
    if old:
        return "invocations", (
            f"{' and '.join(old)} has no warm benchmark worker (pytest_minerva.compare.worker); every round "
            "runs 'minerva bench' in fresh processes instead (method: invocations)"
        )
    return "warm", None


def compare_builds(args: argparse.Namespace, criteria: Criteria, figures: Sequence[str], out: TextIO) -> dict[str, Any]:
    """Measure two builds interleaved and return the comparison document (raises on setup errors).

    Rounds go on until a look decides (:mod:`~pytest_minerva.compare.sequential`), the rounds
    reach ``--rounds`` or the next round would overrun ``--budget``.
    """
    sequential = bool(args.sequential)
    max_rounds = args.rounds or (MAX_ROUNDS if sequential else FIXED_ROUNDS)
    minimum = min_paired_rounds(criteria.confidence)
    if max_rounds < minimum:
        raise MinervaError(
            f"--rounds {max_rounds} cannot confirm anything at {criteria.confidence:g} confidence: "
            f"the signed-rank test needs at least {minimum} rounds"
        )
    command = bench_command(args)
    kind, base, head, repo = make_builds(args.base, args.head, args.repo)
    started = time.perf_counter()
    errors: list[str] = []
    notes: list[str] = []
    done: list[Round] = []
    looks: list[Look] = []
    clocks: dict[str, dict[str, ClockChoice]] = {}
    stopped = "rounds"
    method = args.method
    warm: WarmSides | None = None
    measured_figures = tuple(
        dict.fromkeys([*figures, *(CPU_FIGURES[f] for f in figures if f in CPU_FIGURES), *CLOCK_CHOICE_FIGURES])
    )
    with contextlib.ExitStack() as stack:
        if repo is not None:
            assert base.commit is not None and head.commit is not None
            trees = stack.enter_context(worktrees(repo, {"base": base.commit, "head": head.commit}))
            for build in (base, head):
                tree = trees[build.role]
                build.cwd = str(tree)
                build.pythonpath = str((tree / args.src).absolute())
        for build in (base, head):
            if not args.command:
                probe_build(build, args.timeout)
            check_provenance(build, args.src)
        method, why = _method(args, base, head)
        if why:
            notes.append(why)
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minerva-compare-runs-")))
        builds = {"base": base, "head": head}
        failures: dict[str, list[str]] = {}
        skipped: dict[str, None] = {}
        if method == "warm":
            warm = WarmSides(
                builds,
                bench_options(args),
                runs=args.runs,
                warmup=args.warmup,
                timeout=args.timeout,
                restart_every=args.restart_every,
                cpus=pinned_cpus(args.cpus, args.threads),
            )
            stack.callback(warm.stop)

        def measure(side: str, index: int) -> Figures:
            if warm is not None:
                figures_now, failed = warm.measure(side, index)
            else:
                document = run_benchmark(builds[side], command, scratch / f"{side}-{index}.json", args.timeout)
                figures_now, failed, round_notes = round_figures(document, measured_figures)
                skipped.update(dict.fromkeys(f"{builds[side].label}: {line}" for line in round_notes))
            for line in failed:
                failures.setdefault(f"{builds[side].label}: {line}", []).append(str(index))
            return figures_now

        points = look_points(max_rounds, sequential=sequential, first=first_look(criteria.confidence))
        progress = _progress(max_rounds * 2, out)
        measuring = time.perf_counter()
        try:
            for measured in iter_rounds(
                measure,
                max_rounds,
                criteria.seed,
                on_run=lambda side, i: progress.update(1) if progress is not None else None,
            ):
                done.append(measured)
                if failures:
                    break
                now = time.perf_counter()
                per_round = (now - measuring) / len(done)
                out_of_time = args.budget is not None and now - started + per_round > args.budget
                if len(done) in points or (out_of_time and len(done) >= minimum):
                    if not clocks:
                        clocks = choose_all_clocks(done, figures, args.clock)
                    look = judge_look(
                        done,
                        criteria,
                        figures,
                        clocks,
                        index=len(looks) + 1,
                        alpha=look_alpha(criteria.alpha, len(looks) + 1, sequential=sequential and len(points) > 1),
                    )
                    looks.append(look)
                    if look.decided and sequential:
                        stopped = "decided"
                        break
                if out_of_time:
                    stopped = "budget"
                    break
        except MinervaError as exc:
            errors.append(f"round {len(done) + 1}: {exc}")
        finally:
            if progress is not None:
                progress.close()
        if warm is not None:
            warm_errors, warm_notes = warm.problems()
            errors += warm_errors
            skipped.update(dict.fromkeys(warm_notes))
        errors += [f"{line} (rounds {', '.join(rounds)})" for line, rounds in failures.items()]
    if not errors and not looks:
        errors.append(
            f"the budget of {args.budget:g} s ran out after {len(done)} rounds; the signed-rank test needs at least "
            f"{minimum} (give a longer --budget)"
        )
    comparisons: list[Comparison] = []
    also: list[Comparison] = []
    if looks and not errors:
        comparisons, also = looks[-1].comparisons, looks[-1].also
        notes += [
            choice.reason for name in clocks for choice in clocks[name].values() if choice.wall_spread is not None
        ]
        seen = {name for r in done for name in (*r.base, *r.head)}
        notes += [f"{name}: not measured on both sides in every round" for name in sorted(seen - set(clocks))]
        notes.append(_stop_note(stopped, looks[-1], max_rounds, args.budget))
    notes = [*skipped, *notes]
    settings = {
        "method": method,
        "sequential": sequential,
        "rounds": len(done),
        "max_rounds": max_rounds,
        "budget_s": args.budget,
        "stopped": stopped,
        "looks": [look.as_dict() for look in looks],
        "clock": args.clock,
        "clocks": {name: {f: c.as_dict() for f, c in choices.items()} for name, choices in clocks.items()},
        "runs_per_round": args.runs,
        "restart_every": args.restart_every if warm is not None else None,
        "cpus": warm.cpus if warm is not None else None,
        "worker_starts": warm.starts if warm is not None else None,
        "worker_start_s": warm.start_s if warm is not None else None,
        "order": "ABBA blocks",
        "figures": list(figures),
        "command": command if warm is None else bench_options(args),
        "repo": str(repo) if repo is not None else None,
        "src": args.src if repo is not None else None,
        "timeout_s": args.timeout,
    }
    return compare_document(
        mode=kind,
        criteria=criteria,
        comparisons=comparisons,
        also=also,
        errors=errors,
        notes=notes,
        base=base.as_dict(),
        head=head.as_dict(),
        settings=settings,
        rounds=done,
        elapsed_s=time.perf_counter() - started,
    )


def _stop_note(stopped: str, look: Look, max_rounds: int, budget: float | None) -> str:
    level = f"{(1 - look.alpha) * 100:.3g}% intervals"
    if stopped == "decided":
        found = (
            "confirmed a slowdown"
            if any(c.verdict == "slower" for c in look.comparisons)
            else "decided every judged figure"
        )
        return f"stopped after {look.rounds} rounds: look {look.index} ({level}) {found}"
    if stopped == "budget":
        return f"stopped after {look.rounds} rounds: the next round would overrun the budget of {budget:g} s ({level})"
    return f"ran all {max_rounds} rounds; the last look ({level}) judged them"


def _progress(total: int, out: TextIO) -> Any:
    if not out.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, leave=False, desc="compare")
