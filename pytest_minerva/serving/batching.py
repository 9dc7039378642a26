"""Batched in-process generation, and KV-cache memory per sequence computed from the model config.

:func:`batch_sweep` times greedy generation of ``b`` distinct prompts at once on a
backend that batches (transformers' ``timed_generate_batch``) for each batch size.
Per batch size, over ``runs`` timed runs after one warm-up, medians of:

prefill (TTFT)
    from just before the batched prefill to the first token of every row on the host.
decode tokens/s
    ``b x (steps - 1) / (last step - first step)``: all rows' tokens after the first.
TpT
    ``(last step - first step) / (steps - 1)``: one decoding step, which yields a token
    for each of the ``b`` rows.
efficiency
    ``decode tokens/s (b) / (b x decode tokens/s (1))``.

:func:`kv_projection` is the KV cache one sequence needs at each context length,
``2 x layers x kv_heads x head_dim x bytes per element x tokens``
(:func:`pytest_minerva.timing.memory.kv_shape`), and ``b`` times that for a batch.
It is computed, not measured; reports show it beside the measured figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pytest_minerva.backends.base import TimedBatchGenerator
from pytest_minerva.errors import MinervaError
from pytest_minerva.timing import memory

DEFAULT_BATCH_SIZES = (1, 2, 4, 8)
DEFAULT_CONTEXTS = (512, 1024, 2048, 4096)


@dataclass(frozen=True)
class BatchFigures:
    """Medians over the timed runs of one batch size (see the module docstring)."""

    batch_size: int
    runs: int
    prompt_tokens: int
    generated_per_row: int
    prefill_ms: float
    tpt_ms: float
    decode_tps: float
    efficiency: float | None = None
    rows_match_alone: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def batch_sweep(
    backend: Any,
    prompts: Sequence[Sequence[int]],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    max_tokens: int = 32,
    runs: int = 3,
    check_rows: bool = True,
) -> list[BatchFigures]:
    """Time batched greedy generation for each batch size; prompts ``0..b-1`` form batch ``b``.

    With ``check_rows`` the greedy tokens of every row of the largest batch are
    compared with the same prompt generated alone (batch 1), and ``rows_match_alone``
    says whether all agree (padding and batching may round differently).
    """
    if not isinstance(backend, TimedBatchGenerator):
        raise MinervaError(f"backend {getattr(backend, 'name', backend)!r} does not batch (no timed_generate_batch)")
    generate = backend.timed_generate_batch
    if max(batch_sizes) > len(prompts):
        raise MinervaError(f"batch size {max(batch_sizes)} needs {max(batch_sizes)} prompts, got {len(prompts)}")
    if max_tokens < 2 or runs < 1:
        raise MinervaError(f"max_tokens must be at least 2 and runs at least 1, got {max_tokens} and {runs}")
    out: list[BatchFigures] = []
    for b in batch_sizes:
        batch = [list(p) for p in prompts[:b]]
        generate(batch, max_tokens)
        prefill, tpt, tps = [], [], []
        last = None
        for _ in range(runs):
            last = generate(batch, max_tokens)
            steps = last.step_times_s
            prefill.append(last.time_to_first_token_s * 1e3)
            tpt.append((steps[-1] - steps[0]) / (len(steps) - 1) * 1e3)
            tps.append(last.decode_tokens_per_s)
        assert last is not None
        out.append(
            BatchFigures(
                batch_size=b,
                runs=runs,
                prompt_tokens=max(len(p) for p in batch),
                generated_per_row=max_tokens,
                prefill_ms=statistics.median(prefill),
                tpt_ms=statistics.median(tpt),
                decode_tps=statistics.median(tps),
            )
        )
    base = next((f for f in out if f.batch_size == 1), None)
    if base is not None:
        out = [
            BatchFigures(**{**f.as_dict(), "efficiency": f.decode_tps / (f.batch_size * base.decode_tps)}) for f in out
        ]
    if check_rows and out:
        largest = max(batch_sizes)
        batched = generate([list(p) for p in prompts[:largest]], max_tokens).tokens
        agree = all(generate([list(prompts[i])], max_tokens).tokens[0] == batched[i] for i in range(largest))
        out = [
            BatchFigures(**{**f.as_dict(), "rows_match_alone": agree}) if f.batch_size == largest else f for f in out
        ]
    return out


@dataclass(frozen=True)
class KvProjection:
    """Computed KV-cache bytes for one sequence at each context length."""

    bytes_per_token: float
    cache_dtype: str
    formula: str
    per_sequence: dict[int, float]

    def for_batch(self, batch: int) -> dict[int, float]:
        return {ctx: batch * size for ctx, size in self.per_sequence.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes_per_token": self.bytes_per_token,
            "cache_dtype": self.cache_dtype,
            "formula": self.formula,
            "per_sequence_bytes": {str(k): v for k, v in self.per_sequence.items()},
        }


def kv_projection(
    metadata: Mapping[str, Any],
    engine: str,
    info: Mapping[str, Any] | None = None,
    contexts: Sequence[int] = DEFAULT_CONTEXTS,
) -> KvProjection:
    """KV bytes per sequence at each context for ``engine``'s cache dtype, from GGUF metadata or config.json."""
    kv = memory.computed_kv(metadata, engine, info or {})
    if kv.computed_bytes_per_token is None or kv.cache_dtype is None:
        raise MinervaError(f"no KV projection: {kv.note}")
    per_token = kv.computed_bytes_per_token
    return KvProjection(per_token, kv.cache_dtype, kv.computed_formula, {c: per_token * c for c in contexts})
