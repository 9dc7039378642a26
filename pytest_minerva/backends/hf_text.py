"""Text handling shared by the adapters that tokenize with a Hugging Face tokenizer (transformers, mlx_lm).

Imports nothing heavy: a third-party adapter whose engine ships a Hugging Face
tokenizer can reuse :class:`HfTokenizerMixin` and :class:`TextDeltas` as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError


class TextDeltas:
    """Turns a growing id list into text pieces, holding back incomplete UTF-8 sequences.

    Decoding the whole tail each time keeps a leading space and multi-token characters
    right (mlx-lm's own streaming detokenizers drop the leading space of the first
    token, which is wrong for text that continues a prompt).
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def add(self, token: int, final: bool) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""


class HfTokenizerMixin:
    """Tokenize, detokenize, BOS/EOS and length checks over a Hugging Face tokenizer.

    The adapter sets ``name``, ``artifact_path``, ``n_ctx``, ``_closed`` and
    ``_text_tokenizer`` (the ``transformers`` tokenizer object) when it loads.
    """

    name: str
    artifact_path: Path
    n_ctx: int
    _closed: bool
    _text_tokenizer: Any

    @property
    def bos_id(self) -> int | None:
        token = self._text_tokenizer.bos_token_id
        return None if token is None else int(token)

    @property
    def eos_id(self) -> int | None:
        token = self._text_tokenizer.eos_token_id
        return None if token is None else int(token)

    def _check_open(self) -> None:
        if self._closed:
            raise MinervaError(f"{self.name} backend for {self.artifact_path} is closed")

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """The tokenizer without special tokens added or parsed; ``add_bos`` prepends :attr:`bos_id`."""
        self._check_open()
        encoded = self._text_tokenizer(text, add_special_tokens=False, split_special_tokens=True)
        ids = [int(t) for t in encoded["input_ids"]]
        if add_bos:
            if self.bos_id is None:
                raise MinervaError(f"{self.artifact_path}: the model has no BOS token to add")
            ids.insert(0, self.bos_id)
        return ids

    def _decode(self, ids: list[int]) -> str:
        return str(self._text_tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens rendered and no space clean-up."""
        self._check_open()
        return self._decode([int(t) for t in ids])

    def _check_length(self, n: int) -> None:
        if n < 1:
            raise MinervaError(f"{self.name}: need at least one token")
        if n > self.n_ctx:
            raise MinervaError(f"{self.name}: {n} tokens exceed the context of {self.n_ctx} (LoadOptions.n_ctx)")


class HfTokenizerText(HfTokenizerMixin):
    """The text methods of :class:`HfTokenizerMixin` over a tokenizer alone, with no model loaded.

    Converters use it to check a tokenizer they write exactly as the backends will use it.
    """

    def __init__(self, tokenizer: Any, name: str, path: str | Path) -> None:
        self.name = name
        self.artifact_path = Path(path)
        self.n_ctx = 0
        self._closed = False
        self._text_tokenizer = tokenizer
