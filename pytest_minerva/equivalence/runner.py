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

import numpy as np

from pytest_minerva.backends.base import Backend, GenerationRequest
from pytest_minerva.equivalence.metrics import DEFAULT_TOPK, EquivalenceReport, compare_logits, topk_of_metric
from pytest_minerva.equivalence.profiles import Profile, normalize_precision
from pytest_minerva.equivalence.tolerances import load_profiles, select_profile
from pytest_minerva.matrix import Case

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
