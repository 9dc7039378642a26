"""Tolerance profiles: per precision pair, bounds on each metric, derived from recorded measurements.

A profile (``[profiles.NAME]`` in ``fixtures/tolerances.toml``) says which pair it covers
(reference precision, candidate precision, and whether both run the *same weights*, e.g.
llama.cpp on a Q4_1 GGUF against transformers on that file's float32 dequantization), which
metrics it bounds, the rule that turns measurements into bounds, the measurements themselves
(model, backends, prompt set, each metric value, date, versions, command) and the bounds.

Bounds are never picked by hand: the loader recomputes them from the measurements with the
stated rule and refuses a file where they disagree, and a profile without measurements cannot
be used. ``minerva calibrate`` refreshes a profile through :func:`record_measurements`.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pytest_minerva.equivalence.metrics import EquivalenceReport, metric_spec
from pytest_minerva.errors import MinervaError

SCHEMA_VERSION = 1
RULE_METHOD = "worst-times-factor"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_PRECISION_ALIASES = {
    "float32": "f32",
    "fp32": "f32",
    "float16": "f16",
    "fp16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
}


class ProfileError(MinervaError):
    """The tolerances file is missing, malformed or inconsistent; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ProfileNotFound(ProfileError):
    """No profile has the requested name or precision pair."""


class ProfileNotCalibrated(ProfileError):
    """The profile exists but has no (or too few) measurements, so it has no bounds to check."""


def default_tolerances_path() -> Path:
    """``fixtures/tolerances.toml`` beside the model catalog."""
    from pytest_minerva.catalog import fixtures_dir

    return fixtures_dir() / "tolerances.toml"


def normalize_precision(precision: str) -> str:
    """Lower-case precision label with common aliases folded (``float32`` -> ``f32``)."""
    label = precision.strip().lower()
    return _PRECISION_ALIASES.get(label, label)


@dataclass(frozen=True)
class DerivationRule:
    """How bounds follow from measurements (method ``worst-times-factor``).

    For each bounded metric take the worst value over all measurements, then:

    * lower-is-better metrics (KL, Δlogit, NMSE, Δp): ``bound = worst * factor + slack``;
    * rates in [0, 1] (top-1 agreement, top-k overlap): the shortfall from 1 is scaled,
      ``bound = 1 - ((1 - worst) * factor + slack)``;
    * ``greedy_prefix`` (tokens): ``bound = floor(worst / factor) - slack``.

    ``slack`` is an optional absolute allowance per metric, stated in the file like the factor.
    At least ``min_runs`` measurements are required before a profile has bounds.
    """

    factor: float = 2.0
    min_runs: int = 1
    slack: Mapping[str, float] = field(default_factory=dict)
    method: str = RULE_METHOD

    def __post_init__(self) -> None:
        if self.method != RULE_METHOD:
            raise ValueError(f"rule method must be {RULE_METHOD!r}, got {self.method!r}")
        if isinstance(self.factor, bool) or not (
            isinstance(self.factor, int | float) and math.isfinite(self.factor) and self.factor >= 1
        ):
            raise ValueError(f"rule factor must be a finite number >= 1, got {self.factor!r}")
        if isinstance(self.min_runs, bool) or not (isinstance(self.min_runs, int) and self.min_runs >= 1):
            raise ValueError(f"rule min_runs must be an integer >= 1, got {self.min_runs!r}")
        for metric, value in self.slack.items():
            metric_spec(metric)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"rule slack for {metric} must be a finite number >= 0, got {value!r}")

    def describe(self) -> str:
        text = f"bound = worst measured x {self.factor:g} (rule {self.method}, at least {self.min_runs} run(s))"
        if self.slack:
            text += "; plus slack " + ", ".join(f"{k}={v:g}" for k, v in sorted(self.slack.items()))
        return text


