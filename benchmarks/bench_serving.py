"""A served model under concurrent load: llama_cpp.server on loopback, 1/2/4/8 requests in flight.

``setup_cache`` starts ``llama_cpp.server`` on the model's GGUF (:data:`common.THREADS`
threads), sends one untimed warm-up request, then runs a closed-loop level per
concurrency (:func:`pytest_minerva.serving.loadgen.concurrency_sweep`): distinct prompts
of :data:`PROMPT_TOKENS` tokens, :data:`MAX_TOKENS` generated tokens each with EOS
ignored, ``2 x concurrency`` requests (at least 4) per level. The server is stopped
before ``setup_cache`` returns, even when a level fails.

Per-request TTFT and TpT are kept as samples (one per request), so ``asv compare`` can
test them; the aggregate rate has one value per level. As everywhere in asv, lower is
"better": gate on the ``_ms`` figures and read the rate in the graphs. Set
``MINERVA_ASV_SERVING=0`` to leave this suite out of a run.
"""

from __future__ import annotations

import os
from typing import Any

from . import common

CONCURRENCY = [1, 2, 4, 8]
PROMPT_TOKENS = 64
MAX_TOKENS = 32
ENABLED = os.environ.get("MINERVA_ASV_SERVING", "1").strip() not in ("0", "false", "no")

Measurement = dict[str, Any]
PARAMS = [list(common.MODELS), CONCURRENCY]
PARAM_NAMES = ["model", "concurrency"]


def _sweep(model: str) -> dict[str, Any]:
    """``{concurrency: figures}`` for ``model`` served on loopback, or ``{"skip": reason}``."""
    from pytest_minerva.errors import MinervaError
    from pytest_minerva.options import Settings
    from pytest_minerva.serving import loadgen
    from pytest_minerva.serving import server as serving_server
    from pytest_minerva.serving.server import LlamaCppServer, server_unavailable_reason
    from pytest_minerva.timing.scenarios import prompt_text

    reason = server_unavailable_reason()
    if reason:
        return {"skip": reason}
    session = common.build_session(Settings(models=[model]))
    spec = session.models[0].primary("gguf")
    if spec is None:
        return {"skip": f"{model} has no GGUF artifact to serve"}
    try:
        artifact = session.resolver.resolve(session.models[0], spec)
    except MinervaError as exc:  # ArtifactMissing among them
        return {"skip": str(exc)}
    with LlamaCppServer(artifact.path, n_ctx=2048, threads=common.THREADS) as server:
        endpoint = server.endpoint

        # The server's /extras/tokenize, else llama.cpp on the GGUF: what `minerva serve-bench` uses.
        tokenize, detokenize, _ = served_tokenizers(serving_server)(endpoint, artifact)
        assert tokenize is not None and detokenize is not None  # the artifact is a local GGUF

        needed = sum(max(4, 2 * c) for c in CONCURRENCY) + 2
        prompts = loadgen.rotated_prompts(prompt_text("long.txt"), needed, words=PROMPT_TOKENS * 2)
        prompts = loadgen.fit_prompts(prompts, PROMPT_TOKENS, tokenize, detokenize)
        workload = loadgen.Workload(prompts, MAX_TOKENS)
        sweep = loadgen.concurrency_sweep(endpoint, workload, CONCURRENCY, count=tokenize)
    out: dict[str, Any] = {}
    for level in sweep.levels:
        if level.failed:
            failures = "; ".join(f"{k}: {v}" for k, v in level.failure_examples().items())
            out[str(int(level.level))] = {"error": f"{len(level.failed)} failed request(s): {failures}"}
            continue
        out[str(int(level.level))] = {
            "ttft_ms": [r.ttft_s * 1e3 for r in level.ok if r.ttft_s is not None],
            "tpt_ms": [r.tpt_s * 1e3 for r in level.ok if r.tpt_s is not None],
            "aggregate_tps": level.aggregate_tps,
        }
    return out


class ServingConcurrency:
    """llama_cpp.server on loopback: per-request TTFT/TpT and aggregate tokens/s at each concurrency."""

    params = PARAMS
    param_names = PARAM_NAMES
    timeout = 1800

    def setup_cache(self) -> Measurement:
        if not ENABLED:
            return {}
        return {model: _sweep(model) for model in common.MODELS}

    def setup(self, measurement: Measurement, model: str, concurrency: int) -> None:
        if not ENABLED:
            raise NotImplementedError("MINERVA_ASV_SERVING=0")
        outcome = measurement.get(model, {})
        if "skip" in outcome:
            raise NotImplementedError(outcome["skip"])
        level = outcome.get(str(concurrency))
        if level is None:
            raise RuntimeError(f"{model} at concurrency {concurrency}: not measured")
        if "error" in level:
            raise RuntimeError(level["error"])
        self.level = level

    def track_request_ttft_ms(self, measurement: Measurement, model: str, concurrency: int) -> dict[str, Any]:
        return {"samples": self.level["ttft_ms"], "number": 1}

    track_request_ttft_ms.unit = "ms"
    track_request_ttft_ms.version = "serving-ttft-1: request sent to first content chunk"

    def track_request_tpot_ms(self, measurement: Measurement, model: str, concurrency: int) -> dict[str, Any]:
        return {"samples": self.level["tpt_ms"], "number": 1}

    track_request_tpot_ms.unit = "ms"
    track_request_tpot_ms.version = "serving-tpot-1: (last chunk - first chunk) / (N - 1)"

    def track_aggregate_tps(self, measurement: Measurement, model: str, concurrency: int) -> float:
        return float(self.level["aggregate_tps"])

    track_aggregate_tps.unit = "tokens/s"
    track_aggregate_tps.version = "serving-tps-1: output tokens of all requests / level wall time"


def served_tokenizers(server_module: Any) -> Any:
    """``pytest_minerva.serving.server.served_tokenizers``; a commit from before it (asv measures
    older commits with this suite) had the same function in the serve-bench command module."""
    found = getattr(server_module, "served_tokenizers", None)
    if found is not None:
        return found
    import importlib

    return getattr(importlib.import_module("pytest_minerva.serving.cli"), "_tokenizers")  # noqa: B009
