"""The pull-request benchmark gate: did the head get slower than its base, or could we not tell?

    minerva gate asv --base BASE --head HEAD --machine NAME --out gate/asv.json
    minerva gate compare --base BASE --head HEAD --out gate/compare.json
    minerva gate verdict gate/asv.json gate/compare.json

``asv`` runs ``asv continuous`` and ``compare`` runs ``minerva compare``. Each writes what happened
as JSON and exits 0 whatever it found (a crash of the gate itself exits 3), so the next step
still runs. A tool's non-zero exit is sorted into one of:

- ``regression``: the head is slower, confirmed by the tool's own test (asv: beyond ``--factor``
  and, where samples exist, Mann-Whitney; minerva compare: a confidence interval on the ratio);
- ``error``: the tool could not answer. ``kind`` says why: ``no-environment`` (asv found no
  environment matching the configuration), ``failed-benchmark`` (a benchmark raised),
  ``unknown-commit``, ``no-benchmarks``, ``unavailable`` (the command is missing) or ``tool-error``.

This module runs the tools and writes their findings; ``verdict`` is
:mod:`pytest_minerva.compare.gate_verdict`, the command line :mod:`pytest_minerva.commands.gate`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError

DEFAULT_FACTOR = 1.1
#: The change factor for numerics figures (``benchmarks/bench_numerics.py``: KL, top-1 disagreement,
#: max |dlogit|). They are deterministic for one engine build, so any change is the code's, not
#: noise; a figure that was exactly 0 is flagged on any change whatever the factor (asv's ratio rule).
DEFAULT_NUMERICS_FACTOR = 1.05
#: asv benchmark names whose figures are numerics, judged at the numerics factor rather than ``--factor``.
NUMERICS_BENCHMARK = re.compile(r"^bench_numerics\.")

#: asv's messages (asv 0.6) when it cannot create or find an environment to run in.
NO_ENVIRONMENT = (
    "No environments selected",
    "No executable found for python",
    "No way to create environment",
    "Failure creating environment",
    "Could not find 'conda'",
    "uv command not found",
    "No range spec may be specified if benchmarking in an existing environment",
)
UNKNOWN_COMMIT = ("Unknown commit", "Unknown branch", "No commit hashes selected")
NO_BENCHMARKS = ("No benchmarks selected",)
FAILED_LINE = re.compile(r"·{3}\s+(\S+)\s+failed\s*$", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Row:
    """One benchmark's line of a comparison table."""

    benchmark: str
    before: str
    after: str
    ratio: str
    mark: str = ""
    interval: str = ""
    note: str = ""


@dataclass
class Finding:
    """What one tool said about base against head."""

    tool: str
    status: str  # ok | regression | error
    kind: str
    reason: str
    exit_code: int | None
    command: list[str]
    base: str
    head: str
    rows: list[Row] = field(default_factory=list)
    log_tail: str = ""
    repo: str = ""

    @classmethod
    def load(cls, path: Path) -> Finding:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["rows"] = [Row(**row) for row in data.get("rows", [])]
        return cls(**data)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)


class GateError(MinervaError):
    """Bad input to the gate (an unknown commit, a missing file): one line naming it."""


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise GateError(f"{repo}: git {' '.join(args)}: {completed.stderr.strip() or 'failed'}")
    return completed.stdout.strip()


def resolve_commits(repo: Path, base: str, head: str, merge_base: bool) -> tuple[str, str]:
    """Full SHAs for base and head; base becomes their merge base unless ``merge_base`` is false."""
    head_sha = git(repo, "rev-parse", "--verify", f"{head}^{{commit}}")
    base_sha = git(repo, "rev-parse", "--verify", f"{base}^{{commit}}")
    if merge_base:
        base_sha = git(repo, "merge-base", base_sha, head_sha)
    return base_sha, head_sha


def run_streaming(command: Sequence[str], cwd: Path | None = None, log: Path | None = None) -> tuple[int, str]:
    """Run ``command``, echoing its output live, and return (exit status, output)."""
    lines: list[str] = []
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("w", encoding="utf-8") if log else None
    try:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
            if handle:
                handle.write(line)
        return process.wait(), "".join(lines)
    finally:
        if handle:
            handle.close()