@dataclass(frozen=True)
class Measurement:
    """One calibration run: what was compared, how, and every metric value it produced."""

    model: str
    reference: str
    candidate: str
    prompt_set: str
    positions: int
    date: str
    command: str
    values: Mapping[str, float]
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_report(
        cls,
        report: EquivalenceReport,
        metrics: Iterable[str],
        *,
        model: str,
        reference: str,
        candidate: str,
        prompt_set: str,
        command: str,
        versions: Mapping[str, str],
        date: str | None = None,
    ) -> Measurement:
        """A measurement holding ``report``'s values of ``metrics`` (each must have been computed)."""
        values: dict[str, float] = {}
        for name in metrics:
            value = report.metric_value(name)
            if value is None:
                raise ValueError(f"the report has no value for {name}: give compare_logits the inputs it needs")
            values[name] = value
        return cls(
            model=model,
            reference=reference,
            candidate=candidate,
            prompt_set=prompt_set,
            positions=report.positions,
            date=date or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            command=command,
            values=values,
            versions=dict(versions),
        )

    def summary(self) -> str:
        return f"{self.model}: {self.reference} vs {self.candidate}, prompts {self.prompt_set!r}, {self.date}"


def _worst(values: Sequence[float], better: str) -> tuple[float, int]:
    pick = max if better == "lower" else min
    worst = pick(values)
    return worst, values.index(worst)


def _values_of(measurement: Measurement | Mapping[str, float]) -> Mapping[str, float]:
    return measurement.values if isinstance(measurement, Measurement) else measurement


def derive_bounds(
    measurements: Sequence[Measurement | Mapping[str, float]],
    rule: DerivationRule,
    metrics: Iterable[str] | None = None,
) -> dict[str, float]:
    """Bounds for ``metrics`` (default: those every measurement has) by ``rule``.

    Raises ``ValueError`` when there are fewer than ``rule.min_runs`` measurements, when one
    lacks a metric or holds a non-finite value, and when a bound could never fail (a rate bound
    <= 0 or a greedy-prefix bound of 0): such a metric must be dropped from the profile instead.
    """
    if len(measurements) < rule.min_runs:
        raise ValueError(f"{len(measurements)} measurement(s); the rule needs at least {rule.min_runs}")
    tables = [_values_of(m) for m in measurements]
    names = list(metrics) if metrics is not None else sorted(set.intersection(*(set(t) for t in tables)))
    bounds: dict[str, float] = {}
    for name in names:
        spec = metric_spec(name)
        values = []
        for i, table in enumerate(tables):
            if name not in table:
                raise ValueError(f"measurement #{i + 1} has no value for {name}")
            value = float(table[name])
            if not math.isfinite(value):
                raise ValueError(f"measurement #{i + 1} has a non-finite {name} ({value}): fix the run first")
            values.append(value)
        worst, _ = _worst(values, spec.better)
        slack = float(rule.slack.get(name, 0.0))
        if spec.kind == "divergence":
            bound = worst * rule.factor + slack
        elif spec.kind == "rate":
            bound = 1.0 - ((1.0 - worst) * rule.factor + slack)
        else:
            bound = float(math.floor(worst / rule.factor) - slack)
        if spec.better == "higher" and bound <= 0:
            raise ValueError(
                f"the bound for {name} would be {bound:g} (worst measured {worst:g}), "
                "which no result can fail; "
                f"drop {name} from the profile's metrics"
            )
        bounds[name] = bound
    return bounds


@dataclass(frozen=True)
class Violation:
    """One metric outside its bound."""

    metric: str
    value: float
    bound: float
    better: str
    worst_position: int | None

    def describe(self) -> str:
        relation = "at most" if self.better == "lower" else "at least"
        return f"{self.metric} = {self.value:.6g} (bound: {relation} {self.bound:.6g})"


