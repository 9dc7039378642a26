"""Recording calibration runs: write measurements into the tolerances file and re-derive the bounds.

``minerva calibrate`` measures each precision pair and calls :func:`record_measurements`,
which rewrites the whole file (:func:`render_profiles`) atomically, keeping the other
profiles, the known divergences and the file's leading comment block.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pytest_minerva.equivalence.profiles import (
    DerivationRule,
    KnownDivergence,
    Measurement,
    Profile,
    ProfileError,
    ProfileNotFound,
    derive_bounds,
)
from pytest_minerva.equivalence.tolerances import (
    DIVERGENCE_KEYS,
    SCHEMA_VERSION,
    default_tolerances_path,
    known_divergences_from_data,
    parse_profiles,
)
from pytest_minerva.storage.toml_writer import leading_comments, table_lines


def _render_divergences(divergences: Iterable[KnownDivergence]) -> list[str]:
    lines: list[str] = []
    for d in divergences:
        base = f"known_divergences.{json.dumps(d.name)}"
        head = {k: getattr(d, k) for k in sorted(DIVERGENCE_KEYS - {"measured"})}
        lines += table_lines(f"[{base}]", head)
        lines += table_lines(f"[{base}.measured]", dict(d.measured))
    return lines


def render_profiles(profiles: Iterable[Profile], header: str = "") -> str:
    """The tolerances TOML for ``profiles``, deterministic, preceded by ``header`` (comment lines)."""
    lines = [header.rstrip("\n"), ""] if header.strip() else []
    lines += [f"schema_version = {SCHEMA_VERSION}", ""]
    for p in profiles:
        base = f"profiles.{json.dumps(p.name)}"
        head: dict[str, Any] = {"description": p.description} if p.description else {}
        head |= {
            "reference_precision": p.reference_precision,
            "candidate_precision": p.candidate_precision,
            "same_weights": p.same_weights,
            "metrics": list(p.metrics),
        }
        lines += table_lines(f"[{base}]", head)
        rule = {"method": p.rule.method, "factor": float(p.rule.factor), "min_runs": p.rule.min_runs}
        lines += table_lines(f"[{base}.rule]", rule)
        if p.rule.slack:
            lines += table_lines(f"[{base}.rule.slack]", {k: float(v) for k, v in p.rule.slack.items()})
        if p.bounds:
            lines += table_lines(f"[{base}.bounds]", {k: float(v) for k, v in p.bounds.items()})
        for m in p.measurements:
            lines += table_lines(
                f"[[{base}.measurements]]",
                {
                    "model": m.model,
                    "reference": m.reference,
                    "candidate": m.candidate,
                    "prompt_set": m.prompt_set,
                    "positions": m.positions,
                    "date": m.date,
                    "command": m.command,
                },
            )
            if m.versions:
                lines += table_lines(f"[{base}.measurements.versions]", dict(m.versions))
            lines += table_lines(f"[{base}.measurements.values]", {k: float(v) for k, v in m.values.items()})
    return "\n".join(lines).rstrip("\n") + "\n"


def record_measurements(
    name: str,
    measurements: Sequence[Measurement],
    *,
    path: str | Path | None = None,
    replace: bool = True,
    rule: DerivationRule | None = None,
) -> Profile:
    """Store ``measurements`` in profile ``name``, re-derive its bounds and rewrite the file atomically.

    ``replace=True`` discards the profile's old measurements; ``False`` appends. ``rule`` replaces
    the profile's rule. The profile must already be declared in the file; other profiles and the
    file's leading comment block are kept (comments elsewhere are not: use ``description``).
    """
    from pytest_minerva.storage.atomic import atomic_write_text

    where = Path(path) if path is not None else default_tolerances_path()
    text = where.read_text(encoding="utf-8") if where.exists() else ""
    profiles = parse_profiles(text, where) if text else {}
    if name not in profiles:
        raise ProfileNotFound(where, f"no profile {name!r} to record into; declare it in the file first")
    old = profiles[name]
    kept = () if replace else old.measurements
    new_rule = rule or old.rule
    combined = (*kept, *measurements)
    try:
        bounds = derive_bounds(combined, new_rule, old.metrics) if len(combined) >= new_rule.min_runs else {}
    except ValueError as exc:
        raise ProfileError(where, f"profile {name!r}: {exc}") from None
    profiles[name] = Profile(
        name=old.name,
        reference_precision=old.reference_precision,
        candidate_precision=old.candidate_precision,
        same_weights=old.same_weights,
        metrics=old.metrics,
        rule=new_rule,
        measurements=combined,
        bounds=bounds,
        description=old.description,
        source=where,
    )
    rendered = render_profiles(profiles.values(), leading_comments(text))
    divergences = known_divergences_from_data(tomllib.loads(text), profiles, where) if text else []
    if divergences:
        rendered = rendered + "\n" + "\n".join(_render_divergences(divergences)).rstrip("\n") + "\n"
    checked = parse_profiles(rendered, where)
    atomic_write_text(where, rendered)
    return checked[name]
