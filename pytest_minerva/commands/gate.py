"""``minerva gate``: the pull-request benchmark gate (:mod:`pytest_minerva.compare.gate`).

    minerva gate asv --base BASE --head HEAD --machine NAME --out gate/asv.json
    minerva gate compare --base BASE --head HEAD --out gate/compare.json
    minerva gate verdict gate/asv.json gate/compare.json

``asv`` and ``compare`` write their finding as JSON and exit 0 whatever the tool found;
``verdict`` exits 0 (no regression, or an acknowledged one), 1 (a confirmed regression) or
2 (a tool could not answer). Bad input to the gate itself (an unreadable asv configuration,
no findings) exits 3 with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TextIO

from pytest_minerva.compare.gate import DEFAULT_FACTOR, DEFAULT_NUMERICS_FACTOR, GateError, run_asv, run_compare
from pytest_minerva.compare.gate_verdict import ACK_LABEL, verdict
from pytest_minerva.errors import printable
from pytest_minerva.option_types import Amount, input_directory, input_file, output_file, plain_text

#: The asv configuration ``gate asv`` reads when ``--config`` is not given.
DEFAULT_ASV_CONFIG = "asv.conf.json"

#: Exit status when the gate itself cannot run (bad input), as opposed to a tool's answer.
EXIT_GATE_ERROR = 3


def _guarded(action: Callable[[], int]) -> int:
    try:
        return action()
    except GateError as exc:
        print(f"bench gate: {printable(exc)}", file=sys.stderr)
        return EXIT_GATE_ERROR


def cmd_gate_asv(args: argparse.Namespace) -> int:
    """``minerva gate asv``: run ``asv continuous`` and write its finding (exit 0, or 3)."""

    def action() -> int:
        run_asv(
            config=args.config or DEFAULT_ASV_CONFIG,
            base=args.base,
            head=args.head,
            out=args.out,
            merge_base=not args.no_merge_base,
            machine=args.machine,
            factor=args.factor,
            numerics_factor=args.numerics_factor,
            asv=args.asv,
            extra=args.extra,
        )
        return 0

    return _guarded(action)


def cmd_gate_compare(args: argparse.Namespace) -> int:
    """``minerva gate compare``: run ``minerva compare`` and write its finding (exit 0, or 3)."""

    def action() -> int:
        run_compare(
            repo=args.repo,
            base=args.base,
            head=args.head,
            out=args.out,
            merge_base=not args.no_merge_base,
            minerva=args.minerva,
            extra=args.extra,
        )
        return 0

    return _guarded(action)


def cmd_gate_verdict(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``minerva gate verdict``: the summary, and exit 0, 1 or 2 (3 on bad input)."""
    return _guarded(
        lambda: verdict(
            args.findings,
            directory=args.dir,
            tools=args.tools,
            repo=args.repo,
            labels=args.labels,
            ack_label=args.ack_label,
            summary=args.summary,
            out=out,
        )
    )


def _commits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, type=plain_text, metavar="REF", help="the pull request's base commit")
    p.add_argument("--head", required=True, type=plain_text, metavar="REF", help="the pull request's head commit")
    p.add_argument("--no-merge-base", action="store_true", help="compare with BASE itself, not merge-base(BASE, HEAD)")
    p.add_argument("--out", required=True, type=output_file, metavar="FILE", help="where to write the finding (JSON)")
    p.add_argument("extra", nargs="*", type=plain_text, metavar="-- ARGS", help="more arguments for the tool, after --")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``gate`` (``asv``, ``compare``, ``verdict``) on the ``minerva`` command line."""
    parser = subparsers.add_parser(
        "gate",
        help="pull-request benchmark gate: asv and minerva compare, base against head, and the verdict",
        description="The pull-request benchmark gate: did the head get slower than its base, or could we not tell?",
    )
    sub = parser.add_subparsers(dest="gate_command", required=True, metavar="COMMAND")

    asv = sub.add_parser("asv", help="run asv continuous and sort its outcome")
    _commits(asv)
    # No default here: argparse would check a default string too, and a missing asv.conf.json
    # is the gate's own bad input (exit 3), while a missing file named with --config is a usage error.
    asv.add_argument(
        "--config", type=input_file, metavar="FILE", help=f"asv configuration (default: {DEFAULT_ASV_CONFIG})"
    )
    asv.add_argument("--machine", type=plain_text, metavar="NAME", help="asv machine name (default: asv's)")
    asv.add_argument(
        "--factor",
        type=Amount(100.0, low=1.0),
        default=DEFAULT_FACTOR,
        metavar="FACTOR",
        help=f"asv's change factor, above 1 (default: {DEFAULT_FACTOR})",
    )
    asv.add_argument(
        "--numerics-factor",
        type=Amount(100.0, low=1.0),
        default=DEFAULT_NUMERICS_FACTOR,
        metavar="FACTOR",
        help="change factor for the numerics benchmarks (bench_numerics: a larger KL is worse; "
        f"a figure that was exactly 0 is flagged on any change), above 1 (default: {DEFAULT_NUMERICS_FACTOR})",
    )
    asv.add_argument(
        "--asv", type=plain_text, default="asv", metavar="PATH", help="the asv command (default: asv on PATH)"
    )
    asv.set_defaults(func=cmd_gate_asv)

    compare = sub.add_parser("compare", help="run minerva compare and read its JSON")
    _commits(compare)
    compare.add_argument(
        "--repo", type=input_directory, default=".", metavar="DIR", help="the git checkout (default: .)"
    )
    compare.add_argument(
        "--minerva", type=plain_text, default="minerva", metavar="PATH", help="the minerva command (default: on PATH)"
    )
    compare.set_defaults(func=cmd_gate_compare)

    judge = sub.add_parser("verdict", help="write the summary and pass or fail the check")
    judge.add_argument(
        "findings", nargs="*", type=input_file, metavar="FILE", help="JSON files written by the asv / compare steps"
    )
    judge.add_argument(
        "--dir", type=input_directory, metavar="DIR", help="where the steps wrote <tool>.json (with --tools)"
    )
    judge.add_argument(
        "--tools",
        type=plain_text,
        metavar="LIST",
        help="tools that ran, comma-separated (asv, compare); each must have written DIR/<tool>.json",
    )
    judge.add_argument(
        "--summary",
        type=output_file,
        metavar="FILE",
        help="markdown file to append to (default: $GITHUB_STEP_SUMMARY)",
    )
    judge.add_argument(
        "--labels", type=plain_text, metavar="JSON", help="pull request labels (default: $MINERVA_PR_LABELS)"
    )
    judge.add_argument(
        "--ack-label",
        type=plain_text,
        default=os.environ.get("MINERVA_ACK_LABEL") or ACK_LABEL,
        metavar="NAME",
        help=f"label that accepts a slowdown (default: $MINERVA_ACK_LABEL or {ACK_LABEL})",
    )
    judge.add_argument(
        "--repo",
        type=input_directory,
        metavar="DIR",
        help="checkout whose commits may carry the trailer (default: the one the tools ran in)",
    )
    judge.set_defaults(func=cmd_gate_verdict)
