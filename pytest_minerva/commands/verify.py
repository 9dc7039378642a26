"""``minerva verify PATH...``: check GGUF / SafeTensors files without loading them."""

from __future__ import annotations

import argparse
import sys


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    verify = subparsers.add_parser("verify", help="check GGUF / SafeTensors files without loading them")
    verify.add_argument("paths", nargs="+", metavar="PATH")
    verify.add_argument("--deep", action="store_true", help="also scan tensor data for NaN/Inf")
    verify.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from pytest_minerva.formats import verify_command

    return verify_command(args.paths, deep=args.deep, out=sys.stdout)
