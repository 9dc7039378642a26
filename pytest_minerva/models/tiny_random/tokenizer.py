"""The tokenizer both generated models share: a byte-level BPE trained on ``fixtures/tiny_corpus.txt``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pytest_minerva.errors import MinervaError
from pytest_minerva.models.catalog import fixtures_dir
from pytest_minerva.models.tiny_random.config import (
    BOS_ID,
    BOS_TOKEN,
    CORPUS_FILE,
    EOS_ID,
    EOS_TOKEN,
    TinyLlamaConfig,
    require_package,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def corpus_path() -> Path:
    """The committed plain-text corpus the tokenizer is trained on."""
    return fixtures_dir() / CORPUS_FILE


def train_tokenizer(corpus: Path | None = None, vocab_size: int = TinyLlamaConfig.vocab_size) -> Tokenizer:
    """A byte-level BPE trained on ``corpus``; ids 0 and 1 are BOS and EOS, BOS is prepended.

    Training is deterministic (merges are ranked by count, ties by pair), which the
    tests check across processes.
    """
    require_package("tokenizers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = corpus or corpus_path()
    try:
        text = corpus.read_text(encoding="utf-8")
    except OSError as exc:
        raise MinervaError(f"{corpus}: cannot read the tokenizer corpus: {exc.strerror}") from None
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.splitlines(keepends=True), trainer)
    if (tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)) != (BOS_ID, EOS_ID):
        raise MinervaError(f"{corpus}: the trained tokenizer does not put BOS and EOS at ids 0 and 1")
    if tokenizer.get_vocab_size() != vocab_size:
        raise MinervaError(
            f"{corpus}: too little text to learn {vocab_size} tokens "
            f"(got {tokenizer.get_vocab_size()}); add text or lower the vocabulary size"
        )
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    return tokenizer
