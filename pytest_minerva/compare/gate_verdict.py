"""The bench gate's verdict: read the tools' findings, look for an acknowledgement, pass or fail.

``minerva gate verdict`` appends a markdown ratio table to ``$GITHUB_STEP_SUMMARY`` and exits
0 (no regression, or one that was acknowledged), 1 (a confirmed, unacknowledged regression)
or 2 (a tool could not answer: not a regression, and it says which failure). An intended
slowdown is acknowledged by the pull request label ``perf-regression-ok``
(``$MINERVA_ACK_LABEL``; labels come in ``$MINERVA_PR_LABELS`` as a JSON list) or by a commit
in base..head with the trailer ``Minerva-Accept-Slowdown: <reason>``. The summary records which.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pytest_minerva.compare.gate import Finding, GateError, git
from pytest_minerva.errors import printable

ACK_LABEL = "perf-regression-ok"
ACK_TRAILER = "Minerva-Accept-Slowdown"
MARK_MEANING = {
    "+": "slower",
    "-": "faster",
    "!": "newly failing",
    "*": "fixed",
    "x": "not comparable",
    "": "",
}


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
    text = printable(" ".join(str(text).split()))
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
        lines += [printable(line).replace("```", "'''") for line in f.log_tail.splitlines()[-25:]]
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


def _read_findings(paths: Sequence[Path]) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
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
    return findings


def verdict(
    files: Sequence[str] = (),
    *,
    directory: str | None = None,
    tools: str | None = None,
    repo: str | None = None,
    labels: str | None = None,
    ack_label: str = ACK_LABEL,
    summary: str | None = None,
    out: TextIO | None = None,
) -> int:
    """Judge the findings: write the summary to ``out`` (and append it to ``summary`` or
    ``$GITHUB_STEP_SUMMARY``) and return 0 (pass, or acknowledged), 1 (regression) or 2 (error).

    ``labels`` are the pull request's labels as JSON or comma-separated (default
    ``$MINERVA_PR_LABELS``); ``repo`` is the checkout whose base..head commits may carry the
    trailer (default: the one the tools ran in).
    """
    out = out if out is not None else sys.stdout
    findings = _read_findings(findings_paths(files, directory, tools))
    if not findings:
        raise GateError("verdict: no findings files given")
    known = next((f for f in findings if f.base and f.head), None)
    checkout = Path(repo or (known.repo if known and known.repo else ".")).resolve()
    label_list = _labels(labels if labels is not None else os.environ.get("MINERVA_PR_LABELS"))
    notes: list[str] = []
    try:
        acks = find_acknowledgements(
            checkout, known.base if known else "", known.head if known else "", label_list, ack_label
        )
    except GateError as exc:
        acks = find_acknowledgements(None, "", "", label_list, ack_label)
        notes.append(f"commit trailers not read: {exc}")
    outcome = decide(findings, acks)
    text = render_summary(findings, acks, outcome, notes)
    target = summary or os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text)
    out.write(text)
    return {"pass": 0, "acknowledged": 0, "regression": 1, "error": 2}[outcome]
