"""Generated models with seeded random weights: ``tiny-random-llama`` and ``tiny-random-gemma3``.

Each generator writes the same weights as a Hugging Face SafeTensors directory and as
GGUF files in several precisions, within seconds and byte-identically for a given
seed, so a suite can test every format x quantization pair without downloading
anything. The models are small but not degenerate: weight scales are chosen so that
next-token distributions are peaked and attention depends on position, which makes
a wrong conversion or a lossy quantization show up in the logits.

``tiny-random-llama`` (:func:`build`, :func:`artifact_path`): 2 layers, grouped-query
attention (4 query heads share 2 KV heads), an untied ``lm_head``, GGUF F32, F16, Q8_0,
Q4_1 and Q4_0.

``tiny-random-gemma3`` (:data:`GEMMA3`): a Gemma 3 text model with what sets that
architecture apart: 6 layers with 5 sliding-window layers then a global one (the
Gemma 3 pattern, which llama.cpp hard-codes when a GGUF does not state it), a
separate RoPE base for each kind, q/k norms, pre- and post-norms around attention and
the feed-forward, GeGLU (``gelu_pytorch_tanh``), embeddings scaled by
``sqrt(hidden_size)`` and tied to the output. Norm weights follow transformers'
``(1 + w)`` convention in SafeTensors and are stored as ``1 + w`` in GGUF, exactly as
llama.cpp's ``convert_hf_to_gguf.py`` writes them. GGUF F32, F16, Q8_0 and Q5_0 come
from gguf-py; Q4_K_M comes from llama.cpp's own quantizer (gguf-py cannot write
K-quants), so it is built only where llama-cpp-python is installed, and its bytes
depend on the llama.cpp version.

Both share one tokenizer: a byte-level BPE (GPT-2 style) trained deterministically on
``fixtures/tiny_corpus.txt``; llama.cpp reads it as ``tokenizer.ggml.model = gpt2``
with the ``gpt-2`` pre-tokenizer, transformers reads ``tokenizer.json``.

The resolver calls a generator through its registry
(``pytest_minerva.resolve.GENERATORS``): ``"pytest_minerva.tiny_random"`` (the module
functions, which build ``tiny-random-llama``) or ``"pytest_minerva.tiny_random:GEMMA3"``.
Each exposes ``VERSION``, ``build(model, dest)`` and ``artifact_path(root, spec)``, and
the resolver caches a build under a key made of the model name, the seed and ``VERSION``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_minerva.catalog import ArtifactSpec, ModelSpec, fixtures_dir
from pytest_minerva.errors import ArtifactMissing, MinervaError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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


# Standard deviations of the random weights, per role. Projections use 1/sqrt(fan_in)
# so activations stay O(1); q and k are larger so attention scores have a spread of a
# few units (attention is not uniform, so RoPE and the q/k layout matter); lm_head is
# larger so next-token distributions are peaked. Norm weights vary around 1 so a
# mixed-up norm is visible.
_INIT_STD: dict[str, float] = {
    "embed_tokens": 1.0,
    "q_proj": 0.1,
    "k_proj": 0.1,
    "v_proj": 1.0 / np.sqrt(128),
    "o_proj": 1.0 / np.sqrt(128),
    "gate_proj": 1.0 / np.sqrt(128),
    "up_proj": 1.0 / np.sqrt(128),
    "down_proj": 1.0 / np.sqrt(256),
    "norm": 0.1,
    "lm_head": 0.3,
}

# Gemma 3 normalizes q and k per head, so their projections' scale cancels and unit q/k norm
# gains give attention scores a spread of about 1 (larger gains made the logits chaotic: 1%
# weight noise moved them as much as 4-bit quantization). The tied embedding is also the
# output matrix: its scale sets how peaked next-token distributions are.
_GEMMA3_INIT_STD: dict[str, float] = {
    "embed_tokens": 0.2,
    "q_proj": 1.0 / np.sqrt(256),
    "k_proj": 1.0 / np.sqrt(256),
    "v_proj": 1.0 / np.sqrt(256),
    "o_proj": 1.0 / np.sqrt(1024),
    "gate_proj": 1.0 / np.sqrt(256),
    "up_proj": 1.0 / np.sqrt(256),
    "down_proj": 1.0 / np.sqrt(512),
    "norm": 0.1,
    "post_norm": 1.0,
}
# Mean of the post-attention and post-feedforward norm weights: with unit gains the scaled
# input embedding dominates the residual stream, and a tied output then predicts the input token.
_GEMMA3_POST_NORM_MEAN = 7.0

# (GGML tensor type of the 2-D weights, general.file_type) for each quantization gguf-py writes.
_GGUF_TYPES: dict[str, tuple[str, str]] = {
    "F32": ("F32", "ALL_F32"),
    "F16": ("F16", "MOSTLY_F16"),
    "Q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "Q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "Q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "Q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}

_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}

# llama.cpp makes every 6th gemma3 layer global when a GGUF states no per-layer pattern.
_LLAMA_CPP_GEMMA3_PATTERN = 6

# Gemma 3's extra norms have their own GGUF names; note pre_feedforward_layernorm is ffn_norm.
_GEMMA3_GGUF_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "post_attention_norm",
    "pre_feedforward_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "post_feedforward_layernorm": "post_ffw_norm",
}


def _require(module: str, name: str = NAME) -> None:
    """Raise :class:`ArtifactMissing` (the model cannot be had here) when a build dependency is absent."""
    if importlib.util.find_spec(module) is None:
        raise ArtifactMissing(
            f"{name} needs the '{module}' package to build: pip install tokenizers safetensors "
            "(both come with pytest-minerva[transformers])"
        )


def corpus_path() -> Path:
    """The committed plain-text corpus the tokenizer is trained on."""
    return fixtures_dir() / CORPUS_FILE


def train_tokenizer(corpus: Path | None = None, vocab_size: int = TinyLlamaConfig.vocab_size) -> Tokenizer:
    """A byte-level BPE trained on ``corpus``; ids 0 and 1 are BOS and EOS, BOS is prepended.

    Training is deterministic (merges are ranked by count, ties by pair), which the
    tests check across processes.
    """
    _require("tokenizers")
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


def random_weights(config: TinyLlamaConfig, seed: int) -> dict[str, np.ndarray]:
    """float32 weights under Hugging Face ``LlamaForCausalLM`` names, drawn in a fixed order."""
    rng = np.random.default_rng(seed)
    hidden, ffn = config.hidden_size, config.intermediate_size
    kv_dim = config.num_key_value_heads * config.head_dim

    def normal(shape: tuple[int, ...], role: str) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(_INIT_STD[role])

    def norm_weight() -> np.ndarray:
        return np.float32(1.0) + normal((hidden,), "norm")

    weights = {"model.embed_tokens.weight": normal((config.vocab_size, hidden), "embed_tokens")}
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        weights[prefix + "input_layernorm.weight"] = norm_weight()
        weights[prefix + "self_attn.q_proj.weight"] = normal((hidden, hidden), "q_proj")
        weights[prefix + "self_attn.k_proj.weight"] = normal((kv_dim, hidden), "k_proj")
        weights[prefix + "self_attn.v_proj.weight"] = normal((kv_dim, hidden), "v_proj")
        weights[prefix + "self_attn.o_proj.weight"] = normal((hidden, hidden), "o_proj")
        weights[prefix + "post_attention_layernorm.weight"] = norm_weight()
        weights[prefix + "mlp.gate_proj.weight"] = normal((ffn, hidden), "gate_proj")
        weights[prefix + "mlp.up_proj.weight"] = normal((ffn, hidden), "up_proj")
        weights[prefix + "mlp.down_proj.weight"] = normal((hidden, ffn), "down_proj")
    weights["model.norm.weight"] = norm_weight()
    weights["lm_head.weight"] = normal((config.vocab_size, hidden), "lm_head")
    return weights


def random_gemma3_weights(config: TinyGemma3Config, seed: int) -> dict[str, np.ndarray]:
    """float32 weights under Hugging Face ``Gemma3ForCausalLM`` names, drawn in a fixed order.

    Norm weights are in transformers' convention: the norm multiplies by ``1 + w``.
    There is no ``lm_head.weight``: the output matrix is the embedding.
    """
    rng = np.random.default_rng(seed)
    hidden, ffn, head_dim = config.hidden_size, config.intermediate_size, config.head_dim
    q_dim, kv_dim = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim

    def normal(shape: tuple[int, ...], role: str) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(_GEMMA3_INIT_STD[role])

    def post_norm() -> np.ndarray:
        return np.float32(_GEMMA3_POST_NORM_MEAN) + normal((hidden,), "post_norm")

    weights = {"model.embed_tokens.weight": normal((config.vocab_size, hidden), "embed_tokens")}
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}."
        weights[prefix + "input_layernorm.weight"] = normal((hidden,), "norm")
        weights[prefix + "self_attn.q_proj.weight"] = normal((q_dim, hidden), "q_proj")
        weights[prefix + "self_attn.k_proj.weight"] = normal((kv_dim, hidden), "k_proj")
        weights[prefix + "self_attn.v_proj.weight"] = normal((kv_dim, hidden), "v_proj")
        weights[prefix + "self_attn.o_proj.weight"] = normal((hidden, q_dim), "o_proj")
        weights[prefix + "self_attn.q_norm.weight"] = normal((head_dim,), "norm")
        weights[prefix + "self_attn.k_norm.weight"] = normal((head_dim,), "norm")
        weights[prefix + "post_attention_layernorm.weight"] = post_norm()
        weights[prefix + "pre_feedforward_layernorm.weight"] = normal((hidden,), "norm")
        weights[prefix + "mlp.gate_proj.weight"] = normal((ffn, hidden), "gate_proj")
        weights[prefix + "mlp.up_proj.weight"] = normal((ffn, hidden), "up_proj")
        weights[prefix + "mlp.down_proj.weight"] = normal((hidden, ffn), "down_proj")
        weights[prefix + "post_feedforward_layernorm.weight"] = post_norm()
    weights["model.norm.weight"] = normal((hidden,), "norm")
    return weights


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's ``convert_hf_to_gguf.py`` ``LlamaModel.permute``, for q (``n_head``) or k (``n_head_kv``).

    Hugging Face applies RoPE to the two halves of each head; llama.cpp's llama
    graph rotates adjacent pairs. Reordering the rows of q and k this way makes
    both compute the same attention. (Gemma 3 needs no permutation: llama.cpp
    rotates it NeoX-style, by halves, as transformers does.)
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_tensor_name(hf_name: str, architecture: str = "llama") -> str:
    """The GGUF tensor name llama.cpp expects for a Hugging Face tensor name of ``architecture``."""
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    layer_names = _GEMMA3_GGUF_LAYER_NAMES if architecture == "gemma3" else _GGUF_LAYER_NAMES
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{layer_names[rest.removesuffix('.weight')]}.weight"


def hf_config(config: TinyLlamaConfig) -> dict[str, Any]:
    """``config.json`` for ``LlamaForCausalLM`` (also carries ``rope_theta`` for mlx-lm)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS_ID,
        "dtype": "float32",
        "eos_token_id": EOS_ID,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": config.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": {"rope_theta": config.rope_theta, "rope_type": "default"},
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": False,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


