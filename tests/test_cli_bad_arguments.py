"""Bad arguments to every ``minerva`` subcommand: one line and exit 1 or 2, never a traceback,
and nothing measured first.

The matrix walks the parser (nested subcommands included), reads each option's kind from
its argparse ``type`` (a ``kind`` attribute; ``choices`` and flags need none) and feeds the
bad values of that kind: numbers past each end of the option's bound, ``nan``, words; paths
that are directories, under a regular file, too long, FIFOs, devices, symlink loops, missing;
broken URLs; control characters in names. A new subcommand or option joins the matrix by
itself, and one whose kind the table does not know fails it.

A bad value must be argparse's usage error (exit 2): the usage lines, then one
``minerva CMD: error: argument OPTION: ...`` line. The command's handler is replaced by one
that fails the test, so a value that gets past parsing cannot start a measurement. Only
``verify``'s paths are judged by the command itself (one ``PATH: problem`` line, exit 1).

The other tests pin the reported breaks: ``bench --threads 100000`` and ``bench --json DIR``
refused before anything loads, unusable cache directories (command line, environment, pytest
option and ini), ``calibrate --tolerances`` missing, ``serve-bench --endpoint 'http://[::1'``,
a 300-character file name, a hostile GGUF architecture, and the reports that print strings
from files.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from command_line import Ran, run_cli
from model_files import small_gguf

from pytest_minerva.commands import make_parser

LONG_NAME = "a" * 300
ESCAPES = "x\x1b[31m\nforged: ok"


def safe(text: str) -> bool:
    """No character that ends a line, moves the cursor or recolours a terminal."""
    return all(ch == " " or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp") for ch in text)


# -- running the command line ---------------------------------------------------------------------


class HandlerReached(BaseException):
    """Raised by a subcommand's replaced handler: the bad value got past parsing."""


def run_cli_process(*argv: str, timeout: float = 60) -> Ran:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_minerva.commands", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "100"},
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def assert_usage_error(ran: Ran, command: str, argument: str) -> str:
    """Exit 2, argparse's usage lines, and one error line naming ``argument``; returns the message."""
    assert ran.code == 2, (ran.code, ran.err, ran.out)
    assert "Traceback" not in ran.err and "Traceback" not in ran.out
    lines = ran.err.rstrip("\n").split("\n")
    assert lines[0].startswith("usage: "), ran.err
    assert all(line.startswith(" ") for line in lines[1:-1]), f"more than the usage and one error line:\n{ran.err}"
    prefix = f"minerva {command}: error: argument {argument}: "
    assert lines[-1].startswith(prefix) and len(lines[-1]) > len(prefix), ran.err
    assert safe(lines[-1]), f"the error line carries control characters: {lines[-1]!r}"
    return lines[-1][len(prefix) :]


