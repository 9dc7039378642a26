"""The Hugging Face tokenizer that splits text exactly as llama.cpp does with a GGUF's tokenizer.

A GGUF stores a vocabulary and merges, and names how text is split before them:
``tokenizer.ggml.model`` (``gpt2``: byte-level BPE; ``llama``: SentencePiece) and, for BPE,
``tokenizer.ggml.pre``, which selects one of llama.cpp's pre-tokenizer rules
(``src/llama-vocab.cpp``). transformers' GGUF loader rebuilds a tokenizer from the vocabulary
but does not know every rule: it has no ``smollm`` (digits split one by one before the
byte-level BPE), so ``'  0'`` became ``[' ', ' ', '0']`` where llama.cpp gives ``['  ', '0']``.

:func:`tokenizer_rule` returns, for each type the catalog's models use, the equivalent
normalizer and pre-tokenizer; :func:`apply_rule` writes them into transformers' tokenizer. A
type not listed here raises :class:`~pytest_minerva.errors.FormatError` naming the type and
the file: the converter never writes a tokenizer it cannot vouch for. Each rule was checked
against llama.cpp on ``fixtures/tokenizer_corpus.json`` and, where llama.cpp ships a vocabulary
with the ids Hugging Face's own tokenizer gives (``models/ggml-vocab-*.gguf.out``), against those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_minerva.errors import FormatError

if TYPE_CHECKING:
    from pytest_minerva.derive.gguf_header import GGUFHeader

SPM_SPACE = "\u2581"

# The splits of Hugging Face's own tokenizer.json files; llama.cpp's llama-vocab.cpp quotes them
# ("original regex from tokenizer.json") above its adapted copies.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

#: Texts llama.cpp always treats as control tokens, whatever type the GGUF gives them
#: (llama-vocab.cpp, the end-of-generation list: "its type will be overridden"). With
#: special-token parsing off, llama.cpp then splits such a text as plain text.
LLAMA_CPP_CONTROL_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "</s>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    }
)
_TOKEN_TYPE_USER_DEFINED = 4


def _byte_level(use_regex: bool = True) -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=use_regex)


def _gpt2() -> Any:
    return _byte_level()


def _digits_then_gpt2() -> Any:
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _byte_level()])


def _split_then_bytes(pattern: str) -> Callable[[], Any]:
    def build() -> Any:
        from tokenizers import Regex, pre_tokenizers

        return pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), _byte_level(use_regex=False)]
        )

    return build


def _spm_spaces(prefix: bool) -> Callable[[], Any]:
    def build() -> Any:
        from tokenizers import normalizers

        replace = normalizers.Replace(" ", SPM_SPACE)
        return normalizers.Sequence([normalizers.Prepend(SPM_SPACE), replace]) if prefix else replace

    return build


@dataclass(frozen=True)
class TokenizerRule:
    """How llama.cpp splits text for one GGUF tokenizer type, as Hugging Face tokenizer parts."""

    name: str
    description: str
    pre_tokenizer: Callable[[], Any] | None = None
    normalizer: Callable[[], Any] | None = None
    ignore_merges: bool = False
    #: SentencePiece without a prefix space: user-defined tokens of spaces stay raw spaces (see below).
    raw_space_tokens: bool = False
    #: Byte-level BPE: bytes missing from the vocabulary are isolated (see :func:`_isolating_missing_bytes`).
    byte_level: bool = True


_GPT2 = TokenizerRule("gpt-2", "byte-level BPE with GPT-2's split", _gpt2)
_SMOLLM = TokenizerRule(
    "smollm", "each digit on its own (Digits, individual), then byte-level BPE with GPT-2's split", _digits_then_gpt2
)
_LLAMA3 = TokenizerRule(
    "llama3",
    "Llama 3's split (numbers in groups of up to 3), byte-level BPE, whole words first (ignore_merges)",
    _split_then_bytes(_LLAMA3_SPLIT),
    ignore_merges=True,
)
_QWEN2 = TokenizerRule(
    "qwen2", "Qwen2's split (each digit on its own), byte-level BPE", _split_then_bytes(_QWEN2_SPLIT)
)

#: ``tokenizer.ggml.pre`` values of byte-level BPE GGUFs, grouped as llama.cpp groups them.
BPE_RULES: dict[str, TokenizerRule] = {
    "gpt-2": _GPT2,
    "smollm": _SMOLLM,
    "starcoder": _SMOLLM,
    "refact": _SMOLLM,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "qwen2": _QWEN2,
}
#: SentencePiece GGUFs (``tokenizer.ggml.model = "llama"``): llama.cpp ignores ``pre`` for them.
SPM_PRE = (None, "default")


def _field(header: GGUFHeader, key: str, default: Any = None) -> Any:
    return header.fields.get(key, default)


def tokenizer_rule(header: GGUFHeader) -> TokenizerRule:
    """The rule for ``header``'s tokenizer; :class:`FormatError` naming the type and the file if unknown."""
    model = _field(header, "tokenizer.ggml.model")
    pre = _field(header, "tokenizer.ggml.pre")
    if model == "gpt2":
        if pre in BPE_RULES:
            return BPE_RULES[pre]
        raise FormatError(
            header.path,
            f"tokenizer.ggml.pre = {pre!r} is a pre-tokenizer type pytest-minerva cannot write as a Hugging Face "
            f"tokenizer (known for tokenizer.ggml.model = 'gpt2': {', '.join(sorted(BPE_RULES))})",
        )
    if model == "llama":
        unsupported = [
            key
            for key in ("tokenizer.ggml.remove_extra_whitespaces", "tokenizer.ggml.precompiled_charsmap")
            if key in header.fields or key in header.array_lengths
        ]
        if pre not in SPM_PRE or (unsupported and _field(header, unsupported[0], True)):
            what = f"tokenizer.ggml.pre = {pre!r}" if pre not in SPM_PRE else unsupported[0]
            raise FormatError(
                header.path,
                f"{what} is a SentencePiece variant pytest-minerva cannot write as a Hugging Face tokenizer",
            )
        prefix = bool(_field(header, "tokenizer.ggml.add_space_prefix", True))
        return TokenizerRule(
            "spm" if prefix else "spm-no-prefix",
            "SentencePiece: spaces written as U+2581"
            + (
                ", one prepended to the text"
                if prefix
                else ", nothing prepended; runs of spaces the file lists as tokens matched whole before the merges"
            ),
            normalizer=_spm_spaces(prefix),
            raw_space_tokens=not prefix,
            byte_level=False,
        )
    raise FormatError(
        header.path,
        f"tokenizer.ggml.model = {model!r} is a tokenizer type pytest-minerva cannot write as a Hugging Face "
        "tokenizer (known: 'gpt2', 'llama')",
    )


