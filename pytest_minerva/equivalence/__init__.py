"""Numerical equivalence of two backends' logits: metrics, tolerance profiles and diagnoses.

Typical use in a test::

    report = assert_equivalent(ref_logits, cand_logits, profile="same-weights-q4_1",
                               tokens=ids, detokenize=backend.detokenize)

Only numpy and the standard library are imported here; no backend is touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pytest_minerva.equivalence.calibration import record_measurements
from pytest_minerva.equivalence.diagnosis import Detokenize, format_diagnosis
from pytest_minerva.equivalence.metrics import (
    DEFAULT_TOPK,
    EquivalenceReport,
    GreedyAgreement,
    MetricSpec,
    TokenIds,
    align_vocab,
    compare_logits,
    greedy_agreement,
    kl_divergence,
    log_softmax,
    max_abs_logit_difference,
    metric_spec,
    nmse,
    probability_delta_rms,
    top1_agreement,
    topk_of_metric,
    topk_overlap,
)
from pytest_minerva.equivalence.profiles import (
    DerivationRule,
    KnownDivergence,
    Measurement,
    Profile,
    ProfileError,
    ProfileNotCalibrated,
    ProfileNotFound,
    Violation,
    derive_bounds,
)
from pytest_minerva.equivalence.tolerances import (
    default_tolerances_path,
    get_profile,
    load_known_divergences,
    load_profiles,
    parse_profiles,
    select_profile,
)
from pytest_minerva.errors import MinervaError

__all__ = [
    "DEFAULT_TOPK",
    "DerivationRule",
    "EquivalenceError",
    "EquivalenceReport",
    "GreedyAgreement",
    "KnownDivergence",
    "Measurement",
    "MetricSpec",
    "Profile",
    "ProfileError",
    "ProfileNotCalibrated",
    "ProfileNotFound",
    "TokenIds",
    "Violation",
    "align_vocab",
    "assert_equivalent",
    "compare_logits",
    "default_tolerances_path",
    "derive_bounds",
    "format_diagnosis",
    "get_profile",
    "greedy_agreement",
    "kl_divergence",
    "load_known_divergences",
    "load_profiles",
    "log_softmax",
    "max_abs_logit_difference",
    "metric_spec",
    "nmse",
    "parse_profiles",
    "probability_delta_rms",
    "record_measurements",
    "select_profile",
    "top1_agreement",
    "topk_overlap",
]


class EquivalenceError(AssertionError, MinervaError):
    """A candidate's logits are outside a profile's bounds; ``str(err)`` is the diagnosis."""

    def __init__(self, message: str, report: EquivalenceReport, violations: Sequence[Violation]) -> None:
        super().__init__(message)
        self.report = report
        self.violations = tuple(violations)


def assert_equivalent(
    reference: Any,
    candidate: Any,
    *,
    profile: Profile | str,
    tokens: TokenIds | None = None,
    detokenize: Detokenize | None = None,
    reference_generation: Iterable[int] | None = None,
    candidate_generation: Iterable[int] | None = None,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    skip: Iterable[str] = (),
    tolerances: str | Path | None = None,
) -> EquivalenceReport:
    """Compare two logits arrays (or objects with ``.logits``) under ``profile``; return the report.

    ``profile`` is a :class:`Profile` or a profile name looked up in ``tolerances`` (default
    ``fixtures/tolerances.toml``). ``tokens`` are the input ids, one per logits row; with
    ``detokenize`` the failure message shows the prompt text and top-5 tokens as text. Greedy
    generations are needed when the profile bounds ``greedy_prefix``; ``skip`` names bounded
    metrics to leave unchecked on purpose. Raises :class:`EquivalenceError` on any violation.
    """
    __tracebackhide__ = True
    chosen = get_profile(profile, tolerances) if isinstance(profile, str) else profile.require_calibrated()
    extra_k = {k for k in map(topk_of_metric, chosen.metrics) if k is not None}
    report = compare_logits(
        reference,
        candidate,
        tokens=tokens,
        reference_generation=reference_generation,
        candidate_generation=candidate_generation,
        topk=sorted(set(DEFAULT_TOPK) | extra_k),
    )
    violations = chosen.check(report, skip=skip)
    if violations:
        message = format_diagnosis(
            report,
            violations,
            profile=chosen,
            tokens=tokens,
            detokenize=detokenize,
            reference_name=reference_name,
            candidate_name=candidate_name,
        )
        raise EquivalenceError(message, report, violations)
    return report
