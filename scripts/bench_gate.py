#!/usr/bin/env python3
"""The pull-request benchmark gate: did the head get slower than its base, or could we not tell?

    python scripts/bench_gate.py asv --base BASE --head HEAD --machine NAME --out gate/asv.json
    python scripts/bench_gate.py compare --base BASE --head HEAD --out gate/compare.json
    python scripts/bench_gate.py verdict gate/asv.json gate/compare.json

``asv`` runs ``asv continuous`` and ``compare`` runs ``minerva compare``. Each writes what happened
as JSON and exits 0 whatever it found (a crash of the gate itself exits 3), so the next step
still runs. A tool's non-zero exit is sorted into one of:

- ``regression``: the head is slower, confirmed by the tool's own test (asv: beyond ``--factor``
  and, where samples exist, Mann-Whitney; minerva compare: a confidence interval on the ratio);
- ``error``: the tool could not answer. ``kind`` says why: ``no-environment`` (asv found no
  environment matching the configuration), ``failed-benchmark`` (a benchmark raised),
  ``unknown-commit``, ``no-benchmarks``, ``unavailable`` (the command is missing) or ``tool-error``.

``verdict`` reads those files, appends a markdown ratio table to ``$GITHUB_STEP_SUMMARY`` and
exits 0 (no regression, or one that was acknowledged), 1 (a confirmed, unacknowledged
regression) or 2 (a tool could not answer: not a regression, and it says which failure). An
intended slowdown is acknowledged by the pull request label ``perf-regression-ok``
(``$MINERVA_ACK_LABEL``; labels come in ``$MINERVA_PR_LABELS`` as a JSON list) or by a
commit in base..head with the trailer ``Minerva-Accept-Slowdown: <reason>``. The summary
records which.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

ACK_LABEL = "perf-regression-ok"
ACK_TRAILER = "Minerva-Accept-Slowdown"
DEFAULT_FACTOR = 1.1

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
MARK_MEANING = {
    "+": "slower",
    "-": "faster",
    "!": "newly failing",
    "*": "fixed",
    "x": "not comparable",
    "": "",
}


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


def git(repo: Path, *args: str) -> str:
    completed = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise GateError(f"{repo}: git {' '.join(args)}: {completed.stderr.strip() or 'failed'}")
    return completed.stdout.strip()


class GateError(Exception):
    """Bad input to the gate (an unknown commit, a missing file): one line naming it."""


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
        rows = parse_markdown_table(text)
        slower = [r.benchmark for r in rows if r.mark == "+"]
        broken = [r.benchmark for r in rows if r.mark == "!"]
        if slower:
            return (
                "regression",
                "regression",
                (
                    f"{len(slower)} benchmark(s) slower beyond factor {factor}, significant by asv's test: "
                    + ", ".join(slower)
                ),
            )
        return "error", "failed-benchmark", "benchmark(s) fail on the head but not the base: " + ", ".join(broken)
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


def cmd_asv(args: argparse.Namespace) -> int:
    config = Path(args.config).resolve()
    repo = asv_repo(config)
    out = Path(args.out)
    try:
        base, head = resolve_commits(repo, args.base, args.head, merge_base=not args.no_merge_base)
    except GateError as exc:
        unresolved = Finding("asv continuous", "error", "unknown-commit", str(exc), None, [], args.base, args.head)
        unresolved.repo = str(repo)
        unresolved.save(out)
        return 0
    asv = shutil.which(args.asv) or args.asv
    machine = ["--machine", args.machine] if args.machine else []
    command = [
        asv,
        "continuous",
        "--config",
        str(config),
        "--factor",
        str(args.factor),
        "--show-stderr",  # a failed benchmark's traceback then lands in the log and the summary
        *machine,
        *args.extra,
        base,
        head,
    ]
    print(f"bench gate: {' '.join(command)}", flush=True)
    try:
        exit_code, output = run_streaming(command, log=out.with_suffix(".log"))
    except OSError as exc:
        finding = Finding(
            "asv continuous", "error", "unavailable", f"cannot run {asv}: {exc}", None, command, base, head
        )
        finding.repo = str(repo)
        finding.save(out)
        return 0
    status, kind, reason = classify_asv(exit_code, output, args.factor)
    rows: list[Row] = []
    if kind in ("no-regression", "improved", "regression", "failed-benchmark"):
        compare = [asv, "compare", "--config", str(config), "--factor", str(args.factor), *machine, base, head]
        done = subprocess.run(compare, capture_output=True, text=True, check=False)
        rows = parse_markdown_table(done.stdout)
        if not rows:
            rows = parse_markdown_table(output)
    tail = "\n".join(ANSI.sub("", output).splitlines()[-40:])
    Finding("asv continuous", status, kind, reason, exit_code, command, base, head, rows, tail, str(repo)).save(out)
    print(f"bench gate: asv continuous -> {status} ({kind}): {reason}", flush=True)
    return 0


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


def cmd_compare(args: argparse.Namespace) -> int:
    repo = Path(args.repo).resolve()
    out = Path(args.out)
    try:
        base, head = resolve_commits(repo, args.base, args.head, merge_base=not args.no_merge_base)
    except GateError as exc:
        unresolved = Finding("minerva compare", "error", "unknown-commit", str(exc), None, [], args.base, args.head)
        unresolved.repo = str(repo)
        unresolved.save(out)
        return 0
    report = out.with_name(out.stem + "-minerva.json")
    report.unlink(missing_ok=True)
    minerva = shutil.which(args.minerva) or args.minerva
    command = [minerva, "compare", base, head, "--json", str(report), *args.extra]
    print(f"bench gate: {' '.join(command)}", flush=True)
    try:
        exit_code, output = run_streaming(command, cwd=repo, log=out.with_suffix(".log"))
    except OSError as exc:
        finding = Finding(
            "minerva compare", "error", "unavailable", f"cannot run {minerva}: {exc}", None, command, base, head
        )
        finding.repo = str(repo)
        finding.save(out)
        return 0
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
    Finding("minerva compare", status, kind, reason, exit_code, command, base, head, rows, tail, str(repo)).save(out)
    print(f"bench gate: minerva compare -> {status} ({kind}): {reason}", flush=True)
    return 0


@dataclass
class Acknowledgement:
    by: str  # "label" | "trailer"
    detail: str
    commit: str = ""


def find_acknowledgements(
    repo: Path | None, base: str, head: str, labels: Sequence[str], ack_label: str
) -> list[Acknowledgement]:
    """The label and the commit trailers (in base..head) that accept a slowdown."""
    found = [Acknowledgement("label", ack_label)] if ack_label in labels else []
    if repo is not None and base and head:
        fmt = f"%H%x1f%(trailers:key={ACK_TRAILER},valueonly,separator=%x1d)%x1e"
        log = git(repo, "log", f"--format={fmt}", f"{base}..{head}")
        for record in log.split("\x1e"):
            sha, _, values = record.strip().partition("\x1f")
            for value in values.split("\x1d"):
                if value.strip():
                    found.append(Acknowledgement("trailer", value.strip(), sha))
    return found


def _cell(text: str, limit: int = 200) -> str:
    """Untrusted text (commit messages, tool output) made safe for one markdown table cell."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")