def apply_rule(tokenizer: Any, rule: TokenizerRule, header: GGUFHeader) -> None:
    """Make transformers' GGUF tokenizer (a fast tokenizer) split text as llama.cpp does."""
    from tokenizers import AddedToken

    backend = tokenizer.backend_tokenizer
    backend.normalizer = rule.normalizer() if rule.normalizer is not None else None
    backend.pre_tokenizer = rule.pre_tokenizer() if rule.pre_tokenizer is not None else None
    if rule.byte_level:
        backend.pre_tokenizer = _isolating_missing_bytes(backend.pre_tokenizer, set(tokenizer.get_vocab()))
    space_runs = _space_token_lengths(header) if rule.raw_space_tokens else []
    if rule.ignore_merges or space_runs:
        backend.model = _rebuilt_model(backend, rule, header, space_runs)
    if space_runs:
        # llama.cpp matches the file's user-defined tokens in the raw text before anything else;
        # transformers respells runs of spaces as U+2581, which then also matches a literal "▁▁".
        tokenizer.add_tokens([AddedToken(" " * n, normalized=False, special=False) for n in space_runs])
    vocab = tokenizer.get_vocab()
    control = [
        AddedToken(text, normalized=False, special=True) for text in sorted(LLAMA_CPP_CONTROL_TEXTS) if text in vocab
    ]
    if control:
        tokenizer.add_special_tokens({"additional_special_tokens": control}, replace_extra_special_tokens=False)


def _isolating_missing_bytes(pre_tokenizer: Any, vocab: set[str]) -> Any:
    """``pre_tokenizer`` followed by a split that isolates each byte the vocabulary lacks.

    llama.cpp keeps such a byte as a symbol that merges with nothing and is dropped at the end;
    a Hugging Face BPE drops it first, so its neighbours merge (SmolLM2 has no token for byte
    0x1d: llama.cpp splits '>\x1d)' into '>' and ')', Hugging Face gives '>)').
    """
    from tokenizers import Regex, pre_tokenizers

    missing = sorted(c for c in pre_tokenizers.ByteLevel.alphabet() if c not in vocab)
    if not missing:
        return pre_tokenizer
    members = "".join("\\" + c if c in "\\]^-[" else c for c in missing)
    isolate = pre_tokenizers.Split(Regex(f"[{members}]"), behavior="isolated")
    return pre_tokenizers.Sequence([pre_tokenizer, isolate])


def _space_token_lengths(header: GGUFHeader) -> list[int]:
    """Lengths of the user-defined tokens made only of spaces (Gemma lists runs of 2 to 31)."""
    import gguf

    reader = gguf.GGUFReader(str(header.path))
    tokens, types = reader.fields["tokenizer.ggml.tokens"], reader.fields["tokenizer.ggml.token_type"]
    lengths = []
    for token_at, type_at in zip(tokens.data, types.data, strict=True):
        token = bytes(tokens.parts[token_at])
        if int(types.parts[type_at][0]) == _TOKEN_TYPE_USER_DEFINED and token and set(token) == {0x20}:
            lengths.append(len(token))
    return sorted(lengths)


def _rebuilt_model(backend: Any, rule: TokenizerRule, header: GGUFHeader, space_runs: list[int]) -> Any:
    from tokenizers import models

    state = json.loads(backend.to_str())["model"]
    if state.get("type") != "BPE":
        raise FormatError(header.path, f"expected transformers to build a BPE model, got {state.get('type')!r}")
    vocab: dict[str, int] = dict(state["vocab"])
    merges: list[tuple[str, str]] = []
    for merge in state["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        merges.append((left, right))
    if space_runs:
        runs = {SPM_SPACE * n for n in space_runs}
        vocab = {(" " * len(token) if token in runs else token): index for token, index in vocab.items()}
        merges = [m for m in merges if m[0] + m[1] not in runs]
    options = {
        key: state[key]
        for key in ("unk_token", "continuing_subword_prefix", "end_of_word_suffix")
        if state.get(key) is not None
    }
    return models.BPE(
        vocab=vocab,
        merges=merges,
        fuse_unk=bool(state.get("fuse_unk")),
        byte_fallback=bool(state.get("byte_fallback")),
        ignore_merges=rule.ignore_merges or bool(state.get("ignore_merges")),
        **options,
    )
