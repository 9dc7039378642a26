"""Names, cache-key versions, special tokens, quantization lists and shapes of the generated models.

Everything else in :mod:`pytest_minerva.models.tiny_random` reads these; nothing here writes a file.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from pytest_minerva.errors import ArtifactMissing

#: Part of ``tiny-random-llama``'s cache key: bump whenever any byte it writes can change (code or corpus).
VERSION = "1"
#: Part of ``tiny-random-gemma3``'s cache key, as :data:`VERSION` is for the llama.
GEMMA3_VERSION = "1"

NAME = "tiny-random-llama"
GEMMA3_NAME = "tiny-random-gemma3"
DEFAULT_SEED = 20260101
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
BOS_ID, EOS_ID = 0, 1
CORPUS_FILE = "tiny_corpus.txt"

#: GGUF quantizations ``tiny-random-llama`` writes, in decreasing precision.
GGUF_QUANTS = ("F32", "F16", "Q8_0", "Q4_1", "Q4_0")
#: GGUF quantizations ``tiny-random-gemma3`` writes, in decreasing precision.
GEMMA3_GGUF_QUANTS = ("F32", "F16", "Q8_0", "Q5_0", "Q4_K_M")
#: Quantizations made by llama.cpp's quantizer from the F32 file: name -> ``llama_cpp`` ftype constant.
LLAMA_CPP_QUANTS = {"Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Shape of the generated model; every matrix row is a multiple of 32 (the Q4/Q8 block size)."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class TinyGemma3Config:
    """Shape of ``tiny-random-gemma3``: every matrix row is a multiple of 256, the K-quant block size.

    ``head_dim`` is 256 with 4 query heads on a hidden size of 256, as in Gemma 3 270M
    (heads wider than ``hidden_size / heads``). The attention scale is
    ``query_pre_attn_scalar ** -0.5`` in transformers and mlx-lm, ``head_dim ** -0.5`` in
    llama.cpp, and transformers' GGUF loader leaves ``query_pre_attn_scalar`` at its
    default of 256, so only ``head_dim = 256`` computes the same attention everywhere.
    Six layers with the 6th global, because that is the pattern transformers' GGUF
    loader always assumes (it ignores ``gemma3.attention.sliding_window_pattern``); a
    2-layer model with a global layer computes differently there.
    """

    vocab_size: int = 512
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 1
    head_dim: int = 256
    sliding_window: int = 32
    sliding_window_pattern: int = 6
    max_position_embeddings: int = 512
    rope_theta: float = 1_000_000.0
    rope_local_base_freq: float = 10_000.0
    rms_norm_eps: float = 1e-6

    @property
    def query_pre_attn_scalar(self) -> int:
        return self.head_dim

    @property
    def layer_types(self) -> list[str]:
        """Per layer ``sliding_attention`` or ``full_attention``: every ``sliding_window_pattern``-th is global."""
        period = self.sliding_window_pattern
        return [
            "full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(self.num_hidden_layers)
        ]


def require_package(module: str, name: str = NAME) -> None:
    """Raise :class:`ArtifactMissing` (the model cannot be had here) when a build dependency is absent."""
    if importlib.util.find_spec(module) is None:
        raise ArtifactMissing(
            f"{name} needs the '{module}' package to build: pip install tokenizers safetensors "
            "(both come with pytest-minerva[transformers])"
        )