def render_summary(
    findings: Sequence[Finding], acks: Sequence[Acknowledgement], outcome: str, notes: Sequence[str] = ()
) -> str:
    headline = {
        "pass": "passed: no regression",
        "acknowledged": "passed: regression acknowledged as intended",
        "regression": "FAILED: confirmed regression",
        "error": "FAILED: a benchmark tool could not answer (not a regression)",
    }[outcome]
    lines = [f"## Benchmark gate {headline}", ""]
    if findings:
        lines += [f"Base `{findings[0].base[:10]}` (merge base) against head `{findings[0].head[:10]}`.", ""]
    lines += ["| check | result | why |", "|---|---|---|"]
    for f in findings:
        result = f.status if f.status != "error" else f"error: {f.kind}"
        lines.append(f"| {f.tool} | **{result}** | {_cell(f.reason, 400)} |")
    for f in findings:
        if not f.rows:
            continue
        with_interval = any(r.interval for r in f.rows)
        lines += ["", f"### {f.tool}: ratio head / base", ""]
        header = "| change | benchmark | base | head | ratio |" + (" interval |" if with_interval else "")
        lines += [header, "|---|---|---|---|---|" + ("---|" if with_interval else "")]
        order = {"+": 0, "!": 1, "-": 2, "x": 3}
        for r in sorted(f.rows, key=lambda r: (order.get(r.mark, 4), r.benchmark)):
            change = f"`{r.mark}` {MARK_MEANING.get(r.mark, '')}".strip() if r.mark.strip() else ""
            if r.note:
                change = _cell(r.note)
            elif not r.mark.strip() and "failed" in (r.before, r.after):
                change = "failed"
            ratio = f"**{_cell(r.ratio)}**" if r.mark in ("+", "!") else _cell(r.ratio)
            cells = [change, f"`{_cell(r.benchmark)}`", _cell(r.before), _cell(r.after), ratio]
            if with_interval:
                cells.append(_cell(r.interval))
            lines.append("| " + " | ".join(cells) + " |")
    errors = [f for f in findings if f.status == "error" and f.log_tail]
    for f in errors:
        lines += ["", f"<details><summary>{f.tool} output (last lines)</summary>", "", "```"]
        lines += [line.replace("```", "'''") for line in f.log_tail.splitlines()[-25:]]
        lines += ["```", "", "</details>"]
    lines += ["", "### Acknowledgement", ""]
    if acks:
        for a in acks:
            if a.by == "label":
                lines.append(f"- Slowdown accepted by the pull request label `{_cell(a.detail)}`.")
            else:
                lines.append(f"- Slowdown accepted in commit `{a.commit[:10]}`: {ACK_TRAILER}: {_cell(a.detail)}")
        if outcome != "acknowledged":
            lines.append("- (recorded; it does not change this result, which is not a confirmed regression)")
    else:
        lines.append(
            f"None. To accept an intended slowdown, add the label `{ACK_LABEL}` or a commit trailer "
            f"`{ACK_TRAILER}: <reason>`."
        )
    lines += [f"- {_cell(note, 400)}" for note in notes]
    return "\n".join(lines) + "\n"


