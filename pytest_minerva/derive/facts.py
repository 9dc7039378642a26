"""Config facts: what a GGUF or a transformers config says about a model, and their comparison.

Each source is read into the same vocabulary, Hugging Face config names mapped to a
:class:`Declared` value and where it is stated, so :func:`compare_facts` can report a
disagreement between any two in one line naming both places. The GGUF converter checks the
``config.json`` it wrote against the GGUF this way; the MLX converter checks the model mlx-lm
builds (its own ``mlx_model_facts``) against the SafeTensors config.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pytest_minerva.derive.gguf_header import GGUFHeader

# llama.cpp hard-codes these for gemma3 when the GGUF names no value (llama-model.cpp).
_GEMMA3_SWA_ROPE_BASE = 10000.0
_GEMMA3_SWA_PATTERN = 6


class Declared(NamedTuple):
    """A value one side of a comparison states, and where it states it."""

    value: Any
    where: str


def gguf_declared_config(header: GGUFHeader) -> dict[str, Declared]:
    """The config values a GGUF declares, under Hugging Face config names.

    Where the GGUF leaves a value implicit, the value llama.cpp uses is given and
    ``where`` says so (head size from hidden size / heads, gemma3's local rope base
    and layer pattern, tied output from a missing ``output.weight``).
    """
    fields, arch = header.fields, header.architecture
    declared: dict[str, Declared] = {"model_type": Declared(arch, "general.architecture")}
    direct = (
        ("hidden_size", "embedding_length"),
        ("num_hidden_layers", "block_count"),
        ("num_attention_heads", "attention.head_count"),
        ("num_key_value_heads", "attention.head_count_kv"),
        ("intermediate_size", "feed_forward_length"),
        ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
        ("max_position_embeddings", "context_length"),
        ("sliding_window", "attention.sliding_window"),
    )
    for fact, suffix in direct:
        if header.key(suffix) in fields:
            declared[fact] = Declared(fields[header.key(suffix)], header.key(suffix))
    hidden, heads = fields.get(header.key("embedding_length")), fields.get(header.key("attention.head_count"))
    if "num_key_value_heads" not in declared and heads is not None:
        declared["num_key_value_heads"] = Declared(heads, f"{arch}.attention.head_count (head_count_kv absent)")
    if header.key("attention.key_length") in fields:
        declared["head_dim"] = Declared(fields[header.key("attention.key_length")], header.key("attention.key_length"))
    elif isinstance(hidden, int) and isinstance(heads, int) and heads:
        declared["head_dim"] = Declared(hidden // heads, f"{arch}.embedding_length / {arch}.attention.head_count")
    if header.key("rope.dimension_count") in fields:
        declared["rotary_dim"] = Declared(
            fields[header.key("rope.dimension_count")], header.key("rope.dimension_count")
        )
    elif "head_dim" in declared:
        declared["rotary_dim"] = Declared(declared["head_dim"].value, declared["head_dim"].where)
    if header.key("rope.freq_base") in fields:
        declared["rope_theta"] = Declared(fields[header.key("rope.freq_base")], header.key("rope.freq_base"))
    else:
        declared["rope_theta"] = Declared(10000.0, f"llama.cpp's default ({header.key('rope.freq_base')} is absent)")
    scaling = fields.get(header.key("rope.scaling.type"))
    if "rope_freqs.weight" in header.tensor_shapes:
        declared["rope_type"] = Declared("llama3", "tensor rope_freqs.weight")
    elif scaling in (None, "none"):
        declared["rope_type"] = Declared("default", f"{header.key('rope.scaling.type')} ({scaling or 'absent'})")
    else:
        declared["rope_type"] = Declared(scaling, header.key("rope.scaling.type"))
        if header.key("rope.scaling.factor") in fields:
            declared["rope_factor"] = Declared(
                fields[header.key("rope.scaling.factor")], header.key("rope.scaling.factor")
            )
    if header.key("vocab_size") in fields:
        declared["vocab_size"] = Declared(fields[header.key("vocab_size")], header.key("vocab_size"))
    elif "token_embd.weight" in header.tensor_shapes:
        declared["vocab_size"] = Declared(header.tensor_shapes["token_embd.weight"][-1], "rows of token_embd.weight")
    tied = "output.weight" not in header.tensor_shapes
    declared["tie_word_embeddings"] = Declared(tied, f"tensor output.weight {'absent' if tied else 'present'}")
    for fact in ("bos_token_id", "eos_token_id"):
        gguf_key = f"tokenizer.ggml.{fact}"
        if gguf_key in fields:
            declared[fact] = Declared(fields[gguf_key], gguf_key)
    if arch == "gemma3":
        swa_base = header.key("rope.freq_base_swa")
        declared["sliding_rope_theta"] = Declared(
            fields.get(swa_base, _GEMMA3_SWA_ROPE_BASE),
            swa_base if swa_base in fields else f"llama.cpp's fixed gemma3 value ({swa_base} is absent)",
        )
        layers = fields.get(header.key("block_count"))
        pattern = fields.get(header.key("attention.sliding_window_pattern"))
        if isinstance(pattern, list):
            types = ["sliding_attention" if p else "full_attention" for p in pattern]
            declared["layer_types"] = Declared(types, header.key("attention.sliding_window_pattern"))
        elif isinstance(layers, int):
            types = [
                "full_attention" if (i + 1) % _GEMMA3_SWA_PATTERN == 0 else "sliding_attention" for i in range(layers)
            ]
            declared["layer_types"] = Declared(types, "llama.cpp's fixed gemma3 pattern (every 6th layer global)")
    return declared


def _split_rope(rope: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``rope_parameters`` as (global, sliding-window) parts; per-layer-type dicts are split."""
    if not isinstance(rope, dict):
        return {}, None
    if rope and all(isinstance(v, dict) for v in rope.values()):
        return dict(rope.get("full_attention") or {}), rope.get("sliding_attention")
    return dict(rope), None