def parse_markdown_table(text: str) -> list[Row]:
    """Rows of the github-format tables that ``asv compare`` / ``asv continuous`` print."""
    rows: list[Row] = []
    for line in ANSI.sub("", text).splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [cell.strip() for cell in line[1:-1].split("|")]
        if len(cells) != 5 or cells[0] == "Change" or (set(cells[0]) <= {"-"} and cells[1].startswith("-")):
            continue
        mark, before, after, ratio, name = cells
        rows.append(Row(benchmark=name, before=before, after=after, ratio=ratio, mark=mark))
    return rows


def classify_asv(exit_code: int, output: str, factor: float) -> tuple[str, str, str]:
    """(status, kind, reason) for an ``asv continuous`` run from its exit status and output.

    asv continuous exits 1 both for a slowdown and for a setup failure, and 2 when a benchmark
    raised (it then compares nothing), so the output decides.
    """
    text = ANSI.sub("", output)
    failed = sorted(set(FAILED_LINE.findall(text)))
    if exit_code == 0:
        improved = "PERFORMANCE INCREASED" in text
        return (
            "ok",
            "improved" if improved else "no-regression",
            ("some benchmarks got faster; none slower" if improved else f"no benchmark changed beyond factor {factor}"),
        )
    if exit_code == 2:
        names = ", ".join(failed) or "see the log"
        return "error", "failed-benchmark", f"a benchmark raised instead of giving a number: {names}"
    if exit_code == 1 and "PERFORMANCE DECREASED" in text:
        # asv judged every row at one factor here; run_asv re-judges numerics rows at their own.
        judged = judge_rows(parse_markdown_table(text), factor, factor)
        if judged[0] != "ok":
            return judged
        return "error", "failed-benchmark", "benchmark(s) fail on the head but not the base: "
    for kind, needles, what in (
        ("no-environment", NO_ENVIRONMENT, "asv found no environment matching its configuration"),
        ("unknown-commit", UNKNOWN_COMMIT, "asv could not find a commit"),
        ("no-benchmarks", NO_BENCHMARKS, "asv selected no benchmarks"),
    ):
        hit = next((line.strip(" ·") for line in text.splitlines() if any(n in line for n in needles)), None)
        if hit:
            return "error", kind, f"{what}: {hit}"
    last = next((line.strip(" ·") for line in reversed(text.splitlines()) if line.strip()), "no output")
    return "error", "tool-error", f"asv continuous exited {exit_code} without a comparison: {last}"


def is_numerics(benchmark: str) -> bool:
    """Whether an asv benchmark (as ``asv compare`` names it) tracks numerics rather than speed."""
    return bool(NUMERICS_BENCHMARK.match(benchmark))


def merge_rows(timing: Sequence[Row], numerics: Sequence[Row], numerics_factor: float) -> list[Row]:
    """The timing benchmarks' rows of one ``asv compare`` table and the numerics benchmarks' rows
    of another (run at ``numerics_factor``), each row noted with what judged it."""
    rows = [row for row in timing if not is_numerics(row.benchmark)]
    for row in numerics:
        if is_numerics(row.benchmark):
            row.note = f"numerics, factor {numerics_factor:g}" + (" (changed)" if row.mark == "+" else "")
            rows.append(row)
    return rows


def judge_rows(rows: Sequence[Row], factor: float, numerics_factor: float) -> tuple[str, str, str]:
    """(status, kind, reason) from the rows of a comparison that ran: a timing row marked ``+`` is
    a slowdown, a numerics row marked ``+`` a numerics change (a larger KL or disagreement is worse),
    a ``!`` a benchmark the head newly fails."""
    slower = [r.benchmark for r in rows if r.mark == "+" and not is_numerics(r.benchmark)]
    changed = [r.benchmark for r in rows if r.mark == "+" and is_numerics(r.benchmark)]
    broken = [r.benchmark for r in rows if r.mark == "!"]
    if slower or changed:
        parts = []
        if slower:
            parts.append(
                f"{len(slower)} benchmark(s) slower beyond factor {factor}, significant by asv's test: "
                + ", ".join(slower)
            )
        if changed:
            parts.append(
                f"{len(changed)} numerics figure(s) worse beyond factor {numerics_factor} (or no longer 0): "
                + ", ".join(changed)
            )
        return "regression", "regression" if slower else "numerics", "; ".join(parts)
    if broken:
        return "error", "failed-benchmark", "benchmark(s) fail on the head but not the base: " + ", ".join(broken)
    if any(r.mark == "-" for r in rows):
        return "ok", "improved", "some benchmarks got faster or closer to their reference; none worse"
    return "ok", "no-regression", f"no benchmark changed beyond factor {factor} (numerics: {numerics_factor})"


