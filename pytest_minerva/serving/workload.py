"""What each request of a load run asks for: the API, the prompt, ``max_tokens`` and extra JSON fields.

Prompts are distinct (the same text rotated by a different number of words, and with
:func:`fit_prompts` each starting with a different token) so that a server that
reuses a cached prompt prefix cannot skip the prefill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_minerva.errors import MinervaError
from pytest_minerva.serving.client import Timeouts

#: Fields that make temperature 0 plain greedy decoding and keep generating past EOS.
FIXED_LENGTH_FIELDS: dict[str, Any] = {
    "temperature": 0.0,
    "top_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "ignore_eos": True,
}


@dataclass(frozen=True)
class Workload:
    """What each request asks for: ``api``, prompts, ``max_tokens`` and extra JSON fields."""

    prompts: tuple[str, ...]
    max_tokens: int = 32
    api: str = "completions"
    model: str | None = None
    fields: dict[str, Any] = field(default_factory=lambda: dict(FIXED_LENGTH_FIELDS))
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if not self.prompts:
            raise MinervaError("a workload needs at least one prompt")
        if self.max_tokens < 2:
            raise MinervaError(f"max_tokens must be at least 2 (TpT needs two tokens), got {self.max_tokens}")

    def payload(self, index: int) -> dict[str, Any]:
        text = self.prompts[index % len(self.prompts)]
        body: dict[str, Any] = {"max_tokens": self.max_tokens, **self.fields}
        if self.fields.get("ignore_eos"):
            body["min_tokens"] = self.max_tokens
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        if self.model:
            body["model"] = self.model
        body["stream_options"] = {"include_usage": True}
        return body


def rotated_prompts(text: str, count: int, words: int, *, step: int = 7) -> tuple[str, ...]:
    """``count`` distinct prompts of ``words`` words: ``text``'s words, prompt ``i`` starting at word ``i * step``."""
    pool = text.split()
    if not pool:
        raise MinervaError("the prompt text has no words")
    while len(pool) < words + step * count:
        pool = pool + pool
    return tuple(" ".join(pool[i * step : i * step + words]) for i in range(count))


def fit_prompts(
    prompts: Sequence[str],
    tokens: int,
    tokenize: Callable[[str], list[int]],
    detokenize: Callable[[Sequence[int]], str],
    *,
    max_skip: int = 64,
) -> tuple[str, ...]:
    """Each prompt cut to ``tokens`` tokens (as text), all starting with different tokens.

    A prompt whose first token another prompt already starts with drops leading
    tokens (at most ``max_skip``) until it starts with an unused one, so no two
    requests share a cached prefix. Raises if a prompt is too short for that.
    """
    out: list[str] = []
    used: set[int] = set()
    for i, text in enumerate(prompts):
        ids = tokenize(text)
        start = next((j for j in range(min(max_skip, len(ids))) if ids[j] not in used), None)
        if start is None:
            raise MinervaError(f"prompt {i}: none of its first {max_skip} tokens starts a prompt not yet used")
        if len(ids) - start < tokens:
            raise MinervaError(f"prompt {i} has {len(ids) - start} tokens left, fewer than the {tokens} asked for")
        used.add(ids[start])
        out.append(detokenize(ids[start : start + tokens]))
    return tuple(out)