def sliding_window_pattern(layer_types: list[str] | None) -> int | None:
    """``p`` when every ``p``-th layer is global and the rest sliding, else None."""
    if not layer_types or "full_attention" not in layer_types:
        return None
    period = layer_types.index("full_attention") + 1
    expected = ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(len(layer_types))]
    return period if list(layer_types) == expected else None


def transformers_config_facts(config: Any, where: str = "config.json") -> dict[str, Declared]:
    """What a transformers ``PretrainedConfig`` says, under the names of :func:`gguf_declared_config`."""
    facts: dict[str, Declared] = {}

    def put(fact: str, value: Any, key: str) -> None:
        if value is not None:
            facts[fact] = Declared(value, f"{where} {key}")

    for name in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "sliding_window",
        "layer_types",
    ):
        put(name, getattr(config, name, None), name)
    heads = getattr(config, "num_attention_heads", None)
    put("num_key_value_heads", getattr(config, "num_key_value_heads", None) or heads, "num_key_value_heads")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None and getattr(config, "hidden_size", None) and heads:
        head_dim = config.hidden_size // heads
    put("head_dim", head_dim, "head_dim")
    full, sliding = _split_rope(getattr(config, "rope_parameters", None))
    partial = full.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    if head_dim is not None:
        put("rotary_dim", int(head_dim * partial) if partial else head_dim, "head_dim * partial_rotary_factor")
    put(
        "rope_theta",
        full.get("rope_theta", getattr(config, "rope_theta", None)),
        "rope_parameters.rope_theta",
    )
    put("rope_type", full.get("rope_type", "default"), "rope_parameters.rope_type")
    if full.get("rope_type", "default") != "default":
        put("rope_factor", full.get("factor"), "rope_parameters.factor")
    if sliding is not None:
        put("sliding_rope_theta", sliding.get("rope_theta"), "rope_parameters.sliding_attention.rope_theta")
    return facts


