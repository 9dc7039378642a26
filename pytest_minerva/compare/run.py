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
    check_provenance,
    make_builds,
    probe_build,
    run_benchmark,
    worktrees,
)
from pytest_minerva.compare.render import compare_document
from pytest_minerva.compare.samples import round_figures, run_samples
from pytest_minerva.compare.schedule import Figures, Round, iter_rounds
from pytest_minerva.compare.verdict import DEFAULT_FIGURES, Criteria, compare_rounds, compare_unpaired
from pytest_minerva.errors import MinervaError
from pytest_minerva.stats.rank import min_paired_rounds, unpaired_can_conclude


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


def compare_builds(args: argparse.Namespace, criteria: Criteria, figures: Sequence[str], out: TextIO) -> dict[str, Any]:
    """Measure two builds interleaved and return the comparison document (raises on setup errors)."""
    command = bench_command(args)
    minimum = min_paired_rounds(criteria.confidence)
    if args.rounds < minimum:
        raise MinervaError(
            f"--rounds {args.rounds} cannot confirm anything at {criteria.confidence:g} confidence: "
            f"the signed-rank test needs at least {minimum} rounds"
        )
    kind, base, head, repo = make_builds(args.base, args.head, args.repo)
    started = time.perf_counter()
    errors: list[str] = []
    done: list[Round] = []
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
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minerva-compare-runs-")))
        builds = {"base": base, "head": head}
        failures: dict[str, list[str]] = {}
        skipped: dict[str, None] = {}

        def measure(side: str, index: int) -> Figures:
            document = run_benchmark(builds[side], command, scratch / f"{side}-{index}.json", args.timeout)
            figures_now, failed, notes = round_figures(document, figures)
            for line in failed:
                failures.setdefault(f"{builds[side].label}: {line}", []).append(str(index))
            skipped.update(dict.fromkeys(f"{builds[side].label}: {line}" for line in notes))
            return figures_now

        progress = _progress(args.rounds * 2, out)
        try:
            for measured in iter_rounds(
                measure,
                args.rounds,
                criteria.seed,
                on_run=lambda side, i: progress.update(1) if progress is not None else None,
            ):
                done.append(measured)
        except MinervaError as exc:
            errors.append(f"round {len(done) + 1}: {exc}")
        finally:
            if progress is not None:
                progress.close()
        errors += [f"{line} (rounds {', '.join(rounds)})" for line, rounds in failures.items()]
    comparisons, notes = compare_rounds(done, criteria, figures) if len(done) == args.rounds else ([], [])
    notes = [*skipped, *notes]
    settings = {
        "rounds": args.rounds,
        "order": "ABBA blocks",
        "figures": list(figures),
        "command": command,
        "repo": str(repo) if repo is not None else None,
        "src": args.src if repo is not None else None,
        "timeout_s": args.timeout,
    }
    return compare_document(
        mode=kind,
        criteria=criteria,
        comparisons=comparisons,
        errors=errors,
        notes=notes,
        base=base.as_dict(),
        head=head.as_dict(),
        settings=settings,
        rounds=done,
        elapsed_s=time.perf_counter() - started,
    )


def _progress(total: int, out: TextIO) -> Any:
    if not out.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="run", file=sys.stderr, leave=False, desc="compare")
