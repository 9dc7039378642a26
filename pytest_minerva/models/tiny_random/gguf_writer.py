"""GGUF files of the generated models, written with gguf-py as llama.cpp's ``convert_hf_to_gguf.py`` would.

2-D weights are stored in the requested quantization (``gguf.quants.quantize``), norms in
F32; the tokenizer goes in as ``tokenizer.ggml.model = gpt2`` with the ``gpt-2``
pre-tokenizer. :func:`gguf_tensor_types` reads back each tensor's type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_minerva.models.tiny_random.config import (
    BOS_ID,
    EOS_ID,
    GEMMA3_NAME,
    NAME,
    TinyGemma3Config,
    TinyLlamaConfig,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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


def gguf_tensor_types(path: Path) -> dict[str, str]:
    """Each tensor's GGML type name in the GGUF ``path``, by tensor name."""
    import gguf

    return {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(path).tensors}
