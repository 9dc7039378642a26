"""The small protocol every inference backend implements.

A backend loads one artifact on one device and can then tokenize, return full
logits for a token sequence, and stream a generation with a timestamp per token.
Adapters live beside this module; third parties register more through the
``pytest_minerva_register_backends`` hook (see :mod:`pytest_minerva.hookspecs`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from pytest_minerva.resolve import ResolvedArtifact


@dataclass(frozen=True)
class TokenEvent:
    """One generated token, as the engine produced it.

    ``time_s`` is a ``time.perf_counter()`` reading taken when the token became
    available to the caller; ``index`` counts generated tokens from 0.
    """

    index: int
    token: int
    text: str
    time_s: float
    finish_reason: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate. ``ignore_eos`` keeps generating past EOS so runs have equal length."""

    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = True


@dataclass
class LoadOptions:
    """Knobs shared by all backends; adapters ignore what they cannot honour."""

    device: str = "cpu"
    threads: int | None = None
    n_ctx: int = 2048
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """An engine with one model loaded."""

    name: str
    device: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids for ``text``; special-token syntax in ``text`` is treated as plain text."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str: ...

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Full next-token logits, shape ``(len(ids), vocab_size)``, float32, one forward pass."""
        ...

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Like :meth:`logits`, but computed as a prefill of ``ids[:prefix_len]``
        followed by one decode step per remaining token, reusing the KV cache."""
        ...

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Generate ``request.max_tokens`` tokens (greedy when temperature is 0)."""
        ...

    def info(self) -> dict[str, Any]:
        """Engine name, version, device, threads and anything else that identifies the run."""
        ...

    def close(self) -> None: ...


class BackendFactory(Protocol):
    """What a registry target resolves to: a class or callable building a loaded backend."""

    def __call__(self, artifact: ResolvedArtifact, options: LoadOptions) -> Backend: ...
