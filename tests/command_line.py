"""Running the ``minerva`` command in this process, with its output and exit status captured."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

from pytest_minerva.commands import main


@dataclass
class Ran:
    code: int
    out: str
    err: str


def run_cli(*argv: str) -> Ran:
    """``minerva ARGV...``: its exit status (argparse's ``SystemExit`` included; a message as the
    status counts as 1, as Python's own exit does) and what it wrote on stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return Ran(code, out.getvalue(), err.getvalue())
