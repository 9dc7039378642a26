"""The Hugging Face model directory of a generated model: weights, ``config.json`` and tokenizer files."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pytest_minerva.models.tiny_random.config import (
    BOS_ID,
    BOS_TOKEN,
    EOS_ID,
    EOS_TOKEN,
    TinyGemma3Config,
    TinyLlamaConfig,
    require_package,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer


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
    require_package("safetensors")
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
