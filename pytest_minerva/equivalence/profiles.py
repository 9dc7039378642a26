"""Tolerance profiles: per precision pair, bounds on each metric, derived from recorded measurements.

A profile (``[profiles.NAME]`` in ``fixtures/tolerances.toml``) says which pair it covers
(reference precision, candidate precision, and whether both run the *same weights*, e.g.
llama.cpp on a Q4_1 GGUF against transformers on that file's float32 dequantization), which
metrics it bounds, the rule that turns measurements into bounds, the measurements themselves
(model, backends, prompt set, each metric value, date, versions, command) and the bounds.

Bounds are never picked by hand: :func:`derive_bounds` computes them from the measurements
with the stated rule, and a profile without measurements cannot be used. This module holds
the objects and that arithmetic, and reads no file: :mod:`~pytest_minerva.equivalence.tolerances`
loads, checks and selects profiles from the tolerances file, and
:mod:`~pytest_minerva.equivalence.calibration` records measurements into it (``minerva calibrate``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pytest_minerva.equivalence.metrics import EquivalenceReport, metric_spec
from pytest_minerva.errors import MinervaError

RULE_METHOD = "worst-times-factor"
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
