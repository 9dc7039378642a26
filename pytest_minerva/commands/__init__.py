"""The ``minerva`` command: one module per subcommand, each with ``add_commands(subparsers)``.

Every subcommand takes its shared options from :mod:`pytest_minerva.options` and builds its
session with :func:`pytest_minerva.session.build_session`. Expected failures (bad files,
missing models, no network) become one line on stderr and a non-zero exit status, never a
traceback; a bad option value is argparse's usage error (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pytest_minerva.errors import MinervaError

#: The subcommand modules, in the order ``minerva --help`` lists them.
COMMAND_MODULES = (
    "pytest_minerva.commands.models",
    "pytest_minerva.commands.verify",
    "pytest_minerva.commands.bench",
    "pytest_minerva.commands.calibrate",
    "pytest_minerva.commands.compare",
    "pytest_minerva.commands.gate",
    "pytest_minerva.commands.serve_bench",
    "pytest_minerva.commands.doctor",
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minerva", description="The ``minerva`` command: models list/fetch, verify, and the benchmark tools."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MinervaError as exc:
        print(f"minerva: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minerva: interrupted", file=sys.stderr)
        return 130
