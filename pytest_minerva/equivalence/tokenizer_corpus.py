"""The committed corpus of hard tokenization cases, and comparing two tokenizers on it.

``fixtures/tokenizer_corpus.json`` holds texts that tokenizers get wrong in practice:
whitespace runs before digits, letters and punctuation, numbers of 1 to 12 digits, code
indentation, CRLF, CJK, Arabic, Devanagari, emoji sequences, combining marks,
special-token syntax written as plain text, very long words and the empty string. Every
case runs on every tokenizer of every model, every time: unlike generated text, it cannot
miss a known case by luck.

:func:`compare_on_corpus` tokenizes each text with a reference (llama.cpp on the GGUF) and
a candidate and returns one :class:`TokenizerMismatch` per text whose ids differ; its
:meth:`~TokenizerMismatch.describe` names the text, both id lists and both decoded pieces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pytest_minerva.errors import MinervaError
from pytest_minerva.models.catalog import fixtures_dir

CORPUS_FILE = "tokenizer_corpus.json"
SCHEMA_VERSION = 1
# Long texts are shown by their start and their ids around the first difference.
_SHOW_CHARS = 60
_SHOW_IDS = 16


class Tokenizes(Protocol):
    """What the comparison needs of a tokenizer: the backend protocol's two text methods."""

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class CorpusCase:
    text: str
    why: str


def corpus_path() -> Path:
    return fixtures_dir() / CORPUS_FILE