def assert_one_line(ran: Ran, code: int = 1) -> str:
    """Exit ``code`` and exactly one non-empty line of message (on stdout and stderr together)."""
    assert ran.code == code, (ran.code, ran.err, ran.out)
    text = ran.out + ran.err
    assert "Traceback" not in text
    lines = [line for line in text.split("\n") if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    assert safe(lines[0]), f"the line carries control characters: {lines[0]!r}"
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


# -- hostile paths -------------------------------------------------------------------------------


def can_create_in(directory: Path) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def read_only_directory(base: Path) -> Path | None:
    """A directory this process cannot write in: a 0555 one, or (root writes there anyway) /sys."""
    ro = base / "read-only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    if not can_create_in(ro):
        return ro
    system = Path("/sys")
    if system.is_dir() and not can_create_in(system):
        return system
    return None


class Hostile:
    """The hostile paths, made once: each bad path value of the matrix is one of these names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "a-directory").mkdir()
        (root / "a-file.toml").write_text("x = 1\n")
        os.mkfifo(root / "a-fifo")
        (root / "loop-a").symlink_to(root / "loop-b")
        (root / "loop-b").symlink_to(root / "loop-a")
        self.read_only = read_only_directory(root)
        self.proc = Path("/proc/x") if Path("/proc").is_dir() else None
        self.loop = root / "loop-a"
        self.fifo = root / "a-fifo"
        self.under_file = root / "a-file.toml" / "inside.json"

    def path(self, name: str) -> Path | None:
        root = self.root
        return {
            "directory": root / "a-directory",
            "regular-file": root / "a-file.toml",
            "under-a-file": self.under_file,
            "300-char-name": root / LONG_NAME,
            "fifo": self.fifo,
            "symlink-loop": self.loop,
            "missing-file": root / "no-such-dir" / "t.toml",
            "missing-dir": root / "no-such-dir",
            "proc": self.proc,
            "dev-null": Path("/dev/null") if Path("/dev/null").exists() else None,
            "read-only-dir": self.read_only,
            "in-read-only-dir": self.read_only / "out.json" if self.read_only else None,
        }[name]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    found = Hostile(tmp_path_factory.mktemp("hostile"))
    yield found
    (found.root / "read-only").chmod(0o755)


# -- the kinds and their bad values ----------------------------------------------------------------

#: The brief's bad numbers; each kind keeps those outside its option's bound, plus one past each end.
NUMBERS = ["0", "-1", "1e30", "99999999999999999999", "nan", "abc", ""]
#: Bad values of the kinds that are neither numbers nor paths.
WORDS = {
    "text": ["", ESCAPES],
    "name": ["", "NOT A NAME", ESCAPES],
    "scenario": ["", "huge", "sweep-0", "sweep-99999999999999999999"],
    "env-var": ["", "A=B", "1X", ESCAPES],
    "url": ["", "http://[::1", "ftp://x", "http://", "http://x:99999", "not a url", "http://x\n"],
    "fraction": ["", "-1", "1", "1e30", "99999999999999999999", "nan", "abc"],
    "cpu-list": ["", "-1", "1,,x", "abc", "999999", ESCAPES],
    "choice": ["", "bogus"],
}
#: Bad paths of each path kind, by :meth:`Hostile.path` name.
_COMMON = ["under-a-file", "300-char-name", "fifo", "symlink-loop"]
PATHS = {
    "output-file": ["directory", *_COMMON, "proc", "dev-null", "in-read-only-dir"],
    "input-file": ["directory", *_COMMON, "missing-file", "proc"],
    "checked-path": [*_COMMON, "missing-file", "proc"],
    "input-dir": ["regular-file", *_COMMON, "missing-dir", "proc"],
    "writable-dir": ["regular-file", *_COMMON, "proc", "read-only-dir"],
    "directory": ["regular-file", *_COMMON],
}
#: A good value of each kind, for the arguments a command requires besides the one under test.
VALID = {"text": "tiny-random-llama", "output-file": "{root}/valid-out.json", "checked-path": "{root}/a-file.toml"}


def kind_of(action: argparse.Action) -> str:
    """The kind of values ``action`` takes: its ``type``'s ``kind``, ``choice`` or ``flag``."""
    if action.nargs == 0:
        return "flag"
    if action.choices is not None:
        return "choice"
    found = getattr(action.type, "kind", None)
    if found is None:
        raise LookupError(
            f"{label(action)}: cannot tell what kind of value it takes (type={action.type!r}, "
            f"metavar={action.metavar!r}); give it a type from pytest_minerva.option_types (or one with a "
            "`kind`) so the bad-argument matrix can feed it"
        )
    return str(found)


def bad_values(action: argparse.Action, kind: str) -> list[str]:
    """The bad values for ``action``; a path kind's are :meth:`Hostile.path` names."""
    if kind in ("integer", "threads"):
        low, high = action.type.low, action.type.high  # type: ignore[union-attr]
        extra = [str(low - 1), str(high + 1), *(["100000"] if kind == "threads" else [])]
        return list(dict.fromkeys(v for v in [*NUMBERS, *extra] if not (v == "0" and low <= 0)))
    if kind in ("number", "seconds"):
        low, high = action.type.low, action.type.high  # type: ignore[union-attr]
        return list(dict.fromkeys([*NUMBERS, "inf", f"{low:g}", f"{high * 2:g}"]))
    if kind == "integer-list":
        high = action.type.item.high  # type: ignore[union-attr]
        return ["", ",", "0", "-1", "1,0", "1e30", "nan", "abc", "99999999999999999999", f"1,{high + 1}"]
    if kind in PATHS:
        return PATHS[kind]
    if kind in WORDS:
        return WORDS[kind]
    raise LookupError(f"{label(action)}: the matrix has no bad values for kind {kind!r}; add them to this test")


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every runnable subcommand: its words (``("models", "list")``) and its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs and path:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


def arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]


