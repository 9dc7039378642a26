"""The same model, run by different engines or at different precisions, computes the same thing.

Pairs (see :func:`pytest_minerva.matrix.pairs`): transformers on the SafeTensors against
llama.cpp on the GGUF, transformers on the GGUF and mlx_lm on MLX; and for models with several
GGUF precisions, the most precise against each other one. Each pair is held to the calibrated
profile of its precisions (``fixtures/tolerances.toml``; bounds are measurements times a stated
factor, written by ``minerva calibrate``), and a failure explains itself: which metric, where,
the prompt text and both sides' top tokens.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_minerva.equivalence import Profile, assert_equivalent
from pytest_minerva.equivalence.runner import greedy, profile_for, prompts
from pytest_minerva.fixtures import LoadedPair, get_session
from pytest_minerva.suites.support import mark_known_divergence


def _profile(backend_pair: LoadedPair, request: pytest.FixtureRequest) -> Profile:
    pair = backend_pair.pair
    tolerances = get_session(request.config).settings.tolerances  # --minerva-tolerances, else ours
    return profile_for(pair.reference, pair.candidate, backend_pair.same_weights, path=tolerances)


def test_logits_agree(backend_pair: LoadedPair, request: pytest.FixtureRequest) -> None:
    mark_known_divergence(request, backend_pair.pair)
    profile = _profile(backend_pair, request)
    ref, cand = backend_pair.reference, backend_pair.candidate
    for prompt in prompts(ref):
        with_greedy = "greedy_prefix" in profile.metrics
        assert_equivalent(
            ref.logits(prompt.ids),
            cand.logits(prompt.ids),
            profile=profile,
            tokens=prompt.ids,
            detokenize=ref.detokenize,
            reference_generation=greedy(ref, prompt.ids) if with_greedy else None,
            candidate_generation=greedy(cand, prompt.ids) if with_greedy else None,
            reference_name=backend_pair.pair.reference.id,
            candidate_name=backend_pair.pair.candidate.id,
        )


@pytest.mark.minerva(pairs=["cross-backend"])
def test_same_weights_start_the_same_continuation(backend_pair: LoadedPair, request: pytest.FixtureRequest) -> None:
    """Engines running the very same weights start every prompt's greedy continuation the same way.

    The one exception is a near tie: where the reference's own top-1 leads the candidate's pick
    by no more than the profile's calibrated ``max_dlogit`` bound (the largest per-logit
    difference measured between the two engines), the pair's measured numerical difference can
    legitimately swap them; llama.cpp, for one, quantizes activations to 8 bits for its dot
    products, and the result depends on the CPU's SIMD path. Anything wider fails. A float32
    pair's bound is a few hundredths of a logit, so there the tokens must be identical.
    """
    if not backend_pair.same_weights:
        pytest.skip("the two sides run different weights")
    profile = _profile(backend_pair, request)
    tie = float(profile.bounds.get("max_dlogit", 0.0))  # a profile that does not bound it allows no swap
    ref, cand = backend_pair.reference, backend_pair.candidate
    for prompt in prompts(ref):
        first_ref, first_cand = greedy(ref, prompt.ids, 1), greedy(cand, prompt.ids, 1)
        if first_ref == first_cand:
            continue
        row = np.asarray(ref.logits(prompt.ids), dtype=np.float64)[-1]
        a, b = first_ref[0], first_cand[0]
        margin = float(row[a] - row[b])
        assert margin <= tie, (
            f"{prompt.name}: {backend_pair.pair.reference.id} continues with {ref.detokenize(first_ref)!r}, "
            f"{backend_pair.pair.candidate.id} with {cand.detokenize(first_cand)!r}; the reference prefers its "
            f"token by {margin:.3f} logits, more than the {tie:.3f} that profile {profile.name!r} allows "
            f"between these engines (fixtures/tolerances.toml)"
        )
