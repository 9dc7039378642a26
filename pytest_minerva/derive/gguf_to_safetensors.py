"""Derive a Hugging Face SafeTensors directory (float32) from a GGUF file.

transformers dequantizes a GGUF when it loads one; this module writes what it loaded
as a plain model directory that every SafeTensors reader can use:
``model.safetensors`` (float32, a tied embedding stored once), ``config.json``
without a ``quantization_config``, the tokenizer files and ``generation_config.json``.

Nothing is handed back unchecked. The written config is read again and compared,
key by key, with the GGUF metadata (:func:`check_config_against_gguf`); the weights
file's header is compared with the model that was loaded; the saved tokenizer must
split every text of ``fixtures/tokenizer_corpus.json`` exactly as llama.cpp does on the
GGUF, and add a BOS token exactly when the GGUF says to.

The tokenizer is transformers' GGUF conversion with the normalizer and pre-tokenizer
llama.cpp uses for the file's ``tokenizer.ggml.pre`` written in
(:mod:`~pytest_minerva.derive.gguf_tokenizer`): transformers' own conversion loses some of
them (SmolLM2's digit rule). A type that module does not know fails the conversion. The
manifest's ``tokenizer`` entry records the rule, the corpus checks passed and how often
transformers' own conversion disagrees with llama.cpp.

What the GGUF declares that ``config.json`` has no field for is recorded under the
``minerva_gguf`` key of ``config.json`` (``add_bos_token``, ``add_eos_token``, the
file and its quantization), and ``add_bos_token`` also in ``tokenizer_config.json``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pytest_minerva.derive.gguf_tokenizer import TokenizerRule, apply_rule, tokenizer_rule
from pytest_minerva.errors import FormatError, MinervaError
from pytest_minerva.tokenizer_corpus import (
    CORPUS_FILE,
    TokenizerMismatch,
    compare_on_corpus,
    corpus_sha256,
    load_corpus,
)

if TYPE_CHECKING:
    from pytest_minerva.resolve import ResolvedArtifact

#: Part of the cache key of every derived directory: bump it whenever what is written can change.
#: 3: the tokenizer splits text as llama.cpp does (SmolLM2's digits), checked on the corpus.
VERSION = "3"
WEIGHTS_FILE = "model.safetensors"
#: The ``config.json`` key holding what the GGUF declared that no config field holds.
GGUF_RECORD_KEY = "minerva_gguf"
TOOLS = ("transformers", "torch", "safetensors", "gguf", "tokenizers", "accelerate", "llama_cpp_python")

# llama.cpp hard-codes these for gemma3 when the GGUF names no value (llama-model.cpp).
_GEMMA3_SWA_ROPE_BASE = 10000.0
_GEMMA3_SWA_PATTERN = 6
# Arrays longer than this (token lists, merges) are kept as lengths only.
_SHORT_ARRAY = 64
#: Strings whose token ids must survive every conversion unchanged (also in the tokenizer corpus).
TOKENIZER_PROBES = (
    "The capital of France is",
    " leading space and  two spaces",
    "Numbers 1234567, punctuation!? and a tab\there.",
    "Unicode: naïve café, Ελληνικά, 日本語, emoji 🙂",
    "line one\nline two\n\n",
)


class Declared(NamedTuple):
    """A value one side of a comparison states, and where it states it."""

    value: Any
    where: str


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata and tensor shapes of a GGUF file (no tensor data)."""

    path: Path
    fields: dict[str, Any]
    array_lengths: dict[str, int]
    tensor_shapes: dict[str, tuple[int, ...]]

    @property
    def architecture(self) -> str:
        return str(self.fields.get("general.architecture", ""))

    def key(self, suffix: str) -> str:
        """The full key of an architecture-scoped field: ``llama.`` + ``suffix``."""
        return f"{self.architecture}.{suffix}"