def legacy_config_keys(config: Any) -> dict[str, Any]:
    """Flat keys that transformers 4 wrote and mlx-lm still reads, from a transformers 5 config.

    transformers 5 keeps rope settings only in ``rope_parameters``; mlx-lm 0.32 reads
    ``rope_theta`` (default 10000) and ``rope_local_base_freq``, so without these keys
    it would silently use its defaults.
    """
    full, sliding = _split_rope(getattr(config, "rope_parameters", None))
    keys: dict[str, Any] = {}
    if "rope_theta" in full:
        keys["rope_theta"] = full["rope_theta"]
    if full.get("rope_type", "default") != "default":
        keys["rope_scaling"] = {k: v for k, v in full.items() if k != "rope_theta"}
    if sliding is not None and "rope_theta" in sliding:
        keys["rope_local_base_freq"] = sliding["rope_theta"]
    pattern = sliding_window_pattern(getattr(config, "layer_types", None))
    if pattern is not None and getattr(config, "sliding_window", None) is not None:
        keys["sliding_window_pattern"] = pattern
    return keys


def legacy_key_facts(raw: dict[str, Any], where: str = "config.json") -> dict[str, Declared]:
    """The facts stated by the flat keys of :func:`legacy_config_keys` present in a raw config."""
    facts: dict[str, Declared] = {}
    if "rope_theta" in raw:
        facts["rope_theta"] = Declared(raw["rope_theta"], f"{where} rope_theta")
    if "rope_local_base_freq" in raw:
        facts["sliding_rope_theta"] = Declared(raw["rope_local_base_freq"], f"{where} rope_local_base_freq")
    if isinstance(raw.get("rope_scaling"), dict):
        scaling = raw["rope_scaling"]
        facts["rope_type"] = Declared(scaling.get("rope_type", scaling.get("type")), f"{where} rope_scaling.rope_type")
        if "factor" in scaling:
            facts["rope_factor"] = Declared(scaling["factor"], f"{where} rope_scaling.factor")
    if isinstance(raw.get("sliding_window_pattern"), int) and isinstance(raw.get("num_hidden_layers"), int):
        period = raw["sliding_window_pattern"]
        types = [
            "full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(raw["num_hidden_layers"])
        ]
        facts["layer_types"] = Declared(types, f"{where} sliding_window_pattern={period}")
    return facts


def _same(fact: str, want: Any, have: Any) -> bool:
    if fact == "model_type":
        return bool(have == want or have == f"{want}_text")
    if fact == "eos_token_id" and isinstance(have, (list, tuple)) and not isinstance(want, (list, tuple)):
        return want in have
    if isinstance(want, bool) or isinstance(have, bool):
        return isinstance(want, bool) and isinstance(have, bool) and want == have
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        if isinstance(want, float) or isinstance(have, float):
            # GGUF stores float32; a config may hold the rounded decimal (1e-5 vs 9.99999975e-06).
            return math.isclose(want, have, rel_tol=1e-6)
        return want == have
    if isinstance(want, (list, tuple)) and isinstance(have, (list, tuple)):
        return list(want) == list(have)
    return bool(want == have)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{len(value)} items: {', '.join(map(repr, value[:3]))}, …]"
    return repr(value)


def compare_facts(
    expected: dict[str, Declared], actual: dict[str, Declared], *, subject: str, only_present: bool = False
) -> list[str]:
    """One problem line per fact where ``actual`` disagrees with ``expected`` (or lacks it)."""
    problems: list[str] = []
    for fact, want in expected.items():
        have = actual.get(fact)
        if have is None:
            if not only_present:
                problems.append(f"{fact}: {subject} has no value, expected {_show(want.value)} ({want.where})")
            continue
        if not _same(fact, want.value, have.value):
            detail = ""
            if isinstance(want.value, list) and isinstance(have.value, list) and len(want.value) == len(have.value):
                first = next(i for i, (a, b) in enumerate(zip(want.value, have.value, strict=True)) if a != b)
                detail = f" (first difference at index {first}: {have.value[first]!r} vs {want.value[first]!r})"
            expected_text = f"expected {_show(want.value)} ({want.where}){detail}"
            problems.append(f"{fact}: {have.where} has {_show(have.value)}, {expected_text}")
    return problems
