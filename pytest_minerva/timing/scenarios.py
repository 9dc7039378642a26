"""The benchmark scenarios: fixed prompt lengths, fixed generation lengths.

Each scenario's prompt comes from a text file under ``fixtures/prompts/``, is
tokenized by the backend under test with its own tokenizer, and is cut (or the text
repeated, then cut) to exactly ``prompt_tokens`` ids. No BOS is added, so every
backend that shares a tokenizer gets the same ids. Generation ignores EOS, so each
run produces exactly ``generate_tokens`` tokens.

=========  =============  ================  ===============================
scenario   prompt tokens  generated tokens  prompt text
=========  =============  ================  ===============================
short      20             15                a chat question
medium     100            75                a business report
code       150            112               a Python module to review
long       200            150               an essay to summarise
sweep-N    N = 32..2048   16                the essay, repeated as needed
=========  =============  ================  ===============================
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pytest_minerva.backends.base import Backend
from pytest_minerva.errors import MinervaError

SWEEP_GENERATE_TOKENS = 16
SWEEP_LENGTHS = tuple(32 * 2**i for i in range(7))  # 32, 64, ..., 2048


@dataclass(frozen=True)
class Scenario:
    """A prompt of exactly ``prompt_tokens`` ids followed by ``generate_tokens`` generated ones."""

    name: str
    prompt_tokens: int
    generate_tokens: int
    prompt_file: str
    description: str = ""

    @property
    def context_tokens(self) -> int:
        """Tokens in the KV cache once the last token is generated."""
        return self.prompt_tokens + self.generate_tokens


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("short", 20, 15, "short.txt", "chat question"),
        Scenario("medium", 100, 75, "medium.txt", "document analysis"),
        Scenario("code", 150, 112, "code.txt", "code review"),
        Scenario("long", 200, 150, "long.txt", "long-form summary"),
    )
}


def prompts_dir() -> Path:
    from pytest_minerva.models.catalog import fixtures_dir

    return fixtures_dir() / "prompts"


@cache
def prompt_text(file_name: str) -> str:
    """The text of a prompt file under ``fixtures/prompts/``."""
    path = prompts_dir() / file_name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MinervaError(f"{path}: cannot read prompt file: {exc.strerror or exc}") from None
    if not text.strip():
        raise MinervaError(f"{path}: prompt file is empty")
    return text


def get(name: str) -> Scenario:
    """A scenario by name: one of :data:`SCENARIOS` or ``sweep-N``."""
    if name in SCENARIOS:
        return SCENARIOS[name]
    if name.startswith("sweep-") and name[6:].isdigit() and int(name[6:]) > 0:
        return Scenario(name, int(name[6:]), SWEEP_GENERATE_TOKENS, "long.txt", "context-length sweep")
    raise MinervaError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)} or sweep-N")


def sweep(max_context: int, generate_tokens: int = SWEEP_GENERATE_TOKENS) -> list[Scenario]:
    """Prompt lengths 32, 64, ..., 2048 that leave room for ``generate_tokens`` within ``max_context``."""
    limit = max_context - generate_tokens
    return [
        Scenario(f"sweep-{n}", n, generate_tokens, "long.txt", "context-length sweep")
        for n in SWEEP_LENGTHS
        if n <= limit
    ]


@dataclass(frozen=True)
class Prompt:
    """A scenario's prompt as one backend tokenizes it.

    ``ids`` are the first ``scenario.prompt_tokens`` tokens of the file's text repeated
    ``repeats`` times; ``text`` is those ids detokenized, the prompt as a user would send it.
    """

    scenario: Scenario
    text: str
    ids: tuple[int, ...]
    repeats: int


def build_prompt(backend: Backend, scenario: Scenario) -> Prompt:
    """Tokenize the scenario's text with ``backend`` and cut it to exactly ``scenario.prompt_tokens`` ids.

    A text with too few tokens is repeated, separated by a blank line, and the whole
    repeated text is tokenized again, so the ids are what the tokenizer produces for
    real text rather than a concatenation of separately tokenized pieces.
    """
    base = prompt_text(scenario.prompt_file)
    want = scenario.prompt_tokens
    text = base
    ids = backend.tokenize(text)
    if not ids:
        raise MinervaError(f"{prompts_dir() / scenario.prompt_file}: {backend.name} tokenizes it to no tokens")
    repeats = 1
    per_copy = len(ids)
    while len(ids) < want:
        repeats = max(repeats + 1, -(-want // per_copy))
        text = "\n\n".join([base] * repeats)
        ids = backend.tokenize(text)
    cut = tuple(ids[:want])
    return Prompt(scenario, backend.detokenize(cut), cut, repeats)
