"""Failure messages that are a diagnosis, not just a number.

A failed equivalence check says which metric broke its bound and by how much, where that bound
came from (profile, file, rule, the worst calibration run), the position that hurts most, the
prompt text around it, and what each side predicted there: top-5 tokens, as text and ids, with
probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pytest_minerva.equivalence.metrics import EquivalenceReport, TokenIds
from pytest_minerva.equivalence.profiles import Profile, Violation

Detokenize = Callable[[Sequence[int]], str]


class _Text:
    """Token ids as text; never raises, since it runs while reporting another failure."""

    def __init__(self, detokenize: Detokenize | None) -> None:
        self.detokenize = detokenize
        self.error: str | None = None

    def __call__(self, ids: Sequence[int]) -> str | None:
        if self.detokenize is None:
            return None
        try:
            return str(self.detokenize([int(i) for i in ids]))
        except Exception as exc:  # any tokenizer failure must not hide the diagnosis
            self.error = f"{type(exc).__name__}: {exc}"
            return None

    def token(self, token_id: int) -> str:
        text = self([token_id])
        return f"id {token_id}" if text is None else f"{text!r} (id {token_id})"


def _top_line(ids: np.ndarray, probs: np.ndarray, text: _Text) -> str:
    return " | ".join(f"{text.token(int(i))} p={float(p):.4g}" for i, p in zip(ids, probs, strict=True))


def _context_lines(position: int, tokens: TokenIds | None, text: _Text, before: int, after: int) -> list[str]:
    if tokens is None:
        return ["  text: unknown (pass tokens= and detokenize= to see the prompt around this position)"]
    ids = [int(t) for t in tokens]
    start = max(0, position + 1 - before)
    seen = ids[start : position + 1]
    lead = "..." if start > 0 else ""
    shown = text(seen)
    lines = [f"  text up to here: {lead}{shown!r}" if shown is not None else f"  ids up to here: {lead}{seen}"]
    if position + 1 < len(ids):
        following = ids[position + 2 : position + 2 + after]
        rest = text(following) if following else ""
        then = f", then {rest!r}" if rest else (f", then ids {following}" if following else "")
        lines.append(f"  actual next token: {text.token(ids[position + 1])}{then}")
    else:
        lines.append("  (last position: no next token in the input)")
    return lines


def _position_block(
    report: EquivalenceReport,
    position: int,
    metric: str,
    tokens: TokenIds | None,
    text: _Text,
    before: int,
    after: int,
) -> list[str]:
    lines = [f"worst position for {metric}: {position} of {report.positions} (the prediction after token {position})"]
    lines += _context_lines(position, tokens, text, before, after)
    if position in report.nonfinite_positions:
        sides = [
            side
            for side, bad in (
                ("reference", report.nonfinite_reference),
                ("candidate", report.nonfinite_candidate),
            )
            if position in bad
        ]
        lines.append(f"  here the {' and '.join(sides)} logits hold NaN/+inf or only -inf: not a distribution")
        return lines
    overlaps = ", ".join(
        f"top-{k} overlap {round(float(v[position]) * kk)}/{kk}"
        for k, v in sorted(report.overlap.items())
        for kk in [min(k, report.vocab_compared)]
    )
    top1 = "same" if report.top1_match[position] else "differs"
    lines.append(
        f"  here: KL {report.kl[position]:.6g} nats, top-1 {top1}, {overlaps}, "
        f"max |Δlogit| {report.dlogit[position]:.4g}"
    )
    lines.append(
        "  reference top-5: "
        + _top_line(report.reference_top_ids[position], report.reference_top_probs[position], text)
    )
    lines.append(
        "  candidate top-5: "
        + _top_line(report.candidate_top_ids[position], report.candidate_top_probs[position], text)
    )
    return lines


def _greedy_block(report: EquivalenceReport, text: _Text) -> list[str]:
    greedy = report.greedy
    if greedy is None or greedy.first_divergence is None:
        return []
    at = greedy.first_divergence
    common = text(greedy.reference_tokens[:at])
    lines = [f"greedy generations agree for {greedy.prefix_length} token(s), then diverge at generated token {at}"]
    if common is not None:
        lines.append(f"  common text: {common!r}")
    for side, seq in (("reference", greedy.reference_tokens), ("candidate", greedy.candidate_tokens)):
        if at < len(seq):
            rest = text(seq[at : at + 8])
            shown = f", continuing {rest!r}" if rest is not None else ""
            lines.append(f"  {side} generated {text.token(seq[at])}{shown}")
        else:
            lines.append(f"  {side} stopped after {len(seq)} token(s)")
    return lines


def _provenance_lines(profile: Profile, violations: Sequence[Violation]) -> list[str]:
    where = f" in {profile.source}" if profile.source else ""
    lines = [f"bounds come from profile {profile.name!r}{where}: {profile.rule.describe()}"]
    runs: list[int] = []
    for v in violations:
        if v.metric in profile.bounds:
            _, run = profile.worst_measurement(v.metric)
            index = profile.measurements.index(run)
            runs += [] if index in runs else [index]
            lines.append(f"  {v.metric} bound {profile.bound_formula(v.metric)}, worst in run {index + 1}")
    for index in runs:
        run = profile.measurements[index]
        lines.append(f"  run {index + 1}: {run.summary()}; {run.positions} positions; command: {run.command}")
    return lines


def format_diagnosis(
    report: EquivalenceReport,
    violations: Sequence[Violation],
    *,
    profile: Profile | None = None,
    tokens: TokenIds | None = None,
    detokenize: Detokenize | None = None,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    context_before: int = 24,
    context_after: int = 4,
) -> str:
    """The failure message for ``violations`` of ``report``.

    ``tokens`` are the input ids the logits rows belong to and ``detokenize`` turns ids into text;
    without them the message shows positions and ids only.
    """
    text = _Text(detokenize)
    under = f" under profile {profile.name!r}" if profile is not None else ""
    bounded = len(profile.metrics) if profile is not None else len(violations)
    lines = [
        f"{candidate_name} does not match {reference_name}{under}: {len(violations)} of {bounded} bound(s) "
        f"violated over {report.positions} position(s)"
    ]
    for v in violations:
        where = f"; worst at position {v.worst_position}" if v.worst_position is not None else ""
        lines.append(f"  {v.describe()}{where}")
    if profile is not None:
        lines += _provenance_lines(profile, violations)
    if report.nonfinite_positions:
        for side, bad in (
            ("reference", report.nonfinite_reference),
            ("candidate", report.nonfinite_candidate),
        ):
            if bad:
                lines.append(
                    f"{side} logits are not a distribution (NaN/+inf or all -inf) at {len(bad)} of "
                    f"{report.positions} position(s), first {list(bad[:8])}"
                )
    detailed = next((v for v in violations if v.worst_position is not None), None)
    if detailed is not None and detailed.worst_position is not None:
        lines += _position_block(
            report, detailed.worst_position, detailed.metric, tokens, text, context_before, context_after
        )
    if any(v.metric == "greedy_prefix" for v in violations):
        lines += _greedy_block(report, text)
    if report.vocab_truncated:
        lines.append(
            f"note: vocab sizes differ (reference {report.vocab_reference}, "
            f"candidate {report.vocab_candidate}); "
            f"compared ids 0..{report.vocab_compared - 1}, each side renormalized over them; the extra ids "
            f"held at most {report.excess_vocab_mass:.3g} of the probability"
        )
    if text.error is not None:
        lines.append(f"note: detokenize failed ({text.error}); showing ids")
    return "\n".join(lines)