def tool_versions(names: tuple[str, ...] = TOOLS) -> dict[str, str]:
    """Installed versions of the distributions that did a conversion."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def read_gguf_header(path: str | Path) -> GGUFHeader:
    """Read a GGUF's metadata and tensor shapes; :class:`FormatError` if it is not a valid GGUF."""
    from pytest_minerva.formats import FileSource, OmittedValue
    from pytest_minerva.formats.gguf import read_layout

    path = Path(path)
    with FileSource(path) as source:
        layout = read_layout(source, path)
    fields: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for name, value in layout.metadata.items():
        if isinstance(value, OmittedValue):
            if value.kind == "array":
                lengths[name] = value.count
        elif isinstance(value, list) and len(value) > _SHORT_ARRAY:
            lengths[name] = len(value)
        else:
            fields[name] = value
    shapes = {t.name: tuple(t.shape) for t in layout.tensors}
    return GGUFHeader(path, fields, lengths, shapes)


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatError(path, f"cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise FormatError(path, f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise FormatError(path, "expected a JSON object")
    return data


def check_config_against_gguf(hf_dir: str | Path, gguf_path: str | Path) -> list[str]:
    """Compare a SafeTensors directory's config with the GGUF it was derived from.

    Returns one line per problem (empty when they agree). The config is read as
    transformers reads it (``AutoConfig``) and, separately, the flat legacy keys other
    readers use (``rope_theta``...), so a file where the two disagree is caught.
    """
    from transformers import AutoConfig

    hf_dir = Path(hf_dir)
    header = read_gguf_header(gguf_path)
    expected = gguf_declared_config(header)
    raw = _read_json(hf_dir / "config.json")
    try:
        config = AutoConfig.from_pretrained(hf_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"config.json: transformers cannot read it: {_first_line(exc)}"]
    problems = compare_facts(expected, transformers_config_facts(config), subject="config.json")
    problems += compare_facts(expected, legacy_key_facts(raw), subject="config.json", only_present=True)
    if "quantization_config" in raw:
        problems.append("quantization_config: config.json has one, but the weights are dequantized float32")
    add_bos = header.fields.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None:
        recorded = (raw.get(GGUF_RECORD_KEY) or {}).get("add_bos_token")
        if recorded != add_bos:
            problems.append(
                f"add_bos_token: config.json {GGUF_RECORD_KEY}.add_bos_token has {recorded!r}, "
                f"expected {add_bos!r} (tokenizer.ggml.add_bos_token)"
            )
        tokenizer_config = hf_dir / "tokenizer_config.json"
        if tokenizer_config.is_file():
            recorded = _read_json(tokenizer_config).get("add_bos_token")
            if recorded != add_bos:
                problems.append(
                    f"add_bos_token: tokenizer_config.json add_bos_token has {recorded!r}, "
                    f"expected {add_bos!r} (tokenizer.ggml.add_bos_token)"
                )
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_with_transformers(gguf_path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    version = tool_versions(("transformers",)).get("transformers", "?")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers raises ValueError/KeyError/NotImplementedError/RuntimeError for GGUFs it cannot map.
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError, TypeError) as exc:
        raise FormatError(gguf_path, f"transformers {version} cannot load it: {_first_line(exc)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    return model, tokenizer


def _parameter_name(model: Any, parameter: Any) -> str | None:
    for name, candidate in model.named_parameters(remove_duplicate=False):
        if candidate is parameter:
            return str(name)
    return None


def _all_finite(tensor: Any) -> bool:
    import torch

    # In chunks: isfinite on a whole embedding allocates float temporaries as big as the model.
    return all(bool(torch.isfinite(chunk).all()) for chunk in tensor.reshape(-1).split(1 << 20))


def _write_weights(model: Any, path: Path) -> dict[str, Any]:
    """Write the state dict as float32 SafeTensors; a tied output matrix is stored once."""
    import torch
    from safetensors.torch import save_file

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    separate_output = output.weight if output is not None and output.weight is not embedding else None
    if tied and separate_output is not None and not torch.equal(separate_output, embedding):
        raise MinervaError(f"{path}: the config ties the output matrix to the embeddings but their values differ")
    state = model.state_dict()
    input_name = next(
        (n for n, t in state.items() if t.data_ptr() == embedding.data_ptr() and t.shape == embedding.shape),
        None,
    )
    output_name = _parameter_name(model, separate_output) if separate_output is not None else None
    tensors: dict[str, Any] = {}
    owner: dict[tuple[int, tuple[int, ...]], str] = {}
    dropped: list[str] = []
    parameters = 0
    for name, tensor in state.items():
        alias = (tensor.data_ptr(), tuple(tensor.shape))
        if tied and (name == output_name or (alias in owner and owner[alias] == input_name)):
            dropped.append(name)
            continue
        if alias in owner:
            raise MinervaError(f"{path}: tensors {owner[alias]} and {name} share memory but are not tied")
        owner[alias] = name
        if tensor.dtype != torch.float32:
            raise MinervaError(f"{path}: tensor {name} loaded as {tensor.dtype}, expected float32")
        if not _all_finite(tensor):
            raise MinervaError(f"{path}: tensor {name} has NaN or infinite values after dequantization")
        tensors[name] = tensor if tensor.is_contiguous() else tensor.contiguous()
        parameters += tensor.numel()
    save_file(tensors, str(path), metadata={"format": "pt"})
    return {
        "shapes": {name: tuple(t.shape) for name, t in tensors.items()},
        "parameters": parameters,
        "tied": dropped,
        "embedding": input_name,
    }


def _check_weights_file(
    path: Path, shapes: dict[str, tuple[int, ...]], embedding: str | None, vocab_size: int | None
) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        names = set(handle.keys())
        if names != set(shapes):
            missing, extra = sorted(set(shapes) - names), sorted(names - set(shapes))
            raise MinervaError(f"{path}: tensors differ from the loaded model (missing {missing}, extra {extra})")
        for name in sorted(names):
            view = handle.get_slice(name)
            if tuple(view.get_shape()) != shapes[name] or view.get_dtype() != "F32":
                raise MinervaError(
                    f"{path}: tensor {name} is {view.get_dtype()} {view.get_shape()}, expected F32 {list(shapes[name])}"
                )
    rows = shapes[embedding][0] if embedding in shapes else None
    if vocab_size is not None and rows is not None and rows != vocab_size:
        raise MinervaError(f"{path}: {embedding} has {rows} rows, the GGUF declares vocab_size {vocab_size}")
    return (
        f"weights: {len(names)} float32 tensors re-read from the file with the loaded names and shapes, "
        f"all finite; {embedding} has {rows} rows = vocab_size"
    )


#: The class a derived tokenizer is loaded as: one that uses ``tokenizer.json`` as written. A
#: model's own class (``GPT2Tokenizer``, ``Qwen2Tokenizer``...) rebuilds its normalizer and
#: pre-tokenizer on load, which would undo the rule written into the file.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def save_tokenizer(tokenizer: Any, dest: Path, header: GGUFHeader, rule: TokenizerRule) -> None:
    """Write transformers' GGUF tokenizer into ``dest`` with ``rule`` applied and the GGUF's BOS/EOS flags."""
    apply_rule(tokenizer, rule, header)
    tokenizer.save_pretrained(dest)
    add_bos = header.fields.get("tokenizer.ggml.add_bos_token")
    add_eos = header.fields.get("tokenizer.ggml.add_eos_token")
    path = dest / "tokenizer_config.json"
    data = _read_json(path)
    data["tokenizer_class"] = TOKENIZER_CLASS
    if add_bos is not None:
        data["add_bos_token"] = add_bos
    if add_eos is not None:
        data["add_eos_token"] = add_eos
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _llama_cpp_vocab(gguf_path: Path) -> tuple[Any, str | None]:
    """llama.cpp's tokenizer for the GGUF, or None and why it cannot be had here."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return None, "llama-cpp-python is not installed"
    from pytest_minerva.backends.llama_cpp import LlamaCppVocab

    return LlamaCppVocab(gguf_path), None


def _first_difference(mismatches: list[TokenizerMismatch], candidate: str) -> str:
    m = mismatches[0]
    return f"{m.case.text!r}: llama.cpp {m.reference_ids}, {candidate} {m.candidate_ids}"


def check_tokenizer(
    dest: Path, header: GGUFHeader, rule: TokenizerRule, reference: Any, unverified: str | None
) -> tuple[str, dict[str, Any]]:
    """The saved tokenizer must tokenize like llama.cpp on the GGUF and honour its BOS flag.

    Returns the check line and the manifest's ``tokenizer`` entry.
    """
    from transformers import AutoTokenizer

    from pytest_minerva.backends.hf_text import HfTokenizerText

    gguf_path = header.path
    saved = AutoTokenizer.from_pretrained(dest)
    n_tokens = header.array_lengths.get("tokenizer.ggml.tokens")
    if n_tokens is not None and len(saved) != n_tokens:
        raise FormatError(gguf_path, f"the saved tokenizer has {len(saved)} tokens, the GGUF lists {n_tokens}")
    template = header.fields.get("tokenizer.chat_template")
    if template is not None and saved.chat_template != template:
        raise FormatError(gguf_path, "the saved tokenizer lost or changed the GGUF's chat template")
    add_bos = header.fields.get("tokenizer.ggml.add_bos_token")
    bos = header.fields.get("tokenizer.ggml.bos_token_id")
    bos_note = "BOS: the GGUF does not declare add_bos_token"
    if add_bos is not None and bos is not None:
        ids = saved("Hello").input_ids
        adds = bool(ids) and ids[0] == bos
        if adds != add_bos:
            raise FormatError(
                gguf_path,
                f"tokenizer.ggml.add_bos_token is {add_bos} but the saved tokenizer "
                f"{'adds' if adds else 'does not add'} BOS id {bos}",
            )
        bos_note = f"BOS: {'added' if add_bos else 'not added'} (id {bos}) as tokenizer.ggml.add_bos_token says"
    cases = load_corpus()
    entry: dict[str, Any] = {
        "gguf_model": header.fields.get("tokenizer.ggml.model"),
        "gguf_pre": header.fields.get("tokenizer.ggml.pre"),
        "rule": f"{rule.name}: {rule.description}",
        "corpus": {"file": CORPUS_FILE, "sha256": corpus_sha256(), "texts": len(cases)},
        "bos": bos_note,
    }
    if reference is None:
        entry.update(verified=False, unverified=f"not compared with llama.cpp: {unverified}")
        line = f"tokenizer: rule {rule.name}; UNVERIFIED, {entry['unverified']}; {len(saved)} tokens; {bos_note}"
        return line, entry
    mismatches = compare_on_corpus(reference, HfTokenizerText(saved, "derived tokenizer", dest), cases)
    if mismatches:
        raise FormatError(
            gguf_path,
            f"the derived tokenizer (rule {rule.name}) splits {len(mismatches)} of {len(cases)} corpus texts "
            f"differently from llama.cpp; first {_first_difference(mismatches, 'derived')}",
        )
    version = tool_versions(("llama_cpp_python",)).get("llama_cpp_python", "?")
    entry.update(verified=True, reference=f"llama.cpp (llama-cpp-python {version}) on the GGUF")
    entry["corpus"]["identical"] = len(cases)
    line = (
        f"tokenizer: rule {rule.name}; {len(cases)} of {len(cases)} corpus texts give llama.cpp's ids "
        f"({CORPUS_FILE}); {len(saved)} tokens; {bos_note}"
    )
    return line, entry


def _engine_disagreement(tokenizer: Any, reference: Any, gguf_path: Path) -> dict[str, Any] | None:
    """How often transformers' own GGUF tokenizer (before any rule is applied) disagrees with llama.cpp."""
    from pytest_minerva.backends.hf_text import HfTokenizerText

    if reference is None:
        return None
    cases = load_corpus()
    mismatches = compare_on_corpus(reference, HfTokenizerText(tokenizer, "transformers", gguf_path), cases)
    found: dict[str, Any] = {"texts": len(cases), "identical": len(cases) - len(mismatches)}
    if mismatches:
        found["first_difference"] = _first_difference(mismatches, "transformers")
    return found


def _write_config(model: Any, dest: Path, header: GGUFHeader) -> dict[str, Any]:
    config = model.config
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    config.architectures = [type(model).__name__]
    config.save_pretrained(dest)
    path = dest / "config.json"
    raw = _read_json(path)
    raw.pop("quantization_config", None)
    raw.update(legacy_config_keys(config))
    file_type = header.fields.get("general.file_type")
    record = {
        "file": header.path.name,
        "architecture": header.architecture,
        "file_type": _file_type_name(file_type),
        "add_bos_token": header.fields.get("tokenizer.ggml.add_bos_token"),
        "add_eos_token": header.fields.get("tokenizer.ggml.add_eos_token"),
        "converter": f"pytest_minerva.derive.gguf_to_safetensors {VERSION}",
    }
    raw[GGUF_RECORD_KEY] = record
    path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    model.generation_config.save_pretrained(dest)
    return record


def _file_type_name(file_type: Any) -> str | None:
    from pytest_minerva.formats.gguf import FILE_TYPES

    if file_type is None:
        return None
    return FILE_TYPES.get(int(file_type), str(file_type))


def _write_model(gguf_path: Path, dest: Path, header: GGUFHeader) -> tuple[dict[str, Any], Any, dict[str, float]]:
    """Load, write weights, config and generation config; the model is freed on return."""
    started = time.perf_counter()
    model, tokenizer = _load_with_transformers(gguf_path)
    loaded = time.perf_counter()
    weights = _write_weights(model, dest / WEIGHTS_FILE)
    weights["record"] = _write_config(model, dest, header)
    weights["model_class"] = type(model).__name__
    seconds = {"load": loaded - started, "write": time.perf_counter() - loaded}
    return weights, tokenizer, seconds


def derive(source: ResolvedArtifact, dest: Path) -> dict[str, Any]:
    """Write a float32 SafeTensors model directory for the GGUF ``source.path`` into ``dest``.

    Returns the manifest: tool versions, dtype, tensor and parameter counts, timings
    and the checks that passed. Raises :class:`FormatError` naming the GGUF when
    transformers cannot load it or the result disagrees with it.
    """
    started = time.perf_counter()
    gguf_path = Path(source.path)
    if not gguf_path.is_file():
        raise FormatError(gguf_path, "is not a file; the GGUF converter needs a single .gguf file")
    dest = Path(dest)
    header = read_gguf_header(gguf_path)
    rule = tokenizer_rule(header)  # an unknown tokenizer type fails before the model is loaded
    weights, tokenizer, seconds = _write_model(gguf_path, dest, header)
    # safetensors creates the file 0600; give it the umask-derived mode of its siblings.
    (dest / WEIGHTS_FILE).chmod((dest / "config.json").stat().st_mode & 0o777)
    reference, unverified = _llama_cpp_vocab(gguf_path)
    try:
        engine = _engine_disagreement(tokenizer, reference, gguf_path)
        save_tokenizer(tokenizer, dest, header, rule)
        checking = time.perf_counter()
        tokenizer_line, tokenizer_entry = check_tokenizer(dest, header, rule, reference, unverified)
    finally:
        if reference is not None:
            reference.close()
    if engine is not None:
        tokenizer_entry["transformers_gguf_loader"] = engine
    declared = gguf_declared_config(header)
    problems = check_config_against_gguf(dest, gguf_path)
    if problems:
        raise FormatError(gguf_path, "the derived config.json disagrees with it: " + "; ".join(problems))
    vocab = declared.get("vocab_size")
    checks = [
        f"config: {len(declared)} values match the GGUF metadata ({', '.join(sorted(declared))})",
        _check_weights_file(
            dest / WEIGHTS_FILE, weights["shapes"], weights["embedding"], vocab.value if vocab else None
        ),
        tokenizer_line,
    ]
    seconds["check"] = time.perf_counter() - checking
    seconds["total"] = time.perf_counter() - started
    return {
        "format": "safetensors",
        "converter": "gguf_to_safetensors",
        "converter_version": VERSION,
        "source_file": gguf_path.name,
        "source_architecture": header.architecture,
        "source_file_type": weights["record"]["file_type"],
        "model_class": weights["model_class"],
        "dtype": "float32",
        "tensors": len(weights["shapes"]),
        "parameters": weights["parameters"],
        "tied_not_stored": weights["tied"],
        "weights_bytes": (dest / WEIGHTS_FILE).stat().st_size,
        "add_bos_token": header.fields.get("tokenizer.ggml.add_bos_token"),
        "tools": tool_versions(),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "checks": checks,
        "tokenizer": tokenizer_entry,
    }
