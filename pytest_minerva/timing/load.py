"""Loading a backend for the bench: the context it needs, and its construction, timed.

The backend is built outside any session cache, with the peak-RSS counter reset first, so
the load time and the memory read afterwards are this backend's.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_minerva.backends.base import Backend, LoadOptions
from pytest_minerva.timing import memory
from pytest_minerva.timing.kv import KV_PROBE_PROMPT, KV_PROBE_TOKENS
from pytest_minerva.timing.scenarios import Scenario

if TYPE_CHECKING:
    from pytest_minerva.matrix import Case
    from pytest_minerva.models.resolve import ResolvedArtifact
    from pytest_minerva.session import MinervaSession


@dataclass
class LoadedBackend:
    """A backend built by :func:`load_backend` with what its construction cost."""

    backend: Backend
    artifact: ResolvedArtifact
    load_s: float
    rss_before: int
    rss_after: int
    n_ctx: int
    peak_reset: bool


def load_backend(session: MinervaSession, case: Case, n_ctx: int) -> LoadedBackend:
    """Resolve and build ``case``'s backend with ``n_ctx``, timing the construction.

    The peak-RSS counter is reset first, so the peak read later is this backend's.
    The backend is not cached in the session: the caller closes it.
    """
    assert case.backend is not None
    assert case.device is not None
    artifact = session.resolve(case)
    options: LoadOptions = session.load_options(case.device)
    options.n_ctx = n_ctx
    gc.collect()
    peak_reset = memory.reset_peak_rss()
    rss_before = memory.current_rss_bytes()
    t0 = time.perf_counter()
    built = None
    if session.hook is not None:
        built = session.hook.pytest_minerva_make_backend(spec=case.backend, artifact=artifact, options=options)
    if built is None:
        built = case.backend.build(artifact, options)
    load_s = time.perf_counter() - t0
    return LoadedBackend(built, artifact, load_s, rss_before, memory.current_rss_bytes(), n_ctx, peak_reset)


def needed_context(scenarios: Iterable[Scenario], model_context: int | None) -> int:
    """The context to load a backend with: room for every scenario and the KV probe, within the model's."""
    need = max([s.context_tokens for s in scenarios] + [KV_PROBE_PROMPT + KV_PROBE_TOKENS + 1])
    ctx = max(need, 2048)
    return min(ctx, model_context) if model_context else ctx


__all__ = ["LoadedBackend", "load_backend", "needed_context"]
