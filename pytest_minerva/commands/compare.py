"""``minerva compare BASE HEAD``: the command line of :mod:`pytest_minerva.compare`.

Exit status: 0 when nothing is confirmed slower, 1 when at least one comparison is
``slower``, 2 when the comparison could not be made (see :mod:`pytest_minerva.compare`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TextIO

from pytest_minerva.compare import (
    DEFAULT_FIGURES,
    EXIT_ERROR,
    HIGHER_IS_WORSE,
    STATISTICS,
    Criteria,
    build_kind,
    compare_builds,
    compare_document,
    compare_results_files,
    markdown,
)
from pytest_minerva.compare.run import FIXED_ROUNDS
from pytest_minerva.compare.sequential import MAX_ROUNDS
from pytest_minerva.compare.warm import RESTART_EVERY
from pytest_minerva.errors import MinervaError
from pytest_minerva.option_types import (
    Amount,
    Count,
    input_directory,
    kind,
    output_file,
    plain_text,
    seed_value,
    timeout_seconds,
)
from pytest_minerva.options import (
    BACKEND,
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


@kind("fraction")
def _fraction(value: str) -> float:
    try:
        number = float(value.rstrip("%")) / (100 if value.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not (math.isfinite(number) and 0 <= number < 1):
        raise argparse.ArgumentTypeError(f"{value!r} must be a fraction from 0 to below 1, e.g. 0.02 or 2%")
    return number


@kind("fraction")
def _confidence(value: str) -> float:
    number = _fraction(value)
    if not 0.5 <= number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 0.5 and below 1, e.g. 0.95")
    return number


@kind("name")
def _figure(value: str) -> str:
    if value not in HIGHER_IS_WORSE:
        raise argparse.ArgumentTypeError(f"unknown figure {value!r}; choose from {', '.join(HIGHER_IS_WORSE)}")
    return value


@kind("cpu-list")
def _cpus(value: str) -> str:
    if value in ("auto", "none"):
        return value
    parts = [part.strip() for part in value.split(",")]
    if not parts or not all(part.isdigit() and len(part) <= 5 for part in parts):
        raise argparse.ArgumentTypeError(f"{value!r} is not auto, none or a comma-separated list of CPU numbers")
    return ",".join(parts)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``compare`` on the ``minerva`` command line."""
    parser = subparsers.add_parser(
        "compare",
        help="is HEAD slower than BASE? interleaved runs, a paired test and a confidence interval",
        description=(
            "Compare two git revisions, two interpreters / virtual environments, or (--results) two results "
            "files. Exit status: 0 no confirmed regression, 1 a confirmed regression, 2 the comparison "
            "could not be made."
        ),
    )
    parser.add_argument(
        "base", type=plain_text, metavar="BASE", help="git revision, interpreter or venv (results file with --results)"
    )
    parser.add_argument("head", type=plain_text, metavar="HEAD", help="as BASE: the build under suspicion")
    parser.add_argument(
        "--results",
        action="store_true",
        help="BASE and HEAD are 'minerva bench --json' files, compared unpaired (default: run both builds)",
    )
    parser.add_argument(
        "--repo",
        type=input_directory,
        default=".",
        metavar="DIR",
        help="git repository holding the code under test (default: the current directory)",
    )
    parser.add_argument(
        "--src",
        type=plain_text,
        default=".",
        metavar="DIR",
        help="directory inside the repository that goes first on PYTHONPATH (default: its top, '.')",
    )
    add_cli_options(parser, "compare", MODEL, BACKEND, SCENARIO, THREADS, RUNS, WARMUP, model={"action": None})
    parser.add_argument(
        "--rounds",
        type=Count(1, 1000),
        default=None,
        metavar="N",
        help=f"the most interleaved rounds, each measuring both builds once (default: {MAX_ROUNDS} with "
        f"--sequential, else {FIXED_ROUNDS}; at least 6 at 0.95 confidence)",
    )
    parser.add_argument(
        "--sequential",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="look at the rounds at 8, 12, 16, 24, ... and stop once every judged figure is decided, the "
        "error rate spent across the looks (default); --no-sequential: one look after --rounds",
    )
    parser.add_argument(
        "--budget",
        type=Amount(86_400.0, kind="seconds"),
        default=600.0,
        metavar="SECONDS",
        help="stop before a round would take the whole comparison past this wall time, and judge the rounds "
        "measured (default: 600)",
    )
    parser.add_argument(
        "--method",
        choices=("warm", "invocations"),
        default="warm",
        help="warm: each side loads the model once in a worker and runs many rounds (default; a side without "
        "the worker falls back); invocations: a fresh 'minerva bench' process per side per round",
    )
    parser.add_argument(
        "--restart-every",
        type=Count(1, 1000),
        default=RESTART_EVERY,
        metavar="N",
        help=f"with --method warm, restart every worker after N rounds (default: {RESTART_EVERY})",
    )
    parser.add_argument(
        "--cpus",
        type=_cpus,
        default="auto",
        metavar="auto|none|LIST",
        help="with --method warm, pin both sides' workers to these CPUs (e.g. 1 or 2,3); auto (default): the "
        "last --threads CPUs this process may use, when --threads is fewer than those",
    )
    parser.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="judge TTFT, TpT and total time on wall time, on the engine process's CPU time, or (auto, "
        "default) on CPU time where time-slicing dominates the wall-time noise; both are reported",
    )
    parser.add_argument(
        "--command",
        type=plain_text,
        metavar="CMD",
        help="benchmark command instead of 'minerva bench'; {python} is the build's interpreter and the "
        "command must write a results document to {json} (default: minerva bench with the options above)",
    )
    parser.add_argument(
        "--figure",
        action="append",
        type=_figure,
        metavar="NAME",
        help=f"figure to judge; repeatable (default: {', '.join(DEFAULT_FIGURES)})",
    )
    parser.add_argument(
        "--threshold",
        type=_fraction,
        default=0.02,
        metavar="FRACTION",
        help="smallest slowdown that counts, e.g. 0.02 or 2%% (default: 0.02)",
    )
    parser.add_argument(
        "--confidence",
        type=_confidence,
        default=0.95,
        metavar="LEVEL",
        help="confidence of the interval; the test's level is 1 - LEVEL (default: 0.95)",
    )
    parser.add_argument(
        "--statistic",
        choices=STATISTICS,
        default="median",
        help="ratio statistic: median or geometric mean of the per-round ratios (default: median)",
    )
    parser.add_argument(
        "--resamples",
        type=Count(1, 1_000_000),
        default=10_000,
        metavar="N",
        help="bootstrap resamples (default: 10000)",
    )
    parser.add_argument(
        "--seed", type=seed_value, default=0, metavar="N", help="seed of the run order and bootstrap (default: 0)"
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=900.0,
        metavar="SECONDS",
        help="limit for one benchmark invocation (default: 900)",
    )
    parser.add_argument(
        "--json", type=output_file, metavar="PATH", help="write the comparison document here (written on errors too)"
    )
    add_location_options(parser, "compare")
    parser.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``minerva compare``; print the table, write ``--json``; return 0, 1 or 2 (see the module doc)."""
    out = out if out is not None else sys.stdout
    started = time.perf_counter()
    figures = tuple(dict.fromkeys(args.figure or DEFAULT_FIGURES))
    mode = "results" if args.results else build_kind(args.base)
    try:
        criteria = Criteria(args.threshold, args.confidence, args.statistic, args.resamples, args.seed)
    except MinervaError as exc:
        print(f"minerva compare: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        if args.results:
            document = compare_results_files(args.base, args.head, criteria, figures)
        else:
            document = compare_builds(args, criteria, figures, out)
    except MinervaError as exc:
        document = compare_document(
            mode=mode,
            criteria=criteria,
            errors=[str(exc)],
            base={"spec": args.base},
            head={"spec": args.head},
            elapsed_s=time.perf_counter() - started,
        )
    session = build_session(Settings(models=[]))  # the hooks of installed plugins; loads nothing
    document["machine_info"] = session.machine_info()
    session.update_report(document)
    out.write(markdown(document))
    if args.json:
        from pytest_minerva.storage.atomic import atomic_write_json

        try:
            path = atomic_write_json(args.json, document)
        except OSError as exc:
            print(f"minerva compare: {args.json}: cannot write the comparison: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_ERROR
        out.write(f"\nwrote {path}\n")
    if document["status"] == "error":
        print(f"minerva compare: {document['reason']}", file=sys.stderr)
    return int(document["exit_code"])