def load_corpus(path: str | Path | None = None) -> list[CorpusCase]:
    """Every case of the corpus, in file order; :class:`MinervaError` naming the file if it is malformed."""
    where = Path(path) if path is not None else corpus_path()
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MinervaError(f"{where}: cannot read the tokenizer corpus: {exc.strerror}") from None
    except ValueError as exc:
        raise MinervaError(f"{where}: the tokenizer corpus is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        raise MinervaError(f"{where}: expected a JSON object with schema_version {SCHEMA_VERSION}")
    cases: list[CorpusCase] = []
    for index, group in enumerate(data.get("groups", [])):
        why, texts = group.get("why"), group.get("texts")
        if not isinstance(why, str) or not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise MinervaError(f"{where}: groups[{index}] needs a 'why' string and a 'texts' list of strings")
        cases.extend(CorpusCase(text, why) for text in texts)
    seen: set[str] = set()
    for case in cases:
        if case.text in seen:
            raise MinervaError(f"{where}: the text {case.text!r} is listed twice")
        seen.add(case.text)
    if not cases:
        raise MinervaError(f"{where}: the tokenizer corpus has no cases")
    return cases


def corpus_sha256(path: str | Path | None = None) -> str:
    """sha256 of the corpus file, recorded with every check made on it."""
    where = Path(path) if path is not None else corpus_path()
    return hashlib.sha256(where.read_bytes()).hexdigest()


def _show_text(text: str) -> str:
    if len(text) <= _SHOW_CHARS:
        return repr(text)
    return f"{text[:_SHOW_CHARS]!r}… ({len(text)} characters)"


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Index of the first position where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@dataclass(frozen=True)
class TokenizerMismatch:
    """One text two tokenizers split differently."""

    case: CorpusCase
    reference_ids: list[int]
    candidate_ids: list[int]
    reference_pieces: list[str]
    candidate_pieces: list[str]

    def describe(self, reference: str = "reference", candidate: str = "candidate") -> str:
        """The text, why it is in the corpus, and each side's ids and decoded pieces."""
        start = max(0, first_difference(self.reference_ids, self.candidate_ids) - 4)
        width = max(len(reference), len(candidate))
        lines = [f"{_show_text(self.case.text)} ({self.case.why}):"]
        for name, ids, pieces in (
            (reference, self.reference_ids, self.reference_pieces),
            (candidate, self.candidate_ids, self.candidate_pieces),
        ):
            shown_ids, shown_pieces = ids, pieces
            where = ""
            if len(ids) > _SHOW_IDS:
                shown_ids, shown_pieces = ids[start : start + _SHOW_IDS], pieces[start : start + _SHOW_IDS]
                where = f" (tokens {start}-{start + len(shown_ids) - 1} of {len(ids)})"
            lines.append(f"  {name:<{width}}  ids {shown_ids}  pieces {shown_pieces}{where}")
        return "\n".join(lines)


def _pieces(tokenizer: Tokenizes, ids: Sequence[int]) -> list[str]:
    return [tokenizer.detokenize([token]) for token in ids]


def compare_on_corpus(
    reference: Tokenizes, candidate: Tokenizes, cases: Iterable[CorpusCase] | None = None
) -> list[TokenizerMismatch]:
    """The cases (default: the whole corpus) whose ids differ between ``reference`` and ``candidate``."""
    mismatches = []
    for case in load_corpus() if cases is None else cases:
        want, have = reference.tokenize(case.text), candidate.tokenize(case.text)
        if want != have:
            mismatches.append(TokenizerMismatch(case, want, have, _pieces(reference, want), _pieces(candidate, have)))
    return mismatches


def describe_mismatches(
    mismatches: Sequence[TokenizerMismatch], total: int, reference: str, candidate: str, limit: int = 12
) -> str:
    """A report of ``mismatches`` out of ``total`` corpus texts, the first ``limit`` in full."""
    head = f"{candidate} splits {len(mismatches)} of {total} corpus texts differently from {reference}"
    body = [m.describe(reference, candidate) for m in mismatches[:limit]]
    if len(mismatches) > limit:
        rest = ", ".join(_show_text(m.case.text) for m in mismatches[limit:])
        body.append(f"... and {len(mismatches) - limit} more: {rest}")
    return "\n".join([head + ":", *body])


DIVERGENCES_FILE = "tokenizer_divergences.toml"
_DIVERGENCE_KEYS = {"model", "format", "backend", "engine", "cause", "texts_differing", "corpus_texts", "first"}


@dataclass(frozen=True)
class TokenizerDivergence:
    """A tokenizer that splits some corpus texts differently from llama.cpp because of its engine.

    The tokenizer tests mark the matching pair ``xfail(strict=True)``, so the run fails once the
    engine is fixed: the signal to delete the entry from ``fixtures/tokenizer_divergences.toml``.
    """

    name: str
    model: str
    format: str
    backend: str
    engine: str
    cause: str
    texts_differing: int
    corpus_texts: int
    first: str

    def matches(self, model: str, fmt: str, backend: str) -> bool:
        return (self.model, self.format, self.backend) == (model, fmt, backend)

    def reason(self) -> str:
        return (
            f"known tokenizer divergence {self.name} ({self.engine}): {self.cause} "
            f"[measured: {self.texts_differing} of {self.corpus_texts} corpus texts differ; first {self.first}]"
        )


def load_tokenizer_divergences(path: str | Path | None = None) -> list[TokenizerDivergence]:
    """The entries of ``fixtures/tokenizer_divergences.toml``; :class:`MinervaError` naming the file if malformed."""
    import tomllib

    where = Path(path) if path is not None else fixtures_dir() / DIVERGENCES_FILE
    try:
        data = tomllib.loads(where.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MinervaError(f"{where}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise MinervaError(f"{where}: not valid TOML: {exc}") from None
    if data.get("schema_version") != SCHEMA_VERSION:
        raise MinervaError(f"{where}: schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    found = []
    for name, table in data.get("divergences", {}).items():
        if not isinstance(table, dict) or set(table) != _DIVERGENCE_KEYS:
            keys = sorted(table) if isinstance(table, dict) else type(table).__name__
            raise MinervaError(f"{where}: divergences.{name} must have exactly {sorted(_DIVERGENCE_KEYS)}, got {keys}")
        counts = (table["texts_differing"], table["corpus_texts"])
        if not all(isinstance(n, int) and n > 0 for n in counts) or counts[0] > counts[1]:
            raise MinervaError(
                f"{where}: divergences.{name}: texts_differing and corpus_texts must be counts, the first "
                f"no larger than the second (got {counts[0]!r} of {counts[1]!r})"
            )
        found.append(TokenizerDivergence(name=name, **{k: table[k] for k in _DIVERGENCE_KEYS}))
    return found
