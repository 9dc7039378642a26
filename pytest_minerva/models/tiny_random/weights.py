"""Seeded random float32 weights under Hugging Face tensor names, one function per architecture.

Weight scales are chosen so the models are small but not degenerate: next-token
distributions are peaked and attention depends on position, so a wrong conversion or a
lossy quantization shows up in the logits.
"""

from __future__ import annotations

import numpy as np

from pytest_minerva.models.tiny_random.config import TinyGemma3Config, TinyLlamaConfig

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
