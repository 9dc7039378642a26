"""Run two loaded backends on the same inputs and compare them: what the suite and ``minerva calibrate`` share.

The inputs are fixed: the prompt files under ``fixtures/prompts/`` (the benchmark scenarios'
texts), each cut to :data:`PROMPT_TOKENS` tokens of the reference's tokenization, and a greedy
continuation of :data:`GREEDY_TOKENS` tokens. Both sides get the same token ids, so a tokenizer
disagreement cannot hide a logits disagreement (tokenizers are compared separately).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_minerva.backends.base import Backend, GenerationRequest
from pytest_minerva.equivalence.metrics import DEFAULT_TOPK, EquivalenceReport, compare_logits, topk_of_metric
from pytest_minerva.equivalence.profiles import Profile, normalize_precision
from pytest_minerva.equivalence.tolerances import load_profiles, select_profile
from pytest_minerva.matrix import Case, Pair

#: The prompt files compared (names under ``fixtures/prompts/``), and how many tokens of each.
PROMPT_SET = ("short.txt", "medium.txt", "code.txt")
PROMPT_TOKENS = 48
GREEDY_TOKENS = 16


@dataclass(frozen=True)
class Prompt:
    name: str
    ids: tuple[int, ...]


def prompts(backend: Backend, names: Sequence[str] = PROMPT_SET, tokens: int = PROMPT_TOKENS) -> list[Prompt]:
    """The fixed prompts as ``backend`` tokenizes them, each with BOS when the model declares one."""
    from pytest_minerva.timing.scenarios import prompt_text

    out = []
    for name in names:
        ids = backend.tokenize(prompt_text(name), add_bos=backend.bos_id is not None)
        out.append(Prompt(name.removesuffix(".txt"), tuple(ids[:tokens])))
    return out


def greedy(backend: Backend, ids: Sequence[int], count: int = GREEDY_TOKENS) -> list[int]:
    """``count`` greedy tokens after ``ids``, generated past EOS so both sides give the same count."""
    request = GenerationRequest(prompt_ids=tuple(ids), max_tokens=count, temperature=0.0, ignore_eos=True)
    return [event.token for event in backend.stream(request)]


def profile_for(
    reference: Case,
    candidate: Case,
    same_weights: bool,
    path: str | Path | None = None,
    *,
    calibrated: bool = True,
) -> Profile:
    """The tolerance profile for a pair of cases (``calibrated=False``: also one without bounds yet).

    Two sides at the same precision compute the same numbers whatever their provenance (a
    float32 GGUF and the float32 SafeTensors it was written beside), so they count as same weights.
    """
    ref, cand = normalize_precision(reference.precision), normalize_precision(candidate.precision)
    same = same_weights or ref == cand
    if calibrated:
        return select_profile(ref, cand, same, path=path)
    for profile in load_profiles(path).values():
        if (profile.reference_precision, profile.candidate_precision, profile.same_weights) == (ref, cand, same):
            return profile
    return select_profile(ref, cand, same, path=path)  # raises ProfileNotFound naming the known pairs


def needs_generation(profile: Profile) -> bool:
    return "greedy_prefix" in profile.metrics


def compare(
    reference: Backend,
    candidate: Backend,
    prompt: Prompt,
    *,
    metrics: Sequence[str] = (),
    with_generation: bool = False,
) -> EquivalenceReport:
    """Logits of both backends on ``prompt`` (and greedy continuations when asked), compared."""
    ref_logits = np.asarray(reference.logits(prompt.ids), dtype=np.float32)
    cand_logits = np.asarray(candidate.logits(prompt.ids), dtype=np.float32)
    extra_k = {k for k in map(topk_of_metric, metrics) if k is not None}
    return compare_logits(
        ref_logits,
        cand_logits,
        tokens=prompt.ids,
        reference_generation=greedy(reference, prompt.ids) if with_generation else None,
        candidate_generation=greedy(candidate, prompt.ids) if with_generation else None,
        topk=sorted(set(DEFAULT_TOPK) | extra_k),
    )


#: The figures the numerics history tracks per pair (asv's ``bench_numerics``, ``minerva bench``),
#: each the :class:`EquivalenceReport` field of that name, pooled over the prompt set.
NUMERICS_FIGURES = ("kl_mean", "kl_max", "top1_agreement", "max_dlogit")


class NonFiniteLogits(ValueError):
    """A side gave NaN or infinite logits: no numerics figure describes that pair."""


@dataclass(frozen=True)
class PairNumerics:
    """One pair's equivalence figures over the fixed prompts, pooled as if one long input.

    ``kl_mean`` and ``top1_agreement`` are means over every compared position of every prompt
    (each prompt weighted by its positions); ``kl_max`` and ``max_dlogit`` the largest anywhere.
    ``per_prompt`` keeps each prompt's own four figures. Every number is a field of the
    :class:`EquivalenceReport` that :func:`compare` (what ``test_logits_agree`` checks) returns.
    """

    positions: int
    kl_mean: float
    kl_max: float
    top1_agreement: float
    max_dlogit: float
    per_prompt: dict[str, dict[str, float]]

    @classmethod
    def from_reports(cls, reports: dict[str, EquivalenceReport]) -> PairNumerics:
        if not reports:
            raise ValueError("no prompt was compared")
        for name, report in reports.items():
            if report.nonfinite_positions:
                raise NonFiniteLogits(
                    f"prompt {name!r}: non-finite logits at positions {list(report.nonfinite_positions)[:8]}"
                    f" (reference rows {list(report.nonfinite_reference)[:8]},"
                    f" candidate rows {list(report.nonfinite_candidate)[:8]})"
                )
        weights = np.array([r.positions for r in reports.values()], dtype=np.float64)
        total = float(weights.sum())

        def pooled(name: str) -> float:
            values = np.array([getattr(r, name) for r in reports.values()], dtype=np.float64)
            return float((values * weights).sum() / total)

        return cls(
            positions=int(total),
            kl_mean=pooled("kl_mean"),
            kl_max=float(max(r.kl_max for r in reports.values())),
            top1_agreement=pooled("top1_agreement"),
            max_dlogit=float(max(r.max_dlogit for r in reports.values())),
            per_prompt={
                name: {figure: float(getattr(r, figure)) for figure in NUMERICS_FIGURES} for name, r in reports.items()
            },
        )

    def figures(self) -> dict[str, float]:
        """The four pooled figures by name (:data:`NUMERICS_FIGURES`)."""
        return {figure: float(getattr(self, figure)) for figure in NUMERICS_FIGURES}


def measure_numerics(reference: Backend, candidate: Backend, names: Sequence[str] = PROMPT_SET) -> PairNumerics:
    """Both backends' logits on the fixed prompts (:func:`prompts`, as ``reference`` tokenizes them),
    compared by :func:`compare`, pooled into one :class:`PairNumerics`. Raises
    :class:`NonFiniteLogits` when a side returns NaN or infinite logits."""
    return PairNumerics.from_reports({p.name: compare(reference, candidate, p) for p in prompts(reference, names)})


def measure_pair(session: Any, pair: Pair) -> PairNumerics:
    """Load both sides of ``pair`` through ``session`` (``session.backend``: shared, in a worker where
    the engine runs native code) and measure them with :func:`measure_numerics`.

    Raises :class:`~pytest_minerva.errors.BackendUnavailable` naming the reason where a side cannot
    run here (absent device or library), :class:`~pytest_minerva.errors.ArtifactMissing` where a
    file is absent, :class:`NonFiniteLogits` where a side returns NaN or infinite logits.
    """
    from pytest_minerva.errors import BackendUnavailable

    reason = session.check_runnable(pair.reference) or session.check_runnable(pair.candidate)
    if reason:
        raise BackendUnavailable(reason)
    reference = session.backend(pair.reference)
    candidate = session.backend(pair.candidate)
    return measure_numerics(reference, candidate)
