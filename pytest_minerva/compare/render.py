"""A comparison written down: the ``--json`` document (:func:`compare_document`) and its markdown table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pytest_minerva.compare.schedule import Round
from pytest_minerva.compare.verdict import Comparison, Criteria, outcome, verdict_counts

COMPARE_SCHEMA_VERSION = 1


def compare_document(
    *,
    mode: str,
    criteria: Criteria,
    comparisons: Sequence[Comparison] = (),
    also: Sequence[Comparison] = (),
    errors: Sequence[str] = (),
    notes: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
    head: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    rounds: Sequence[Round] = (),
    elapsed_s: float | None = None,
) -> dict[str, Any]:
    """The ``--json`` document of a comparison::

        {
          "schema": "pytest-minerva-compare", "schema_version": 1,
          "status": "ok" | "regression" | "error",   # what the exit code says
          "reason": "...",                            # one line: the regression, the error, or the counts
          "exit_code": 0 | 1 | 2,
          "mode": "git" | "python" | "results",
          "datetime": "...", "machine_info": {...}, "elapsed_s": 63.2,
          "base": {"spec", "kind", "commit", "python", "python_version", "pytest_minerva_from"},
          "head": {...},
          "criteria": {"threshold", "confidence", "statistic", "resamples", "seed"},
          "settings": {"rounds", "order", "figures", "command", ...},
          "comparisons": [{"benchmark", "figure", "direction", "paired", "test", "n_base", "n_head",
                           "base_median", "head_median", "ratio", "ci_low", "ci_high",
                           "p_value", "slowdown", "verdict"}],
          "also_measured": [...],                     # the other clock of each judged time, not judged
          "counts": {"slower": 0, "faster": 0, "no change": 2, "inconclusive": 1},
          "errors": ["..."],                          # what could not be measured or read
          "notes": ["..."],                           # benchmarks only one side has, and similar
          "rounds": [{"round", "order", "base": {benchmark: {figure: value}}, "head": {...}}]
        }

    ``ratio``, ``ci_low`` and ``ci_high`` are HEAD/BASE; ``slowdown`` is the ratio turned so
    that above 1 means HEAD is worse, whichever way the figure points.
    """
    from pytest_minerva.storage.results import machine_info, utc_now

    status, reason, code = outcome(comparisons, errors)
    return {
        "schema": "pytest-minerva-compare",
        "schema_version": COMPARE_SCHEMA_VERSION,
        "status": status,
        "reason": reason,
        "exit_code": code,
        "mode": mode,
        "datetime": utc_now(),
        "machine_info": machine_info(),
        "elapsed_s": elapsed_s,
        "base": dict(base or {}),
        "head": dict(head or {}),
        "criteria": criteria.as_dict(),
        "settings": dict(settings or {}),
        "comparisons": [c.as_dict() for c in comparisons],
        "also_measured": [c.as_dict() for c in also],
        "counts": verdict_counts(comparisons),
        "errors": list(errors),
        "notes": list(notes),
        "rounds": [r.as_dict() for r in rounds],
    }


def _side(document: Mapping[str, Any], role: str) -> str:
    from pytest_minerva.errors import printable

    side = document.get(role) or {}
    commit = side.get("commit")
    return printable(f"{side.get('spec', '?')}" + (f" ({str(commit)[:12]})" if commit else ""))


def markdown(document: Mapping[str, Any]) -> str:
    """The comparison as markdown: a header, the method in one paragraph, one row per benchmark figure.

    Names, errors and notes may come from a results file or a build's output, so each is
    escaped to one line, and ``|`` in a table cell cannot split its row.
    """
    from pytest_minerva.errors import printable
    from pytest_minerva.timing.report import cell, number

    criteria = document["criteria"]
    settings = document.get("settings") or {}
    confidence = round(criteria["confidence"] * 100, 2)
    lines = [
        f"## minerva compare: BASE {_side(document, 'base')} vs HEAD {_side(document, 'head')}",
        "",
        printable(f"Status: **{document['status']}**: {document['reason']}"),
        "",
    ]
    statistic = "median" if criteria["statistic"] == "median" else "geometric mean"
    threshold = f"{criteria['threshold'] * 100:g}%"
    alpha = f"{1 - criteria['confidence']:.2g}"
    if document["mode"] == "results":
        method = (
            f"Runs from two results files (not interleaved): ratio = HEAD/BASE of the {statistic}s; "
            f"{confidence:g}% bootstrap interval ({criteria['resamples']} resamples, seed {criteria['seed']}); "
            "p from the Mann-Whitney U test."
        )
    else:
        looks = settings.get("looks") or []
        if looks:
            confidence = round(looks[-1]["confidence"] * 100, 3)
            alpha = f"{looks[-1]['alpha']:.2g}"
        how = (
            "each side's model loaded once in a warm worker, restarted every "
            f"{settings.get('restart_every')} rounds, {settings.get('runs_per_round')} timed runs per round"
            if settings.get("method") == "warm"
            else "each round running BASE and HEAD in fresh processes"
        )
        spent = (
            f"; looks at growing round counts, look j at confidence 1 - {1 - criteria['confidence']:.2g}/2^j "
            f"(the looks hold jointly at {criteria['confidence'] * 100:g}%), stopping once decided"
            if settings.get("sequential")
            else ""
        )
        method = (
            f"{settings.get('rounds')} rounds in ABBA blocks (seed {criteria['seed']}), {how}{spent}; "
            f"ratio = {statistic} of the per-round HEAD/BASE ratios; {confidence:g}% bootstrap interval "
            f"({criteria['resamples']}+ resamples); p from Wilcoxon's signed-rank test on the log ratios."
        )
    lines.append(
        f"{method} Verdict: slower/faster when the interval lies beyond {threshold} and p < {alpha}; "
        f"no change when it lies within {threshold}; otherwise inconclusive."
    )
    elapsed = document.get("elapsed_s")
    load = (document.get("machine_info") or {}).get("load_average")
    footer = []
    if elapsed is not None:
        footer.append(f"took {elapsed:.1f} s")
    if load:
        footer.append(f"load average {', '.join(f'{x:.2f}' for x in load)} at the end")
    if footer:
        lines += ["", "Compare " + "; ".join(footer) + "."]
    if document["comparisons"]:
        lines += [
            "",
            f"| Benchmark | Figure | BASE median | HEAD median | HEAD/BASE | {confidence:g}% CI | p | Verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        rows = [*document["comparisons"], *[{**c, "verdict": "not judged"} for c in document.get("also_measured", [])]]
        for c in rows:
            verdict = f"**{c['verdict']}**" if c["verdict"] == "slower" else cell(c["verdict"])
            lines.append(
                f"| {cell(c['benchmark'])} | {cell(c['figure'])}{' (CPU time)' if c.get('clock') == 'cpu' else ''} "
                f"| {number(c['base_median'])} | {number(c['head_median'])} "
                f"| {c['ratio']:.3f} | {c['ci_low']:.3f}–{c['ci_high']:.3f} | {c['p_value']:.3g} | {verdict} |"
            )
    for title, items in (("Errors", document["errors"]), ("Notes", document["notes"])):
        if items:
            lines += ["", f"{title}:", *[f"- {printable(item)}" for item in items]]
    return "\n".join(lines) + "\n"