def asv_repo(config: Path) -> Path:
    """The git checkout an asv configuration benchmarks (its ``repo``, relative to the file)."""
    try:
        text = config.read_text(encoding="utf-8")
        try:
            import json5  # asv reads its configuration as JSON5 (comments, trailing commas)

            data = json5.loads(text)
        except ImportError:
            data = json.loads(re.sub(r"^\s*//.*$", "", text, flags=re.MULTILINE))
    except (OSError, ValueError) as exc:
        raise GateError(f"{config}: cannot read the asv configuration ({exc})") from exc
    repo = str(data.get("repo", "."))
    if "://" in repo or repo.startswith("git@"):
        return config.parent
    return (config.parent / repo).resolve()


def _unresolved(tool: str, reason: str, base: str, head: str, repo: Path, out: Path) -> None:
    finding = Finding(tool, "error", "unknown-commit", reason, None, [], base, head)
    finding.repo = str(repo)
    finding.save(out)


def _unavailable(tool: str, reason: str, command: list[str], base: str, head: str, repo: Path, out: Path) -> None:
    finding = Finding(tool, "error", "unavailable", reason, None, command, base, head)
    finding.repo = str(repo)
    finding.save(out)


def run_asv(
    *,
    config: str,
    base: str,
    head: str,
    out: str,
    merge_base: bool = True,
    machine: str | None = None,
    factor: float = DEFAULT_FACTOR,
    numerics_factor: float = DEFAULT_NUMERICS_FACTOR,
    asv: str = "asv",
    extra: Sequence[str] = (),
) -> None:
    """Run ``asv continuous`` on merge-base(BASE, HEAD) (or BASE itself) and HEAD; write the finding to ``out``.

    Timing and memory benchmarks are judged at ``factor`` (with asv's Mann-Whitney test where
    samples exist), numerics benchmarks (:func:`is_numerics`) by a second ``asv compare`` of the
    same results at ``numerics_factor``. The finding is written whatever asv says; only an
    unreadable asv configuration raises :class:`GateError`.
    """
    config_path = Path(config).resolve()
    repo = asv_repo(config_path)
    out_path = Path(out)
    try:
        base_sha, head_sha = resolve_commits(repo, base, head, merge_base=merge_base)
    except GateError as exc:
        _unresolved("asv continuous", str(exc), base, head, repo, out_path)
        return
    program = shutil.which(asv) or asv
    machine_args = ["--machine", machine] if machine else []
    command = [
        program,
        "continuous",
        "--config",
        str(config_path),
        "--factor",
        str(factor),
        "--show-stderr",  # a failed benchmark's traceback then lands in the log and the summary
        *machine_args,
        *extra,
        base_sha,
        head_sha,
    ]
    print(f"bench gate: {' '.join(command)}", flush=True)
    try:
        exit_code, output = run_streaming(command, log=out_path.with_suffix(".log"))
    except OSError as exc:
        _unavailable("asv continuous", f"cannot run {program}: {exc}", command, base_sha, head_sha, repo, out_path)
        return
    status, kind, reason = classify_asv(exit_code, output, factor)
    rows: list[Row] = []
    if kind in ("no-regression", "improved", "regression", "numerics", "failed-benchmark"):
        compare = [program, "compare", "--config", str(config_path), *machine_args]

        def table(at: float) -> list[Row]:
            done = subprocess.run(
                [*compare, "--factor", str(at), base_sha, head_sha], capture_output=True, text=True, check=False
            )
            return parse_markdown_table(done.stdout)

        timing = table(factor) or parse_markdown_table(output)
        if not any(is_numerics(r.benchmark) for r in timing):
            numerics: list[Row] = []
        elif numerics_factor == factor:
            numerics = timing  # one factor for both: the first table already judged them
        else:
            numerics = table(numerics_factor)
        rows = merge_rows(timing, numerics, numerics_factor)
        if rows and kind != "failed-benchmark":
            status, kind, reason = judge_rows(rows, factor, numerics_factor)
    tail = "\n".join(ANSI.sub("", output).splitlines()[-40:])
    finding = Finding("asv continuous", status, kind, reason, exit_code, command, base_sha, head_sha, rows, tail)
    finding.repo = str(repo)
    finding.save(out_path)
    print(f"bench gate: asv continuous -> {status} ({kind}): {reason}", flush=True)


