"""The KV probe: bytes of KV cache per token, measured as engine memory growth during one generation.

The computed figure (from the model's metadata) and the readers of engine memory are in
:mod:`pytest_minerva.timing.memory`; this module runs the untimed generation that fills in
the measured figure.
"""

from __future__ import annotations

import gc

from pytest_minerva.backends.base import Backend, GenerationRequest
from pytest_minerva.timing import memory
from pytest_minerva.timing.scenarios import build_prompt, get

KV_PROBE_TOKENS = 256
KV_PROBE_PROMPT = 32


def measure_kv_growth(backend: Backend, kv: memory.KvFigures, n_ctx: int, tokens: int = KV_PROBE_TOKENS) -> None:
    """One untimed generation reading engine memory at the first and last token; fills ``kv``."""
    tokens = min(tokens, n_ctx - KV_PROBE_PROMPT - 1)
    if tokens < 16:
        kv.note = f"context of {n_ctx} leaves too little room to measure KV growth"
        return
    read, method = memory.kv_reader(backend)
    prompt = build_prompt(backend, get(f"sweep-{KV_PROBE_PROMPT}"))
    request = GenerationRequest(prompt.ids, tokens, ignore_eos=True)
    first = last = None
    count = 0
    gc.collect()
    for event in backend.stream(request):
        count += 1
        if event.index == 0:
            first = read()
        elif event.index == tokens - 1:
            last = read()
    if count != tokens or first is None or last is None:
        kv.note = f"KV probe generated {count} of {tokens} tokens"
        return
    kv.measured_bytes_per_token = (last - first) / (tokens - 1)
    kv.measured_method = f"growth of {method} from the first to the last of {tokens} generated tokens"
    kv.measured_tokens = tokens
    computed = kv.computed_bytes_per_token
    if computed and abs(kv.measured_bytes_per_token - computed) > computed / 2:
        kv.note = f"the measured growth is not within 50% of the computed figure ({method} does not resolve it)"


__all__ = ["KV_PROBE_PROMPT", "KV_PROBE_TOKENS", "measure_kv_growth"]