def decide(findings: Sequence[Finding], acks: Sequence[Acknowledgement]) -> str:
    """``pass``, ``acknowledged``, ``regression`` or ``error``; a tool error is never acknowledged."""
    regression = any(f.status == "regression" for f in findings)
    error = any(f.status == "error" for f in findings)
    if regression and not acks:
        return "regression"
    if error:
        return "error"
    return "acknowledged" if regression else "pass"


def _labels(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return [part.strip() for part in raw.split(",") if part.strip()]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


TOOLS = ("asv", "compare")


def findings_paths(files: Sequence[str], directory: str | None, tools: str | None) -> list[Path]:
    """The findings to judge: the files given, plus ``DIR/<tool>.json`` for each tool in ``tools``."""
    paths = [Path(f) for f in files]
    if tools is not None:
        names = [t.strip() for t in tools.split(",") if t.strip()]
        unknown = sorted(set(names) - set(TOOLS))
        if unknown or not names:
            raise GateError(f"--tools {tools!r}: choose one or more of {', '.join(TOOLS)}")
        paths += [Path(directory or ".") / f"{name}.json" for name in names]
    return paths


def cmd_verdict(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    findings: list[Finding] = []
    for path in findings_paths(args.findings, args.dir, args.tools):
        if not path.exists():
            findings.append(
                Finding(
                    path.stem,
                    "error",
                    "no-result",
                    f"{path}: missing (the step that writes it failed)",
                    None,
                    [],
                    "",
                    "",
                )
            )
            continue
        try:
            findings.append(Finding.load(path))
        except (ValueError, TypeError) as exc:
            findings.append(Finding(path.stem, "error", "no-result", f"{path}: unreadable ({exc})", None, [], "", ""))
    if not findings:
        raise GateError("verdict: no findings files given")
    known = next((f for f in findings if f.base and f.head), None)
    repo = Path(args.repo or (known.repo if known and known.repo else ".")).resolve()
    labels = _labels(args.labels if args.labels is not None else os.environ.get("MINERVA_PR_LABELS"))
    notes: list[str] = []
    try:
        acks = find_acknowledgements(
            repo, known.base if known else "", known.head if known else "", labels, args.ack_label
        )
    except GateError as exc:
        acks = find_acknowledgements(None, "", "", labels, args.ack_label)
        notes.append(f"commit trailers not read: {exc}")
    outcome = decide(findings, acks)
    summary = render_summary(findings, acks, outcome, notes)
    target = args.summary or os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(summary)
    out.write(summary)
    return {"pass": 0, "acknowledged": 0, "regression": 1, "error": 2}[outcome]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench_gate.py", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def commits(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base", required=True, metavar="REF", help="the pull request's base commit")
        p.add_argument("--head", required=True, metavar="REF", help="the pull request's head commit")
        p.add_argument(
            "--no-merge-base", action="store_true", help="compare with BASE itself, not merge-base(BASE, HEAD)"
        )
        p.add_argument("--out", required=True, metavar="FILE", help="where to write the finding (JSON)")
        p.add_argument("extra", nargs="*", metavar="-- ARGS", help="more arguments for the tool, after --")

    asv = sub.add_parser("asv", help="run asv continuous and sort its outcome")
    commits(asv)
    asv.add_argument(
        "--config", default="asv.conf.json", metavar="FILE", help="asv configuration (default: asv.conf.json)"
    )
    asv.add_argument("--machine", metavar="NAME", help="asv machine name (default: asv's)")
    asv.add_argument(
        "--factor", type=float, default=DEFAULT_FACTOR, help=f"asv's change factor (default: {DEFAULT_FACTOR})"
    )
    asv.add_argument("--asv", default="asv", metavar="PATH", help="the asv command (default: asv on PATH)")
    asv.set_defaults(func=cmd_asv)

    compare = sub.add_parser("compare", help="run minerva compare and read its JSON")
    commits(compare)
    compare.add_argument("--repo", default=".", metavar="DIR", help="the git checkout (default: .)")
    compare.add_argument("--minerva", default="minerva", metavar="PATH", help="the minerva command (default: on PATH)")
    compare.set_defaults(func=cmd_compare)

    verdict = sub.add_parser("verdict", help="write the summary and pass or fail the check")
    verdict.add_argument("findings", nargs="*", metavar="FILE", help="JSON files written by the asv / compare steps")
    verdict.add_argument("--dir", metavar="DIR", help="where the steps wrote <tool>.json (with --tools)")
    verdict.add_argument(
        "--tools",
        metavar="LIST",
        help="tools that ran, comma-separated (asv, compare); each must have written DIR/<tool>.json",
    )
    verdict.add_argument("--summary", metavar="FILE", help="markdown file to append to (default: $GITHUB_STEP_SUMMARY)")
    verdict.add_argument("--labels", metavar="JSON", help="pull request labels (default: $MINERVA_PR_LABELS)")
    verdict.add_argument(
        "--ack-label",
        default=os.environ.get("MINERVA_ACK_LABEL") or ACK_LABEL,
        metavar="NAME",
        help=f"label that accepts a slowdown (default: $MINERVA_ACK_LABEL or {ACK_LABEL})",
    )
    verdict.add_argument(
        "--repo", metavar="DIR", help="checkout whose commits may carry the trailer (default: the one the tools ran in)"
    )
    verdict.set_defaults(func=cmd_verdict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GateError as exc:
        print(f"bench gate: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