def rows_from_compare_json(data: dict[str, Any]) -> list[Row]:
    """Table rows from a ``minerva compare --json`` document (its ``comparisons``)."""
    rows: list[Row] = []
    for entry in data.get("comparisons") or []:
        verdict = str(entry.get("verdict", ""))
        p_value = entry.get("p_value")
        rows.append(
            Row(
                benchmark=f"{entry.get('benchmark', '?')} {entry.get('figure', '')}".strip(),
                before=_fmt(entry.get("base_median")),
                after=_fmt(entry.get("head_median")),
                ratio=_fmt(entry.get("ratio")),
                mark={"slower": "+", "faster": "-"}.get(verdict, ""),
                interval=f"{_fmt(entry.get('ci_low'))} to {_fmt(entry.get('ci_high'))}"
                if entry.get("ci_low") is not None
                else "",
                note=verdict + (f" (p={_fmt(p_value)})" if p_value is not None else ""),
            )
        )
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def run_compare(
    *,
    repo: str,
    base: str,
    head: str,
    out: str,
    merge_base: bool = True,
    minerva: str = "minerva",
    extra: Sequence[str] = (),
) -> None:
    """Run ``minerva compare`` on merge-base(BASE, HEAD) (or BASE itself) and HEAD; write the finding to ``out``.

    ``minerva compare --json`` goes next to ``out`` (``<out stem>-minerva.json``); the finding
    is written whatever it says.
    """
    repo_path = Path(repo).resolve()
    out_path = Path(out)
    try:
        base_sha, head_sha = resolve_commits(repo_path, base, head, merge_base=merge_base)
    except GateError as exc:
        _unresolved("minerva compare", str(exc), base, head, repo_path, out_path)
        return
    report = out_path.with_name(out_path.stem + "-minerva.json")
    report.unlink(missing_ok=True)
    program = shutil.which(minerva) or minerva
    command = [program, "compare", base_sha, head_sha, "--json", str(report), *extra]
    print(f"bench gate: {' '.join(command)}", flush=True)
    try:
        exit_code, output = run_streaming(command, cwd=repo_path, log=out_path.with_suffix(".log"))
    except OSError as exc:
        _unavailable(
            "minerva compare", f"cannot run {program}: {exc}", command, base_sha, head_sha, repo_path, out_path
        )
        return
    tail = "\n".join(output.splitlines()[-40:])
    data: dict[str, Any] = {}
    if report.exists():
        try:
            data = json.loads(report.read_text(encoding="utf-8"))
        except ValueError as exc:
            data = {"status": "error", "reason": f"{report}: not JSON ({exc})"}
    expected = {0: "ok", 1: "regression"}.get(exit_code, "error")
    status = str(data.get("status") or expected)
    if status not in ("ok", "regression", "error"):
        status = "error"
    reason = str(data.get("reason") or "")
    kind = status if status != "ok" else "no-regression"
    if status != expected:
        status, kind = "error", "tool-error"
        reason = f"minerva compare exited {exit_code} but its JSON says {data.get('status')!r}: {reason}".rstrip(": ")
    if status == "error" and kind == "error":
        kind = str(data.get("kind") or "tool-error")
    if not reason:
        last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
        reason = f"exit status {exit_code}: {last}"
    rows = rows_from_compare_json(data)
    finding = Finding("minerva compare", status, kind, reason, exit_code, command, base_sha, head_sha, rows, tail)
    finding.repo = str(repo_path)
    finding.save(out_path)
    print(f"bench gate: minerva compare -> {status} ({kind}): {reason}", flush=True)
