"""Numerics history: how far each backend's logits are from its reference's, per commit.

The figures are the equivalence suite's (``pytest_minerva/suites/test_equivalence.py``), computed
by the same code (:func:`pytest_minerva.equivalence.runner.measure_numerics` over
:func:`~pytest_minerva.equivalence.runner.compare`) on the same fixed prompts: the first 48 tokens
of ``fixtures/prompts/{short,medium,code}.txt``, pooled. The suite only says pass or fail against a
tolerance; this history shows a drift inside the tolerance long before it crosses it.

Each figure is lower-is-better, as asv assumes, so a larger KL is "worse" in ``asv compare`` and
``asv continuous``: ``kl_mean`` and ``kl_max`` (nats, KL(P_ref || P_cand) per position),
``top1_disagreement`` (the share of positions whose argmax differs: ``1 - top1_agreement``) and
``max_dlogit`` (the largest |logit difference|). One deterministic value per commit, no samples:
asv then judges a change by its factor alone, and a change from exactly 0 always counts.
``minerva gate asv --numerics-factor`` gates on them with a threshold of their own.

Parameters: the model (``MINERVA_ASV_MODELS``) and the pair, named by both sides' format and
backend. A pair is measured for each backend of ``MINERVA_ASV_BACKENDS`` as the candidate, against
whichever backend the suite makes its reference (transformers on SafeTensors for cross-backend
pairs, llama.cpp on the most precise GGUF for quantization pairs), on ``MINERVA_ASV_DEVICE``.
"""

from __future__ import annotations

from typing import Any

from . import common

#: What ``Numerics.setup_cache`` returns: see :func:`common.measure_numerics_all`.
Measurement = dict[str, Any]
PARAMS = [list(common.MODELS), list(common.numerics_pair_labels()) or ["(no pair)"]]
PARAM_NAMES = ["model", "pair"]


class Numerics:
    """Equivalence figures of every backend pair, measured once per asv round in ``setup_cache``."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 1800

    def setup_cache(self) -> Measurement:
        return common.measure_numerics_all()

    def setup(self, measurement: Measurement, model: str, pair: str) -> None:
        self.figures = common.numerics_figures(measurement, model, pair)

    def track_kl_mean(self, measurement: Measurement, model: str, pair: str) -> float:
        return self.figures["kl_mean"]

    track_kl_mean.unit = "nats"
    track_kl_mean.version = "kl_mean-1: mean KL(P_ref || P_cand) over 3 fixed prompts x 48 positions"

    def track_kl_max(self, measurement: Measurement, model: str, pair: str) -> float:
        return self.figures["kl_max"]

    track_kl_max.unit = "nats"
    track_kl_max.version = "kl_max-1: largest KL(P_ref || P_cand) over 3 fixed prompts x 48 positions"

    def track_top1_disagreement(self, measurement: Measurement, model: str, pair: str) -> float:
        return self.figures["top1_disagreement"]

    track_top1_disagreement.unit = "fraction"
    track_top1_disagreement.version = "top1_disagreement-1: 1 - top-1 agreement over 3 fixed prompts x 48 positions"

    def track_max_dlogit(self, measurement: Measurement, model: str, pair: str) -> float:
        return self.figures["max_dlogit"]

    track_max_dlogit.unit = "logits"
    track_max_dlogit.version = "max_dlogit-1: largest |logit_ref - logit_cand| over 3 fixed prompts x 48 positions"
