"""The tolerances file (``fixtures/tolerances.toml``): parse and check it, load profiles, pick one.

Every error names the file and the profile. A profile's bounds must be exactly what its
rule derives from its measurements (the file is refused otherwise), two profiles may not
cover the same precision pair, and a known divergence must name a profile of the file.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pytest_minerva.equivalence.metrics import metric_spec
from pytest_minerva.equivalence.profiles import (
    RULE_METHOD,
    DerivationRule,
    KnownDivergence,
    Measurement,
    Profile,
    ProfileError,
    ProfileNotFound,
    derive_bounds,
    normalize_precision,
)

SCHEMA_VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
#: The keys of a ``[known_divergences.NAME]`` table, all required.
DIVERGENCE_KEYS = frozenset(
    {"model", "reference_backend", "candidate_backend", "profile", "cause", "engine", "measured"}
)


def default_tolerances_path() -> Path:
    """``fixtures/tolerances.toml`` beside the model catalog."""
    from pytest_minerva.models.catalog import fixtures_dir

    return fixtures_dir() / "tolerances.toml"


def _fail(path: Path | str, problem: str) -> ProfileError:
    return ProfileError(path, problem)


def _require(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if key not in table:
        raise _fail(path, f"{where}: missing {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(path, f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str, path: Path) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise _fail(path, f"{where}: unknown key(s) {sorted(unknown)}")


def _rule_from_table(table: Any, metrics: Sequence[str], where: str, path: Path) -> DerivationRule:
    if not isinstance(table, dict):
        raise _fail(path, f"{where}: 'rule' must be a table")
    _check_keys(table, {"method", "factor", "min_runs", "slack"}, f"{where}.rule", path)
    slack = table.get("slack", {})
    if not isinstance(slack, dict):
        raise _fail(path, f"{where}.rule: 'slack' must be a table of metric = number")
    for metric in slack:
        if metric not in metrics:
            raise _fail(path, f"{where}.rule: slack for {metric!r}, which the profile does not bound")
    try:
        return DerivationRule(
            factor=_require(table, "factor", (int, float), f"{where}.rule", path),
            min_runs=table.get("min_runs", 1),
            slack=dict(slack),
            method=table.get("method", RULE_METHOD),
        )
    except ValueError as exc:
        raise _fail(path, f"{where}.rule: {exc}") from None


_MEASUREMENT_KEYS = {"model", "reference", "candidate", "prompt_set", "positions", "date", "command"}


def _measurement_from_table(table: Any, metrics: Sequence[str], where: str, path: Path) -> Measurement:
    if not isinstance(table, dict):
        raise _fail(path, f"{where}: each measurement must be a table")
    _check_keys(table, _MEASUREMENT_KEYS | {"values", "versions"}, where, path)
    fields = {key: _require(table, key, str, where, path) for key in _MEASUREMENT_KEYS - {"positions"}}
    positions = _require(table, "positions", int, where, path)
    if positions < 1:
        raise _fail(path, f"{where}: 'positions' must be >= 1")
    try:
        datetime.fromisoformat(fields["date"].replace("Z", "+00:00"))
    except ValueError:
        raise _fail(path, f"{where}: 'date' {fields['date']!r} is not an ISO-8601 date") from None
    versions = table.get("versions", {})
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise _fail(path, f"{where}: 'versions' must be a table of package = \"version\"")
    values = _require(table, "values", dict, where, path)
    for name, value in values.items():
        try:
            spec = metric_spec(name)
        except KeyError as exc:
            raise _fail(path, f"{where}.values: {exc.args[0]}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _fail(path, f"{where}.values: {name} must be a finite number, got {value!r}")
        if value < 0 or (spec.kind == "rate" and value > 1):
            raise _fail(path, f"{where}.values: {name} = {value} is out of range for a {spec.kind}")
    missing = [m for m in metrics if m not in values]
    if missing:
        raise _fail(path, f"{where}.values: missing {', '.join(missing)} (the profile bounds them)")
    return Measurement(positions=positions, values=dict(values), versions=dict(versions), **fields)


_PROFILE_KEYS = {
    "description",
    "reference_precision",
    "candidate_precision",
    "same_weights",
    "metrics",
    "rule",
    "bounds",
    "measurements",
}


def _profile_from_table(name: str, table: Any, path: Path) -> Profile:
    where = f"profile {name!r}"
    if not _NAME.match(name):
        raise _fail(path, f"{where}: names use lower-case letters, digits, '.', '_' and '-'")
    if not isinstance(table, dict):
        raise _fail(path, f"{where}: must be a table")
    _check_keys(table, _PROFILE_KEYS, where, path)
    metrics = _require(table, "metrics", list, where, path)
    if not metrics or not all(isinstance(m, str) for m in metrics) or len(set(metrics)) != len(metrics):
        raise _fail(path, f"{where}: 'metrics' must be a non-empty list of distinct metric names")
    for metric in metrics:
        try:
            metric_spec(metric)
        except KeyError as exc:
            raise _fail(path, f"{where}: {exc.args[0]}") from None
    rule = _rule_from_table(_require(table, "rule", dict, where, path), metrics, where, path)
    raw = table.get("measurements", [])
    if not isinstance(raw, list):
        raise _fail(path, f"{where}: 'measurements' must be an array of tables ([[profiles.{name}.measurements]])")
    measurements = tuple(
        _measurement_from_table(m, metrics, f"{where} measurement #{i + 1}", path) for i, m in enumerate(raw)
    )
    bounds = table.get("bounds", {})
    if not isinstance(bounds, dict):
        raise _fail(path, f"{where}: 'bounds' must be a table")
    if len(measurements) < rule.min_runs:
        if bounds:
            raise _fail(
                path,
                f"{where}: has bounds but {len(measurements)} measurement(s) (rule needs {rule.min_runs}): "
                "bounds must be derived from measurements, never written by hand",
            )
    else:
        try:
            expected = derive_bounds(measurements, rule, metrics)
        except ValueError as exc:
            raise _fail(path, f"{where}: {exc}") from None
        if set(bounds) != set(expected) or any(
            not math.isclose(float(bounds[k]), v, rel_tol=1e-9, abs_tol=1e-300) for k, v in expected.items()
        ):
            shown = ", ".join(f"{k}={v:.6g}" for k, v in sorted(expected.items()))
            raise _fail(
                path,
                f"{where}: bounds do not follow from its measurements by its rule (expected {shown}); "
                f"run `minerva calibrate --profile {name}` instead of editing bounds",
            )
        bounds = expected
    return Profile(
        name=name,
        reference_precision=normalize_precision(_require(table, "reference_precision", str, where, path)),
        candidate_precision=normalize_precision(_require(table, "candidate_precision", str, where, path)),
        same_weights=_require(table, "same_weights", bool, where, path),
        metrics=tuple(metrics),
        rule=rule,
        measurements=measurements,
        bounds=dict(bounds),
        description=table.get("description", ""),
        source=path,
    )


def parse_profiles(text: str, path: str | Path) -> dict[str, Profile]:
    """Parse and validate tolerances TOML; every error names ``path`` and the profile."""
    where = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(where, f"not valid TOML: {exc}") from None
    _check_keys(data, {"schema_version", "profiles", "known_divergences"}, "top level", where)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise _fail(where, f"schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise _fail(where, "expected [profiles.NAME] tables")
    profiles = {name: _profile_from_table(name, table, where) for name, table in tables.items()}
    known_divergences_from_data(data, profiles, where)
    seen: dict[tuple[str, str, bool], str] = {}
    for profile in profiles.values():
        key = (profile.reference_precision, profile.candidate_precision, profile.same_weights)
        if key in seen:
            raise _fail(where, f"profiles {seen[key]!r} and {profile.name!r} cover the same pair {key}")
        seen[key] = profile.name
    return profiles


def known_divergences_from_data(
    data: Mapping[str, Any], profiles: Mapping[str, Profile], where: Path
) -> list[KnownDivergence]:
    """The ``[known_divergences.NAME]`` tables of parsed tolerances ``data``, checked against ``profiles``."""
    tables = data.get("known_divergences", {})
    if not isinstance(tables, dict):
        raise _fail(where, "expected [known_divergences.NAME] tables")
    out = []
    for name, table in tables.items():
        label = f"known_divergences.{name}"
        if not isinstance(table, dict):
            raise _fail(where, f"{label} must be a table")
        _check_keys(table, DIVERGENCE_KEYS, label, where)
        missing = DIVERGENCE_KEYS - set(table)
        if missing:
            raise _fail(where, f"{label}: missing key(s) {sorted(missing)}")
        if table["profile"] not in profiles:
            raise _fail(where, f"{label}: unknown profile {table['profile']!r}")
        measured = table["measured"]
        if not isinstance(measured, dict) or not measured:
            raise _fail(where, f"{label}: 'measured' must be a table of metric = value")
        for metric, value in measured.items():
            metric_spec(metric)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise _fail(where, f"{label}.measured.{metric} must be a finite number")
        out.append(
            KnownDivergence(
                name=name,
                measured={k: float(v) for k, v in measured.items()},
                **{k: str(table[k]) for k in DIVERGENCE_KEYS - {"measured"}},
            )
        )
    return out


def load_known_divergences(path: str | Path | None = None) -> list[KnownDivergence]:
    """The known divergences recorded in the tolerances file."""
    where = Path(path) if path is not None else default_tolerances_path()
    text = where.read_text(encoding="utf-8")
    profiles = parse_profiles(text, where)
    return known_divergences_from_data(tomllib.loads(text), profiles, where)


def load_profiles(path: str | Path | None = None) -> dict[str, Profile]:
    """Every profile in the tolerances file (default :func:`default_tolerances_path`), calibrated or not."""
    where = Path(path) if path is not None else default_tolerances_path()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(where, "tolerances file not found") from None
    except OSError as exc:
        raise ProfileError(where, f"cannot read: {exc.strerror}") from None
    return parse_profiles(text, where)


def get_profile(name: str, path: str | Path | None = None) -> Profile:
    """The calibrated profile ``name``; :class:`ProfileNotFound` / :class:`ProfileNotCalibrated` otherwise."""
    profiles = load_profiles(path)
    if name not in profiles:
        where = path if path is not None else default_tolerances_path()
        raise ProfileNotFound(where, f"no profile {name!r}; known: {', '.join(sorted(profiles)) or 'none'}")
    return profiles[name].require_calibrated()


def select_profile(
    reference_precision: str,
    candidate_precision: str,
    same_weights: bool,
    *,
    path: str | Path | None = None,
) -> Profile:
    """The calibrated profile for this pair (direction matters: KL is not symmetric)."""
    ref, cand = normalize_precision(reference_precision), normalize_precision(candidate_precision)
    profiles = load_profiles(path)
    for profile in profiles.values():
        if (profile.reference_precision, profile.candidate_precision, profile.same_weights) == (
            ref,
            cand,
            same_weights,
        ):
            return profile.require_calibrated()
    where = path if path is not None else default_tolerances_path()
    pairs = ", ".join(
        f"{p.name} ({p.reference_precision} -> {p.candidate_precision}{', same weights' if p.same_weights else ''})"
        for p in profiles.values()
    )
    raise ProfileNotFound(
        where,
        f"no profile for reference {ref} vs candidate {cand} (same_weights={same_weights}); known: {pairs or 'none'}",
    )
