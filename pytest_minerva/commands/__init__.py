"""The ``minerva`` command: one module per subcommand, each with ``add_commands(subparsers)``.

Every subcommand takes its shared options from :mod:`pytest_minerva.options` and builds its
session with :func:`pytest_minerva.session.build_session`. Expected failures (bad files,
missing models, no network, an OS error on a path) become one line on stderr and exit
status 1, never a traceback; a bad option value is argparse's usage error (exit 2), before
anything runs. A bug (any other exception) is one "internal error" line too, exit 1;
``MINERVA_TRACEBACK=1`` shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from pytest_minerva.errors import MinervaError, printable

#: Set to 1 to see the traceback of an internal error instead of its one line.
TRACEBACK_VARIABLE = "MINERVA_TRACEBACK"

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
    except KeyboardInterrupt:
        print("minerva: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, MinervaError | OSError) and os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        print(f"minerva: {failure_line(exc, _redactor(args))}", file=sys.stderr)
        return 1


def failure_line(exc: Exception, redact: Callable[[str], str] = str) -> str:
    """The one line ``minerva`` prints for an exception that ended a command (``redact`` is applied
    to the exception's text before it is escaped or shortened)."""
    if isinstance(exc, MinervaError):
        return printable(redact(str(exc)))
    if isinstance(exc, OSError):  # a path the checks could not foresee: a disk filling up, a file vanishing
        where = f"{printable(redact(str(exc.filename)))}: " if exc.filename else ""
        return f"{where}{printable(redact(str(exc.strerror or exc)))}"
    detail = printable(redact(f"{type(exc).__name__}: {exc}"), limit=300)
    return f"internal error ({detail}); rerun with {TRACEBACK_VARIABLE}=1 for the traceback and please report it"


def _redactor(args: argparse.Namespace) -> Callable[[str], str]:
    # Whatever a bug put in a message, the key named by --api-key-env is not printed.
    name = getattr(args, "api_key_env", None)
    if not name:
        return str
    from pytest_minerva.serving.client import ApiKey

    return ApiKey(os.environ.get(name, "")).redact