def gemma3_hf_config(config: TinyGemma3Config) -> dict[str, Any]:
    """``config.json`` for ``Gemma3ForCausalLM`` (``gemma3_text``).

    Besides transformers 5's ``rope_parameters`` and ``layer_types`` it carries the flat
    keys mlx-lm 0.32 reads (``rope_theta``, ``rope_local_base_freq``,
    ``sliding_window_pattern``), with the same values.
    """
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_logit_softcapping": None,
        "bos_token_id": BOS_ID,
        "dtype": "float32",
        "eos_token_id": EOS_ID,
        "final_logit_softcapping": None,
        "head_dim": config.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": config.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": config.intermediate_size,
        "layer_types": config.layer_types,
        "max_position_embeddings": config.max_position_embeddings,
        "model_type": "gemma3_text",
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "num_key_value_heads": config.num_key_value_heads,
        "pad_token_id": None,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_local_base_freq": config.rope_local_base_freq,
        "rope_parameters": {
            "full_attention": {"rope_theta": config.rope_theta, "rope_type": "default"},
            "sliding_attention": {"rope_theta": config.rope_local_base_freq, "rope_type": "default"},
        },
        "rope_theta": config.rope_theta,
        "sliding_window": config.sliding_window,
        "sliding_window_pattern": config.sliding_window_pattern,
        "tie_word_embeddings": True,
        "use_bidirectional_attention": False,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def write_safetensors_dir(
    directory: Path,
    weights: Mapping[str, np.ndarray],
    tokenizer: Tokenizer,
    config: TinyLlamaConfig | TinyGemma3Config,
) -> None:
    """A Hugging Face model directory that ``AutoModelForCausalLM``/``AutoTokenizer`` load."""
    _require("safetensors")
    from safetensors.numpy import save_file

    directory.mkdir(parents=True)
    save_file(dict(weights), str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save(str(directory / "tokenizer.json"), pretty=True)
    config_json = gemma3_hf_config(config) if isinstance(config, TinyGemma3Config) else hf_config(config)
    _write_json(directory / "config.json", config_json)
    _write_json(
        directory / "generation_config.json",
        {"bos_token_id": BOS_ID, "do_sample": False, "eos_token_id": EOS_ID},
    )
    _write_json(directory / "special_tokens_map.json", {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN})
    _write_json(
        directory / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": BOS_TOKEN,
            "clean_up_tokenization_spaces": False,
            "eos_token": EOS_TOKEN,
            "model_max_length": config.max_position_embeddings,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )


def _gguf_vocab(tokenizer: Tokenizer) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF token types, and the merges as ``"left right"`` strings."""
    import gguf

    model = json.loads(tokenizer.to_str())
    by_id = {token_id: token for token, token_id in model["model"]["vocab"].items()}
    special = {added["id"] for added in model["added_tokens"] if added["special"]}
    tokens = [by_id[i] for i in range(len(by_id))]
    types = [int(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL) for i in range(len(tokens))]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["model"]["merges"]]
    return tokens, types, merges


def _add_tokenizer(writer: Any, tokenizer: Tokenizer) -> None:
    tokens, token_types, merges = _gguf_vocab(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _add_weight(writer: Any, name: str, data: np.ndarray, tensor_type: Any) -> None:
    """One tensor: 1-D (norms) always F32, 2-D in ``tensor_type`` (via ``gguf.quants.quantize``)."""
    import gguf

    if data.ndim == 1 or tensor_type == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    elif tensor_type == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), tensor_type), raw_dtype=tensor_type)


def _finish(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(
    path: Path,
    weights: Mapping[str, np.ndarray],
    tokenizer: Tokenizer,
    config: TinyLlamaConfig,
    quant: str,
    *,
    permute: bool = True,
) -> None:
    """One llama GGUF file: 2-D weights in ``quant`` (via ``gguf.quants.quantize``), norms in F32.

    ``permute=False`` skips the q/k row permutation and so writes a model that
    computes a different function from the SafeTensors one; tests use it to prove
    the logits comparison catches a broken conversion.
    """
    import gguf

    tensor_type_name, file_type_name = _GGUF_TYPES[quant]
    tensor_type = gguf.GGMLQuantizationType[tensor_type_name]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(NAME)
    writer.add_file_type(int(gguf.LlamaFileType[file_type_name]))
    if tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_theta)
    _add_tokenizer(writer, tokenizer)

    for hf_name, array in weights.items():
        data = array
        if permute and hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, config.num_attention_heads, config.num_attention_heads)
        elif permute and hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, config.num_attention_heads, config.num_key_value_heads)
        _add_weight(writer, gguf_tensor_name(hf_name), data, tensor_type)
    _finish(writer)


def write_gemma3_gguf(
    path: Path,
    weights: Mapping[str, np.ndarray],
    tokenizer: Tokenizer,
    config: TinyGemma3Config,
    quant: str,
    *,
    norm_shift: float = 1.0,
) -> None:
    """One gemma3 GGUF file as llama.cpp's ``convert_hf_to_gguf.py`` writes it, 2-D weights in ``quant``.

    Norm weights get ``norm_shift`` added (llama.cpp multiplies by the stored value,
    transformers by ``1 + w``). Like the converter, this states no sliding-window
    pattern when the config has Gemma 3's own (every 6th layer global), which llama.cpp
    assumes; another pattern is written per layer
    (``gemma3.attention.sliding_window_pattern``), which llama.cpp reads. A different
    ``norm_shift`` or ``config`` than the SafeTensors directory's writes a broken
    conversion, which tests use to prove the logits comparison catches one.
    """
    import gguf

    tensor_type_name, file_type_name = _GGUF_TYPES[quant]
    tensor_type = gguf.GGMLQuantizationType[tensor_type_name]

    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name(GEMMA3_NAME)
    writer.add_file_type(int(gguf.LlamaFileType[file_type_name]))
    if tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_sliding_window(config.sliding_window)
    if config.sliding_window_pattern != _LLAMA_CPP_GEMMA3_PATTERN:
        writer.add_sliding_window_pattern([kind == "sliding_attention" for kind in config.layer_types])
    _add_tokenizer(writer, tokenizer)

    for hf_name, array in weights.items():
        data = array + np.float32(norm_shift) if hf_name.endswith("norm.weight") else array
        _add_weight(writer, gguf_tensor_name(hf_name, "gemma3"), data, tensor_type)
    _finish(writer)


# The tiny models quantize in about a second; this only stops a hung child.
_QUANTIZE_TIMEOUT_S = 300
_QUANTIZE_SCRIPT = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
params.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def quantize_with_llama_cpp(source: Path, dest: Path, quant: str) -> None:
    """Write ``dest``, the GGUF ``source`` quantized by llama.cpp's quantizer to ``quant`` (e.g. Q4_K_M).

    It runs in a child process because llama.cpp aborts the process on a failed
    assertion. llama.cpp picks each tensor's type by its recipe for ``quant`` and falls
    back to another type for shapes the chosen one cannot hold.
    """
    ftype = LLAMA_CPP_QUANTS[quant]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _QUANTIZE_SCRIPT, str(source), str(dest), ftype],
            capture_output=True,
            text=True,
            check=False,
            timeout=_QUANTIZE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise MinervaError(
            f"{source}: llama.cpp's quantizer did not finish {quant} within {_QUANTIZE_TIMEOUT_S} s"
        ) from None
    if result.returncode != 0 or not dest.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise MinervaError(
            f"{source}: llama.cpp's quantizer failed to write {quant} (exit {result.returncode}): "
            f"{lines[-1] if lines else 'no message'}"
        )


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's GGML type name in the GGUF ``path``, by tensor name."""
    import gguf

    return {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(path).tensors}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gguf_quants(model: ModelSpec, name: str = NAME, quants: tuple[str, ...] = GGUF_QUANTS) -> list[str]:
    wanted = [(a.quant or "F32").upper() for a in model.artifacts if a.format == "gguf"] or ["F32"]
    for quant in wanted:
        if quant not in quants:
            raise MinervaError(f"model {model.name!r}: {name} cannot write GGUF {quant}; it writes {', '.join(quants)}")
    return sorted(set(wanted), key=quants.index)


def _check_dest(dest: Path, name: str) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise MinervaError(f"{dest}: {name} builds into an empty directory, and this one is not empty")


def _file_table(dest: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(dest).as_posix(): {"sha256": _sha256(path), "bytes": path.stat().st_size}
        for path in sorted(dest.rglob("*"))
        if path.is_file()
    }


def build(model: ModelSpec, dest: Path, *, _permute_qk: bool = True) -> dict[str, Any]:
    """Write the SafeTensors directory and every GGUF quantization ``model`` lists into ``dest``.

    Builds ``tiny-random-llama``, or the generator ``model.generator`` names
    (``tiny-random-gemma3`` goes to :data:`GEMMA3`). ``dest`` must be empty. The same
    ``model.seed`` always gives byte-identical files. Returns a JSON-able manifest:
    generator, version, seed, config, build seconds and, per file (relative to
    ``dest``), its sha256 and size.
    """
    if model.generator == GEMMA3_NAME:
        return GEMMA3.build(model, dest)
    started = time.perf_counter()
    dest = Path(dest)
    _check_dest(dest, NAME)
    quants = _gguf_quants(model)
    for module in ("tokenizers", "safetensors", "gguf"):
        _require(module)
    seed = DEFAULT_SEED if model.seed is None else int(model.seed)
    config = TinyLlamaConfig()
    tokenizer = train_tokenizer(vocab_size=config.vocab_size)
    weights = random_weights(config, seed)

    write_safetensors_dir(dest / "safetensors", weights, tokenizer, config)
    (dest / "gguf").mkdir(parents=True)
    for quant in quants:
        write_gguf(dest / "gguf" / f"{NAME}-{quant}.gguf", weights, tokenizer, config, quant, permute=_permute_qk)

    return {
        "generator": NAME,
        "version": VERSION,
        "seed": seed,
        "config": {**asdict(config), "head_dim": config.head_dim},
        "gguf_quants": quants,
        "tokenizer": {"corpus": CORPUS_FILE, "corpus_sha256": _sha256(corpus_path())},
        "qk_permuted": _permute_qk,
        "files": _file_table(dest),
        "build_seconds": round(time.perf_counter() - started, 3),
    }


def _artifact_path(name: str, quants: tuple[str, ...], root: Path, spec: ArtifactSpec) -> Path:
    if spec.format == "gguf":
        quant = (spec.quant or "F32").upper()
        if quant not in quants:
            raise MinervaError(f"{name} writes no GGUF {quant}; it writes {', '.join(quants)}")
        return Path(root) / "gguf" / f"{name}-{quant}.gguf"
    if spec.format == "safetensors":
        return Path(root) / "safetensors"
    raise MinervaError(f"{name} writes gguf and safetensors, not {spec.format}; derive {spec.format} from those")


def artifact_path(root: Path, spec: ArtifactSpec) -> Path:
    """Where :func:`build` put ``spec`` under ``root``: a GGUF file, or the SafeTensors directory."""
    if spec.generator == GEMMA3_NAME:
        return GEMMA3.artifact_path(root, spec)
    return _artifact_path(NAME, GGUF_QUANTS, root, spec)


class Gemma3Generator:
    """The ``tiny-random-gemma3`` generator, registered as ``"pytest_minerva.tiny_random:GEMMA3"``.

    :attr:`VERSION` (the cache key part) gains a ``-no-llama-cpp`` suffix where
    llama-cpp-python is not installed, since the Q4_K_M file cannot be built then; a
    later install thus gets a fresh build with it instead of the cached one without.
    """

    name = GEMMA3_NAME
    architecture = "gemma3"
    quants = GEMMA3_GGUF_QUANTS

    @property
    def VERSION(self) -> str:
        return GEMMA3_VERSION if importlib.util.find_spec("llama_cpp") else f"{GEMMA3_VERSION}-no-llama-cpp"

    def build(
        self,
        model: ModelSpec,
        dest: Path,
        *,
        config: TinyGemma3Config | None = None,
        norm_shift: float = 1.0,
    ) -> dict[str, Any]:
        """Write the SafeTensors directory and every GGUF quantization ``model`` lists into ``dest``.

        ``dest`` must be empty; the same ``model.seed`` gives byte-identical files
        (Q4_K_M: with the same llama.cpp). GGUF F32 is always written, since llama.cpp
        quantizes from it. Q4_K_M is skipped, with the reason in the manifest's
        ``gguf_not_built``, where llama-cpp-python is missing. ``config`` and
        ``norm_shift`` exist for tests that need a variant or a broken conversion. The
        manifest also lists, per GGUF, how many tensors have each type and, for files
        llama.cpp quantized, every tensor's type (``llama_cpp_tensor_types``).
        """
        started = time.perf_counter()
        dest = Path(dest)
        _check_dest(dest, self.name)
        quants = _gguf_quants(model, self.name, self.quants)
        for module in ("tokenizers", "safetensors", "gguf"):
            _require(module, self.name)
        seed = DEFAULT_SEED if model.seed is None else int(model.seed)
        config = config or TinyGemma3Config()
        tokenizer = train_tokenizer(vocab_size=config.vocab_size)
        weights = random_gemma3_weights(config, seed)

        write_safetensors_dir(dest / "safetensors", weights, tokenizer, config)
        gguf_dir = dest / "gguf"
        gguf_dir.mkdir(parents=True)
        not_built: dict[str, str] = {}
        written: list[str] = []
        for quant in ["F32", *(q for q in quants if q != "F32")]:
            path = gguf_dir / f"{self.name}-{quant}.gguf"
            if quant in LLAMA_CPP_QUANTS:
                if importlib.util.find_spec("llama_cpp") is None:
                    not_built[quant] = "llama.cpp's quantizer is needed: pip install llama-cpp-python"
                    continue
                quantize_with_llama_cpp(gguf_dir / f"{self.name}-F32.gguf", path, quant)
            else:
                write_gemma3_gguf(path, weights, tokenizer, config, quant, norm_shift=norm_shift)
            written.append(quant)

        tensor_types = {quant: gguf_tensor_types(gguf_dir / f"{self.name}-{quant}.gguf") for quant in written}
        tools = {"gguf": _version("gguf"), "tokenizers": _version("tokenizers")}
        if any(q in LLAMA_CPP_QUANTS for q in written):
            tools["llama-cpp-python"] = _version("llama-cpp-python")
        return {
            "generator": self.name,
            "version": self.VERSION,
            "seed": seed,
            "config": {
                **asdict(config),
                "layer_types": config.layer_types,
                "query_pre_attn_scalar": config.query_pre_attn_scalar,
            },
            "gguf_quants": sorted(written, key=self.quants.index),
            "gguf_not_built": not_built,
            "gguf_type_counts": {
                quant: dict(sorted(Counter(types.values()).items())) for quant, types in tensor_types.items()
            },
            "llama_cpp_tensor_types": {q: t for q, t in tensor_types.items() if q in LLAMA_CPP_QUANTS},
            "norm_shift": norm_shift,
            "tokenizer": {"corpus": CORPUS_FILE, "corpus_sha256": _sha256(corpus_path())},
            "tools": tools,
            "files": _file_table(dest),
            "build_seconds": round(time.perf_counter() - started, 3),
        }

    def artifact_path(self, root: Path, spec: ArtifactSpec) -> Path:
        """Where :meth:`build` put ``spec``; :class:`ArtifactMissing` for a K-quant it could not build."""
        path = _artifact_path(self.name, self.quants, root, spec)
        quant = (spec.quant or "").upper()
        if spec.format == "gguf" and quant in LLAMA_CPP_QUANTS and not path.is_file():
            raise ArtifactMissing(
                f"{self.name} GGUF {quant} was not built: llama.cpp's quantizer makes it; "
                "pip install llama-cpp-python (pytest-minerva[gguf])"
            )
        return path


#: The ``tiny-random-gemma3`` generator.
GEMMA3 = Gemma3Generator()

#: Generators this module provides, by the name a catalog entry's ``generator`` uses.
GENERATOR_TARGETS: dict[str, str] = {
    NAME: "pytest_minerva.tiny_random",
    GEMMA3_NAME: "pytest_minerva.tiny_random:GEMMA3",
}
