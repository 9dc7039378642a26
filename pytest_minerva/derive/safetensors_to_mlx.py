"""Derive an MLX model directory (float32, not quantized) from a SafeTensors directory.

mlx-lm's own converter does the work, keeping float32 so that MLX computes with the
same numbers as transformers. The result is then checked: the config as mlx-lm
builds its model from it (module by module: rope base and size, sliding layers,
tied output) is compared key by key with the source config as transformers reads it
(:func:`check_mlx_config`), every weight is compared bit for bit with the source,
and the tokenizer must give the source tokenizer's ids on the probes and on every text of
``fixtures/tokenizer_corpus.json``.

mlx-lm 0.32 reads the flat config keys of transformers 4 (``rope_theta``,
``rope_local_base_freq``...) and falls back to its own defaults when they are
absent, while transformers 5 writes only ``rope_parameters``; the converter adds
the flat keys to the MLX ``config.json`` when the source lacks them, and says so
in the manifest (``config_fixes``).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pytest_minerva.derive.common import TOKENIZER_PROBES, first_line, read_json, require_modules, tool_versions
from pytest_minerva.derive.facts import Declared, compare_facts, legacy_config_keys, transformers_config_facts
from pytest_minerva.equivalence.tokenizer_corpus import CORPUS_FILE, compare_on_corpus, corpus_sha256, load_corpus
from pytest_minerva.errors import FormatError, MinervaError
from pytest_minerva.formats.custom_code import refuse_custom_code

if TYPE_CHECKING:
    from pytest_minerva.models.resolve import ResolvedArtifact

#: Part of the cache key: 3 checks the tokenizer on the corpus and records it in the manifest.
VERSION = "3"
DTYPE = "float32"
TOOLS = ("mlx", "mlx-lm", "transformers", "safetensors")
_CONVERT_SUBDIR = "mlx-convert"
# tokenizer_config keys mlx-lm's tokenizer round trip drops; the GGUF converter records BOS there.
_TOKENIZER_FLAGS = ("add_bos_token", "add_eos_token")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=4, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _load_mlx_model(mlx_dir: Path) -> tuple[Any, dict[str, Any]]:
    from mlx_lm.utils import load_model

    try:
        return load_model(mlx_dir, lazy=True, trust_remote_code=False)
    # mlx-lm raises ValueError/KeyError/TypeError for configs it cannot build a model from.
    except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
        raise FormatError(mlx_dir, f"mlx-lm cannot build a model from it: {first_line(exc)}") from None


def mlx_model_facts(model: Any, config: dict[str, Any], where: str = "MLX model") -> dict[str, Declared]:
    """What an mlx-lm model was built with, read from its modules where they hold it.

    Reading the modules (each layer's rope, ``is_sliding``/``use_sliding``) rather
    than ``config.json`` catches config keys mlx-lm ignores and fills with defaults.
    """
    from mlx.utils import tree_flatten

    args: Any = getattr(model, "args", None)
    facts: dict[str, Declared] = {}

    def put(fact: str, value: Any, how: str) -> None:
        if value is not None:
            facts[fact] = Declared(value, f"{where} {how}")

    for name in (
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "rms_norm_eps",
        "vocab_size",
        "max_position_embeddings",
        "sliding_window",
    ):
        put(name, getattr(args, name, None), f"args.{name}")
    heads = getattr(args, "num_attention_heads", None)
    put("num_key_value_heads", getattr(args, "num_key_value_heads", None) or heads, "args.num_key_value_heads")
    names = [str(item[0]) for item in tree_flatten(model.parameters())]
    tied = not any(name.startswith("lm_head.") for name in names)
    put("tie_word_embeddings", tied, "(lm_head absent)" if tied else "(lm_head present)")
    for fact in ("bos_token_id", "eos_token_id"):
        put(fact, config.get(fact), f"config {fact}")
    types: list[str | None] = []
    for index, layer in enumerate(getattr(model, "layers", None) or []):
        attention: Any = getattr(layer, "self_attn", None)
        sliding = getattr(layer, "use_sliding", getattr(attention, "is_sliding", None))
        types.append(None if sliding is None else "sliding_attention" if sliding else "full_attention")
        rope: Any = getattr(attention, "rope", None)
        fact = "sliding_rope_theta" if sliding else "rope_theta"
        if fact not in facts and getattr(rope, "base", None) is not None:
            put(fact, float(rope.base), f"layers[{index}].self_attn.rope.base")
        if "rotary_dim" not in facts and getattr(rope, "dims", None) is not None:
            put("rotary_dim", int(rope.dims), f"layers[{index}].self_attn.rope.dims")
        if "head_dim" not in facts and getattr(attention, "head_dim", None) is not None:
            put("head_dim", int(attention.head_dim), f"layers[{index}].self_attn.head_dim")
    if types and None not in types and "sliding_attention" in types:
        put("layer_types", types, "layers[i] sliding flags")
    if "head_dim" not in facts and heads:
        put("head_dim", getattr(args, "head_dim", None) or args.hidden_size // heads, "args.head_dim")
    if "rope_theta" not in facts:
        put("rope_theta", getattr(args, "rope_theta", None), "args.rope_theta")
    scaling = getattr(args, "rope_scaling", None)
    if isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        put("rope_type", scaling.get("rope_type", scaling.get("type")), "args.rope_scaling.rope_type")
        put("rope_factor", scaling.get("factor"), "args.rope_scaling.factor")
    else:
        put("rope_type", "default", "args.rope_scaling (none)")
    return facts


def _mlx_against_source(mlx_dir: Path, hf_dir: Path) -> tuple[list[str], list[str], str]:
    """(problems, facts compared, mlx-lm model class) for an MLX directory and its source."""
    from transformers import CONFIG_MAPPING, AutoConfig

    refuse_custom_code(hf_dir, CONFIG_MAPPING)
    try:
        source = AutoConfig.from_pretrained(hf_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{hf_dir / 'config.json'}: transformers cannot read it: {first_line(exc)}"], [], ""
    expected = transformers_config_facts(source, where="the SafeTensors config.json")
    model, config = _load_mlx_model(mlx_dir)
    problems = compare_facts(expected, mlx_model_facts(model, config), subject="the MLX model")
    if config.get("quantization") or config.get("quantization_config"):
        problems.append("quantization: the MLX config declares quantization, expected float32 weights")
    return problems, sorted(expected), f"{type(model).__module__}.{type(model).__name__}"


def check_mlx_config(mlx_dir: str | Path, hf_dir: str | Path) -> list[str]:
    """Compare the model mlx-lm builds from ``mlx_dir`` with ``hf_dir``'s config as transformers reads it.

    Returns one line per problem (empty when they agree).
    """
    return _mlx_against_source(Path(mlx_dir), Path(hf_dir))[0]


def _compare_weights(mlx_dir: Path, hf_dir: Path) -> tuple[str, int]:
    """Every MLX tensor must equal the source tensor of the same name, bit for bit, as float32."""
    import mlx.core as mx

    source: dict[str, Any] = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        source.update(cast(dict[str, Any], mx.load(str(path))))
    derived: dict[str, Any] = {}
    for path in sorted(mlx_dir.glob("*.safetensors")):
        derived.update(cast(dict[str, Any], mx.load(str(path))))
    only_source = sorted(set(source) - set(derived) - {"lm_head.weight"})
    only_derived = sorted(set(derived) - set(source))
    if only_source or only_derived:
        raise MinervaError(
            f"{mlx_dir}: tensor names differ from {hf_dir} (only in source: {only_source[:5]}, "
            f"only in MLX: {only_derived[:5]})"
        )
    count = 0
    for name in sorted(derived):
        mine, theirs = derived.pop(name), source.pop(name)
        if mine.dtype != mx.float32:
            raise MinervaError(f"{mlx_dir}: tensor {name} is {mine.dtype}, expected float32")
        if mine.shape != theirs.shape or not mx.array_equal(mine, theirs.astype(mx.float32)).item():
            raise MinervaError(f"{mlx_dir}: tensor {name} differs from the source tensor")
        count += 1
    return f"weights: {count} float32 tensors equal to the source bit for bit", count


def _check_tokenizer(mlx_dir: Path, hf_dir: Path) -> tuple[str, dict[str, Any]]:
    """mlx-lm's tokenizer must give the source tokenizer's ids, with and without special tokens.

    Returns the check line and the manifest's ``tokenizer`` entry.
    """
    from mlx_lm.utils import load_tokenizer
    from transformers import AutoTokenizer

    from pytest_minerva.backends.hf_text import HfTokenizerText

    source = AutoTokenizer.from_pretrained(hf_dir, trust_remote_code=False)
    derived = load_tokenizer(mlx_dir, {"trust_remote_code": False})
    for text in (*TOKENIZER_PROBES, "Hello"):
        want, have = source(text).input_ids, derived.encode(text)
        if list(want) != list(have):
            raise FormatError(hf_dir, f"the MLX tokenizer gives {have} for {text!r}, the source tokenizer {want}")
    cases = load_corpus()
    mismatches = compare_on_corpus(
        HfTokenizerText(source, "source", hf_dir), HfTokenizerText(derived._tokenizer, "mlx-lm", mlx_dir), cases
    )
    if mismatches:
        m = mismatches[0]
        raise FormatError(
            hf_dir,
            f"mlx-lm's tokenizer splits {len(mismatches)} of {len(cases)} corpus texts differently from the source; "
            f"first {m.case.text!r}: source {m.reference_ids}, mlx-lm {m.candidate_ids}",
        )
    entry = {
        "reference": "the source SafeTensors tokenizer",
        "corpus": {"file": CORPUS_FILE, "sha256": corpus_sha256(), "texts": len(cases), "identical": len(cases)},
        "verified": True,
    }
    line = (
        f"tokenizer: mlx-lm's tokenizer gives the source ids for {len(TOKENIZER_PROBES) + 1} probe strings "
        f"and {len(cases)} of {len(cases)} corpus texts ({CORPUS_FILE})"
    )
    return line, entry


def _add_missing_keys(mlx_dir: Path, hf_dir: Path) -> list[str]:
    """Restore what mlx-lm would otherwise default or drop; returns the keys added."""
    from transformers import AutoConfig

    fixes: list[str] = []
    config_path = mlx_dir / "config.json"
    config = read_json(config_path)
    for key, value in legacy_config_keys(AutoConfig.from_pretrained(hf_dir, trust_remote_code=False)).items():
        if key not in config:
            config[key] = value
            fixes.append(f"config.json {key}={value!r}")
    if fixes:
        _write_json(config_path, config)
    source_tokenizer = hf_dir / "tokenizer_config.json"
    derived_tokenizer = mlx_dir / "tokenizer_config.json"
    if source_tokenizer.is_file() and derived_tokenizer.is_file():
        wanted = {k: v for k, v in read_json(source_tokenizer).items() if k in _TOKENIZER_FLAGS}
        data = read_json(derived_tokenizer)
        missing = {k: v for k, v in wanted.items() if data.get(k) != v}
        if missing:
            data.update(missing)
            derived_tokenizer.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            fixes.extend(f"tokenizer_config.json {k}={v!r}" for k, v in missing.items())
    return fixes


def _convert(hf_dir: Path, dest: Path) -> None:
    from mlx_lm import convert

    version = tool_versions(("mlx-lm",)).get("mlx-lm", "?")
    work = dest / _CONVERT_SUBDIR
    try:
        # mlx-lm prints progress lines to stdout; they belong to no test's output.
        with contextlib.redirect_stdout(io.StringIO()):
            convert(hf_path=str(hf_dir), mlx_path=str(work), dtype=DTYPE, trust_remote_code=False)
    # mlx-lm raises ValueError/KeyError/TypeError for models it cannot convert.
    except (ValueError, KeyError, TypeError, FileNotFoundError) as exc:
        raise FormatError(hf_dir, f"mlx-lm {version} cannot convert it: {first_line(exc)}") from None
    for entry in work.iterdir():
        shutil.move(str(entry), str(dest / entry.name))
    work.rmdir()


def derive(source: ResolvedArtifact, dest: Path) -> dict[str, Any]:
    """Write a float32 MLX model directory for the SafeTensors directory ``source.path`` into ``dest``.

    Returns the manifest: tool versions, dtype, tensor count, timings, config keys
    added for mlx-lm and the checks that passed. Raises :class:`FormatError` naming
    the source directory when mlx-lm cannot convert it or the result disagrees with it.
    """
    require_modules("deriving MLX from SafeTensors", ("mlx", "mlx_lm"), "mlx")
    started = time.perf_counter()
    hf_dir, dest = Path(source.path), Path(dest)
    if not (hf_dir / "config.json").is_file() or not any(hf_dir.glob("*.safetensors")):
        raise FormatError(hf_dir, "not a SafeTensors model directory (needs config.json and *.safetensors)")
    from transformers import CONFIG_MAPPING

    refuse_custom_code(hf_dir, CONFIG_MAPPING)
    _convert(hf_dir, dest)
    converted = time.perf_counter()
    fixes = _add_missing_keys(dest, hf_dir)
    problems, compared, model_class = _mlx_against_source(dest, hf_dir)
    if problems:
        raise FormatError(hf_dir, "the derived MLX model disagrees with its config: " + "; ".join(problems))
    weights_check, tensors = _compare_weights(dest, hf_dir)
    tokenizer_line, tokenizer_entry = _check_tokenizer(dest, hf_dir)
    checks = [
        f"config: mlx-lm builds its model with the source config's values ({', '.join(compared)})",
        weights_check,
        tokenizer_line,
    ]
    finished = time.perf_counter()
    return {
        "format": "mlx",
        "converter": "safetensors_to_mlx",
        "converter_version": VERSION,
        "mlx_model_class": model_class,
        "dtype": DTYPE,
        "tensors": tensors,
        "weights_bytes": sum(p.stat().st_size for p in dest.glob("*.safetensors")),
        "config_fixes": fixes,
        "tools": tool_versions(TOOLS),
        "seconds": {
            "convert": round(converted - started, 3),
            "check": round(finished - converted, 3),
            "total": round(finished - started, 3),
        },
        "checks": checks,
        "tokenizer": tokenizer_entry,
    }
