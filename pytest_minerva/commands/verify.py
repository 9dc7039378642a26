"""``minerva verify PATH...``: check GGUF / SafeTensors files without loading them."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from pytest_minerva.option_types import kind


@kind("checked-path")
def checked_path(value: str) -> str:
    """A path ``verify`` examines itself: a bad one is its one ``PATH: problem`` line and exit 1,
    and the other paths are still checked, so nothing is refused while parsing."""
    return value


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser("verify", help="check GGUF / SafeTensors files without loading them")
    verify.add_argument("paths", nargs="+", type=checked_path, metavar="PATH")
    verify.add_argument("--deep", action="store_true", help="also scan tensor data for NaN/Inf")
    verify.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from pytest_minerva.formats import verify_command

    return verify_command(args.paths, deep=args.deep, out=out if out is not None else sys.stdout)