@dataclass(frozen=True)
class Profile:
    """Bounds for one precision pair, with the measurements and rule they were derived from."""

    name: str
    reference_precision: str
    candidate_precision: str
    same_weights: bool
    metrics: tuple[str, ...]
    rule: DerivationRule
    measurements: tuple[Measurement, ...] = ()
    bounds: Mapping[str, float] = field(default_factory=dict)
    description: str = ""
    source: Path | None = None

    @property
    def calibrated(self) -> bool:
        """True once the profile has enough measurements to have bounds."""
        return bool(self.bounds)

    def require_calibrated(self) -> Profile:
        """``self``, or :class:`ProfileNotCalibrated` naming the file and how to calibrate."""
        if not self.calibrated:
            have = len(self.measurements)
            raise ProfileNotCalibrated(
                self.source or "<profile>",
                f"profile {self.name!r} has {have} measurement(s), the rule needs {self.rule.min_runs}; "
                "bounds are derived from measurements, never picked by hand: "
                f"run `minerva calibrate --profile {self.name}`",
            )
        return self

    def worst_measurement(self, metric: str) -> tuple[float, Measurement]:
        """The worst recorded value of ``metric`` and the run that produced it."""
        values = [float(m.values[metric]) for m in self.measurements]
        worst, index = _worst(values, metric_spec(metric).better)
        return worst, self.measurements[index]

    def bound_formula(self, metric: str) -> str:
        """The arithmetic behind the bound of ``metric``, e.g. ``0.0122 = 0.00611 (worst of 4 runs) x 2``."""
        worst, _ = self.worst_measurement(metric)
        kind = metric_spec(metric).kind
        slack = self.rule.slack.get(metric)
        runs = f"worst of {len(self.measurements)} run(s)"
        if kind == "divergence":
            text = f"{worst:.6g} ({runs}) x {self.rule.factor:g}" + (f" + {slack:g}" if slack else "")
        elif kind == "rate":
            text = f"1 - (1 - {worst:.6g} ({runs})) x {self.rule.factor:g}" + (f" - {slack:g}" if slack else "")
        else:
            text = f"floor({worst:g} ({runs}) / {self.rule.factor:g})" + (f" - {slack:g}" if slack else "")
        return f"{self.bounds[metric]:.6g} = {text}"

    def bound_origin(self, metric: str) -> str:
        """Where the bound of ``metric`` came from: file, rule, worst measured value and its run."""
        if metric not in self.bounds:
            return f"profile {self.name!r} has no bound for {metric}"
        _, run = self.worst_measurement(metric)
        where = f" in {self.source}" if self.source else ""
        formula = self.bound_formula(metric)
        return f"profile {self.name!r}{where}: {metric} bound {formula}; that run: {run.summary()}"

    def check(self, report: EquivalenceReport, *, skip: Iterable[str] = ()) -> list[Violation]:
        """Violations of this profile's bounds by ``report``; NaN counts as a violation.

        Raises ``ValueError`` when a bounded metric was not computed (say ``greedy_prefix`` without
        generations): pass its inputs, or name it in ``skip`` to leave it unchecked on purpose.
        """
        self.require_calibrated()
        skipped = set(skip)
        found: list[Violation] = []
        for metric in self.metrics:
            if metric in skipped:
                continue
            value = report.metric_value(metric)
            if value is None:
                raise ValueError(
                    f"profile {self.name!r} bounds {metric}, which this comparison did not compute: "
                    f"pass its inputs or skip={metric!r}"
                )
            bound = self.bounds[metric]
            better = metric_spec(metric).better
            within = value <= bound if better == "lower" else value >= bound
            if not within:
                found.append(Violation(metric, value, bound, better, report.worst_position(metric)))
        return found


def _fail(path: Path | str, problem: str) -> ProfileError:
    return ProfileError(path, problem)