def label(action: argparse.Action) -> str:
    """How argparse names the argument in its error line."""
    return "/".join(action.option_strings) or str(action.metavar or action.dest)


@dataclass(frozen=True)
class Case:
    path: tuple[str, ...]
    option: str
    kind: str
    value: str = ""  # for a path kind, a Hostile.path name
    problem: str = ""  # why the matrix cannot feed this option (fails the case)


def matrix() -> list[Case]:
    cases = []
    for path, parser in leaves(make_parser()):
        for action in arguments(parser):
            try:
                kind = kind_of(action)
                values = [] if kind == "flag" else bad_values(action, kind)
            except LookupError as exc:
                cases.append(Case(path, label(action), "?", problem=str(exc)))
                continue
            cases += [Case(path, label(action), kind, value) for value in values]
    return cases


def case_id(case: Case) -> str:
    return f"{' '.join(case.path)} {case.option} {case.kind}={ascii(case.value)[1:-1][:40] or 'empty'}"


def leaf_parser(path: tuple[str, ...]) -> Any:
    return dict(leaves(make_parser()))[path]


def find_action(parser: argparse.ArgumentParser, option: str) -> argparse.Action:
    return next(a for a in arguments(parser) if label(a) == option)


def valid_value(action: argparse.Action, h: Hostile) -> str:
    kind = kind_of(action)
    if kind not in VALID:
        raise LookupError(f"{label(action)} is required and the matrix has no good {kind!r} value for it")
    return VALID[kind].format(root=h.root)


def argv_for(path: tuple[str, ...], target: str, value: str, h: Hostile) -> list[str]:
    """The subcommand, its required arguments with good values, and ``value`` for ``target``."""
    argv, positionals, after_dashes = [*path], list[str](), list[str]()
    for action in arguments(leaf_parser(path)):
        if action.option_strings:
            if label(action) == target:
                argv.append(f"{action.option_strings[-1]}={value}")
            elif action.required:
                argv.append(f"{action.option_strings[-1]}={valid_value(action, h)}")
        elif label(action) == target:
            (after_dashes if str(action.metavar).startswith("--") else positionals).append(value)
        elif action.nargs not in ("?", "*"):
            positionals.append(valid_value(action, h))
    return argv + positionals + (["--", *after_dashes] if after_dashes else [])


CASES = matrix()


def test_the_matrix_walks_every_subcommand_nested_ones_included() -> None:
    commands = {" ".join(path) for path, _ in leaves(make_parser())}
    expected = {"models list", "models fetch", "verify", "bench", "calibrate", "compare", "serve-bench", "doctor"}
    assert expected | {"gate asv", "gate compare", "gate verdict"} <= commands
    assert {" ".join(c.path) for c in CASES} == commands, "every subcommand has an argument the matrix feeds"


