"""A correctly running model knows a few things; a broken one (even two broken alike) does not.

Cross-backend agreement cannot catch an error every engine shares, such as a wrong value in a
config we derive. These prompts (``fixtures/expectations.toml``) pin down the answer itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from pytest_minerva.backends.base import Backend
from pytest_minerva.suites.support import model_facts


def test_model_completes_known_facts(backend: Backend, request: pytest.FixtureRequest) -> None:
    model = request.node.callspec.params["backend"].model.name
    facts = model_facts(model)
    if not facts:
        pytest.skip(f"{model} has no facts in fixtures/expectations.toml (random weights know nothing)")
    misses = []
    for fact in facts:
        ids = backend.tokenize(fact["prompt"], add_bos=backend.bos_id is not None)
        row = backend.logits(ids)[-1]
        expected = backend.tokenize(fact["expect"])[0]
        ranking = np.argsort(-row, kind="stable")
        rank = int(np.where(ranking == expected)[0][0]) + 1
        if rank > int(fact["top"]):
            top = [backend.detokenize([int(t)]) for t in ranking[:5]]
            misses.append(
                f"{fact['prompt']!r} -> expected {fact['expect']!r} at rank <= {fact['top']}, "
                f"got rank {rank}; top-5 {top}"
            )
    assert not misses, f"{backend.name} does not compute {model} correctly:\n" + "\n".join(misses)