def _require(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if key not in table:
        raise _fail(path, f"{where}: missing {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _fail(path, f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str, path: Path) -> None:
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
    _divergences_from_data(data, profiles, where)
    seen: dict[tuple[str, str, bool], str] = {}
    for profile in profiles.values():
        key = (profile.reference_precision, profile.candidate_precision, profile.same_weights)
        if key in seen:
            raise _fail(where, f"profiles {seen[key]!r} and {profile.name!r} cover the same pair {key}")
        seen[key] = profile.name
    return profiles


@dataclass(frozen=True)
class KnownDivergence:
    """A pair that is outside its profile for a reason that lies in an engine, not in our code.

    The suite marks the matching test ``xfail(strict=True)``: it keeps failing while the engine
    diverges, and turns into an unexpected pass, failing the run, once upstream fixes it.
    """

    name: str
    model: str
    reference_backend: str
    candidate_backend: str
    profile: str
    cause: str
    engine: str
    measured: Mapping[str, float]

    def matches(self, model: str, reference_backend: str, candidate_backend: str) -> bool:
        return (self.model, self.reference_backend, self.candidate_backend) == (
            model,
            reference_backend,
            candidate_backend,
        )

    def reason(self) -> str:
        figures = ", ".join(f"{k}={v:.3g}" for k, v in self.measured.items())
        return f"known divergence {self.name} ({self.engine}): {self.cause} [measured {figures}]"


_DIVERGENCE_KEYS = {"model", "reference_backend", "candidate_backend", "profile", "cause", "engine", "measured"}


def _divergences_from_data(
    data: Mapping[str, Any], profiles: Mapping[str, Profile], where: Path
) -> list[KnownDivergence]:
    tables = data.get("known_divergences", {})
    if not isinstance(tables, dict):
        raise _fail(where, "expected [known_divergences.NAME] tables")
    out = []
    for name, table in tables.items():
        label = f"known_divergences.{name}"
        if not isinstance(table, dict):
            raise _fail(where, f"{label} must be a table")
        _check_keys(table, _DIVERGENCE_KEYS, label, where)
        missing = _DIVERGENCE_KEYS - set(table)
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
                **{k: str(table[k]) for k in _DIVERGENCE_KEYS - {"measured"}},
            )
        )
    return out


def load_known_divergences(path: str | Path | None = None) -> list[KnownDivergence]:
    """The known divergences recorded in the tolerances file."""
    where = Path(path) if path is not None else default_tolerances_path()
    text = where.read_text(encoding="utf-8")
    profiles = parse_profiles(text, where)
    return _divergences_from_data(tomllib.loads(text), profiles, where)


def _render_divergences(divergences: Iterable[KnownDivergence]) -> list[str]:
    lines: list[str] = []
    for d in divergences:
        base = f"known_divergences.{json.dumps(d.name)}"
        head = {k: getattr(d, k) for k in sorted(_DIVERGENCE_KEYS - {"measured"})}
        lines += _table_lines(f"[{base}]", head)
        lines += _table_lines(f"[{base}.measured]", dict(d.measured))
    return lines


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


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".eEn") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _table_lines(header: str, items: Mapping[str, Any]) -> list[str]:
    return [header, *(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in items.items()), ""]


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
        lines += _table_lines(f"[{base}]", head)
        rule = {"method": p.rule.method, "factor": float(p.rule.factor), "min_runs": p.rule.min_runs}
        lines += _table_lines(f"[{base}.rule]", rule)
        if p.rule.slack:
            lines += _table_lines(f"[{base}.rule.slack]", {k: float(v) for k, v in p.rule.slack.items()})
        if p.bounds:
            lines += _table_lines(f"[{base}.bounds]", {k: float(v) for k, v in p.bounds.items()})
        for m in p.measurements:
            lines += _table_lines(
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
                lines += _table_lines(f"[{base}.measurements.versions]", dict(m.versions))
            lines += _table_lines(f"[{base}.measurements.values]", {k: float(v) for k, v in m.values.items()})
    return "\n".join(lines).rstrip("\n") + "\n"


def _leading_comments(text: str) -> str:
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or (header and not line.strip()):
            header.append(line)
        else:
            break
    return "\n".join(header).rstrip("\n")


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
    rendered = render_profiles(profiles.values(), _leading_comments(text))
    divergences = _divergences_from_data(tomllib.loads(text), profiles, where) if text else []
    if divergences:
        rendered = rendered + "\n" + "\n".join(_render_divergences(divergences)).rstrip("\n") + "\n"
    checked = parse_profiles(rendered, where)
    atomic_write_text(where, rendered)
    return checked[name]