def test_an_option_of_unknown_kind_fails_the_matrix_with_a_clear_message() -> None:
    parser = argparse.ArgumentParser(prog="minerva new")
    untyped = parser.add_argument("--budget", metavar="N")
    with pytest.raises(LookupError, match=r"--budget: cannot tell what kind of value it takes .*metavar='N'"):
        kind_of(untyped)
    typed_without_kind = parser.add_argument("--colour", type=int)
    with pytest.raises(LookupError, match="--colour: cannot tell"):
        kind_of(typed_without_kind)
    odd = parser.add_argument("--odd", type=type("Odd", (), {"kind": "colour", "__call__": str})())
    with pytest.raises(LookupError, match="--odd: the matrix has no bad values for kind 'colour'"):
        bad_values(odd, kind_of(odd))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_bad_argument_is_one_line_and_nothing_runs(
    case: Case, hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not case.problem, case.problem
    value = case.value
    if case.kind in PATHS:
        found = hostile.path(case.value)
        if found is None:
            pytest.skip(f"no {case.value} path on this machine")
        value = str(found)
    argv = argv_for(case.path, case.option, value, hostile)
    if case.kind == "checked-path":  # verify judges its paths itself; a subprocess in case one hangs
        line = assert_one_line(run_cli_process(*argv))
        assert line.startswith(value), line
        return
    stop_the_handler(case.path, monkeypatch)
    ran = run_cli(*argv)
    assert ran.out == ""
    assert_usage_error(ran, " ".join(case.path), case.option)


def stop_the_handler(path: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the subcommand's handler, and the session builder, with ones that fail the test."""
    handler = leaf_parser(path).get_default("func")
    module = importlib.import_module(handler.__module__)

    def reached(*_args: Any, **_kwargs: Any) -> int:
        raise HandlerReached(f"{' '.join(path)}: the bad value got past parsing and the command started")

    monkeypatch.setattr(module, handler.__name__, reached)
    monkeypatch.setattr("pytest_minerva.session.build_session", reached)
    if hasattr(module, "build_session"):
        monkeypatch.setattr(module, "build_session", reached)


# -- 12: --threads is bounded by the machine, every number by its option ---------------------------


def fail_if_called(what: str) -> Callable[..., Any]:
    def called(*_args: Any, **_kwargs: Any) -> Any:
        raise HandlerReached(f"{what} was called before the arguments were checked")

    return called


@pytest.mark.parametrize("threads", ["100000", "99999999999999999999"])
def test_bench_threads_beyond_the_machine_is_refused_before_llama_cpp_loads(
    threads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pytest_minerva.timing.harness.load_backend", fail_if_called("load_backend"))
    monkeypatch.setattr("pytest_minerva.commands.bench.build_session", fail_if_called("build_session"))
    ran = run_cli("bench", "--model", "tiny-random-llama", "--backend", "llama_cpp", "--threads", threads)
    message = assert_usage_error(ran, "bench", "--threads")
    cpus = cpus_here()
    assert message == f"{threads!r} must be at most {4 * cpus} (4 x the {cpus} CPUs this process may use)"


def cpus_here() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def test_threads_up_to_four_per_cpu_are_accepted_everywhere() -> None:
    limit = 4 * cpus_here()
    bench = make_parser().parse_args(["bench", "--model", "m", "--threads", str(limit)])
    assert bench.threads == limit
    calibrate = make_parser().parse_args(["calibrate", "--threads", str(limit)])
    assert calibrate.threads == limit


def test_pytest_threads_and_timeout_are_bounded_on_the_command_line_and_in_the_ini(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest("--minerva-threads", "100000")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --minerva-threads: '100000' must be at most *"])
    result = pytester.runpytest("--minerva-timeout", "1e30")
    result.stderr.fnmatch_lines(["*argument --minerva-timeout: '1e30' must be at most 86400*"])
    pytester.makeini("[pytest]\nminerva_threads = 99999999999999999999\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option minerva_threads: '99999999999999999999' must be at most *"])


# -- 14: output paths are checked before anything is measured --------------------------------------


def test_bench_json_directory_is_refused_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_minerva.commands.bench.build_session", fail_if_called("build_session"))
    monkeypatch.setattr("pytest_minerva.timing.harness.load_backend", fail_if_called("load_backend"))
    ran = run_cli("bench", "--model", "tiny-random-llama", "--backend", "llama_cpp", "--json", str(tmp_path))
    assert assert_usage_error(ran, "bench", "--json") == f"{tmp_path}: is a directory; give a file name"
    (tmp_path / "a-file").write_text("")
    ran = run_cli("bench", "--model", "tiny-random-llama", "--csv", str(tmp_path / "a-file" / "r.csv"))
    assert_usage_error(ran, "bench", "--csv")


def test_calibrate_refuses_a_tolerances_file_it_could_not_rewrite_before_measuring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # /proc/version is a readable regular file in a directory no one can create files in (root included)
    tolerances = Path("/proc/version")
    if not tolerances.is_file():
        pytest.skip("no /proc/version here")
    monkeypatch.setattr("pytest_minerva.commands.calibrate.build_session", fail_if_called("build_session"))
    line = assert_one_line(run_cli("calibrate", "--tolerances", str(tolerances)))
    assert line.startswith("minerva: /proc/version: cannot "), line


# -- 13: tracebacks become one line ----------------------------------------------------------------


def cache_dir_cases(h: Hostile) -> dict[str, Path]:
    cases = {"under a file": h.under_file, "a symlink loop": h.loop, "a FIFO": h.fifo}
    if h.read_only is not None:
        cases["read-only"] = h.read_only
    if h.proc is not None:
        cases["in /proc"] = h.proc
    return cases


def test_unusable_cache_directories_are_usage_errors_on_the_command_line(hostile: Hostile) -> None:
    for what, path in cache_dir_cases(hostile).items():
        ran = run_cli("models", "list", "--cache-dir", str(path))
        message = assert_usage_error(ran, "models list", "--cache-dir")
        assert message.startswith(f"{path}: "), (what, message)


def test_unusable_cache_directories_from_the_environment_are_one_line(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    for what, path in cache_dir_cases(hostile).items():
        monkeypatch.setenv("MINERVA_CACHE_DIR", str(path))
        line = assert_one_line(run_cli("models", "list"))
        assert line.startswith(f"minerva: cache directory {path}: "), (what, line)


def test_unusable_cache_directories_are_one_usage_error_in_pytest(
    pytester: pytest.Pytester, hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile("def test_one(minerva_session):\n    pass\n\ndef test_two(minerva_session):\n    pass\n")
    for what, path in cache_dir_cases(hostile).items():
        result = pytester.runpytest("--minerva-cache-dir", str(path))
        assert result.ret == pytest.ExitCode.USAGE_ERROR, what
        result.stderr.fnmatch_lines([f"*error: argument --minerva-cache-dir: {path}: *"])
        assert "Traceback" not in result.stdout.str() + result.stderr.str()
    read_only = hostile.read_only or hostile.loop
    pytester.makeini(f"[pytest]\nminerva_cache_dir = {read_only}\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: ini option minerva_cache_dir: {read_only}: *"])
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("MINERVA_CACHE_DIR", str(read_only))
    result = pytester.runpytest("--minerva-threads", "1")  # the plugin starts at configure
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: cache directory {read_only}: *"])
    result = pytester.runpytest()  # dormant until a test's fixture starts it: one line, no test run
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines([f"*Exit: pytest-minerva: cache directory {read_only}: *"])
    result.assert_outcomes()


def test_calibrate_with_a_missing_tolerances_file_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_minerva.commands.calibrate.build_session", fail_if_called("build_session"))
    ran = run_cli("calibrate", "--tolerances", "/nonexistent/t.toml")
    assert assert_usage_error(ran, "calibrate", "--tolerances") == "/nonexistent/t.toml: no such file"
    ran = run_cli("calibrate", "--threads", "0")
    assert assert_usage_error(ran, "calibrate", "--threads") == "'0' must be at least 1"


def test_serve_bench_with_a_broken_endpoint_url_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pytest_minerva.commands.serve_bench.build_session", fail_if_called("build_session"))
    message = assert_usage_error(run_cli("serve-bench", "--endpoint", "http://[::1"), "serve-bench", "--endpoint")
    assert message.startswith("'http://[::1' is not a URL")


@pytest.mark.parametrize("command", ["bench", "serve-bench"])
def test_a_300_character_model_file_name_is_one_line(command: str, tmp_path: Path) -> None:
    path = tmp_path / f"{LONG_NAME}.gguf"
    line = assert_one_line(run_cli(command, "--model", str(path)))
    assert line.startswith("minerva: ") and str(path) in line


def test_verify_with_a_300_character_name_is_one_line_and_exit_1(tmp_path: Path) -> None:
    path = tmp_path / f"{LONG_NAME}.gguf"
    line = assert_one_line(run_cli("verify", str(path)))
    assert line.startswith(f"{path}: ")


def test_an_os_error_escaping_a_command_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(_args: Any) -> int:
        raise OSError(28, "No space left on device", "/results/r.json")

    monkeypatch.setattr("pytest_minerva.commands.models.cmd_models_list", full_disk)
    assert assert_one_line(run_cli("models", "list")) == "minerva: /results/r.json: No space left on device"


def test_a_bug_is_one_internal_error_line_unless_the_traceback_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(_args: Any) -> int:
        raise KeyError("oops\x1b[2J")

    monkeypatch.setattr("pytest_minerva.commands.models.cmd_models_list", bug)
    ran = run_cli("models", "list")
    assert ran.code == 1 and ran.out == ""
    assert ran.err == (
        "minerva: internal error (KeyError: 'oops\\x1b[2J'); rerun with MINERVA_TRACEBACK=1 for the traceback "
        "and please report it\n"
    )
    monkeypatch.setenv("MINERVA_TRACEBACK", "1")
    with pytest.raises(KeyError):
        run_cli("models", "list")


# -- 9: strings from files are printed as one escaped line -----------------------------------------

EVIL = "\x1b[31mx\nevil.gguf: ok"


def test_verify_prints_a_hostile_architecture_escaped(tmp_path: Path) -> None:
    path = small_gguf(tmp_path / "model.gguf", EVIL)
    ran = run_cli("verify", str(path))
    assert "\x1b" not in ran.out + ran.err
    lines = ran.out.splitlines()
    assert not [line for line in lines if line.startswith("evil.gguf")], ran.out
    assert [line for line in lines if not line.startswith(" ")] == [f"{path}: ok"]
    assert any("\\x1b[31mx\\nevil.gguf: ok" in line for line in lines), ran.out


def table_rows(text: str) -> list[list[str]]:
    """The cells of each markdown table row (``|`` escaped as ``\\|`` stays inside its cell)."""
    return [re.split(r"(?<!\\)\|", line)[1:-1] for line in text.splitlines() if line.startswith("|")]


def test_the_bench_report_escapes_strings_from_files_and_engines() -> None:
    from pytest_minerva.models.catalog import fixtures_dir
    from pytest_minerva.storage import results
    from pytest_minerva.timing import report

    document = results.load(fixtures_dir() / "golden" / "bench_schema_v1.json")
    document["settings"]["model"] = EVIL
    document["backends"][0]["model"] = EVIL
    document["benchmarks"][0].update(error="engine said: a | b\n| forged | row |", stats={}, itl_ms=None, breakdown=[])
    document["backends"].append({**document["backends"][0], "status": "unavailable", "reason": EVIL, "case_id": "c"})
    text = report.markdown(document)
    assert "\x1b" not in text
    assert not [line for line in text.splitlines() if line.startswith(("evil.gguf", "| forged"))], text
    widths = {len(row) for row in table_rows(text) if len(row) > 3}
    assert widths == {10, 3} or widths == {10}, widths  # every scenario row keeps its ten cells
    assert "error: engine said: a \\| b\\n\\| forged \\| row \\|" in text


def test_the_compare_report_escapes_benchmark_names_from_results_files() -> None:
    from pytest_minerva.compare import Criteria, compare_document, markdown

    document = compare_document(mode="results", criteria=Criteria(0.02, 0.95, "median", 100, 0), errors=[EVIL])
    document["comparisons"] = [
        {
            "benchmark": "a|b" + EVIL,
            "figure": "ttft_ms",
            "base_median": 1.0,
            "head_median": 1.0,
            "ratio": 1.0,
            "ci_low": 0.9,
            "ci_high": 1.1,
            "p_value": 0.5,
            "verdict": "no change",
        }
    ]
    document["base"] = {"spec": EVIL}
    text = markdown(document)
    assert "\x1b" not in text
    assert not [line for line in text.splitlines() if line.startswith("evil.gguf")], text
    assert [len(row) for row in table_rows(text)] == [8, 8, 8]


def test_doctor_and_models_list_escape_what_engines_and_catalogs_say(tmp_path: Path) -> None:
    from pytest_minerva.commands.doctor import EngineCheck, render
    from pytest_minerva.commands.models import models_table
    from pytest_minerva.derive.cache import ArtifactCache
    from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec
    from pytest_minerva.models.resolve import Resolver

    check = EngineCheck("llama_cpp", "cpu", "error", EVIL, fix=EVIL, versions={"llama": EVIL}, facts={"x": EVIL})
    text = render(EVIL, [check])
    assert "\x1b" not in text and not [line for line in text.splitlines() if line.startswith("evil.gguf")]
    catalog = Catalog()
    catalog.add(ModelSpec("hostile", EVIL, EVIL, artifacts=(ArtifactSpec("gguf", "F32", files=("m.gguf",)),)))
    session = SimpleNamespace(catalog=catalog, resolver=Resolver(ArtifactCache(tmp_path), verify=False))
    table = models_table(session, ["hostile"])  # type: ignore[arg-type]
    assert "\x1b" not in table and not [line for line in table.splitlines() if line.startswith("evil.gguf")]
    assert table.splitlines()[0] == "hostile: \\x1b[31mx\\nevil.gguf: ok; \\x1b[31mx\\nevil.gguf: ok"
