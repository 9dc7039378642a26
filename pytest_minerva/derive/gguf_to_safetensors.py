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

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_minerva.derive.common import first_line, read_json, require_modules, tool_versions
from pytest_minerva.derive.facts import (
    compare_facts,
    gguf_declared_config,
    legacy_config_keys,
    legacy_key_facts,
    transformers_config_facts,
)
from pytest_minerva.derive.gguf_header import GGUFHeader, read_gguf_header
from pytest_minerva.derive.gguf_tokenizer import TokenizerRule, apply_rule, tokenizer_rule
from pytest_minerva.equivalence.tokenizer_corpus import (
    CORPUS_FILE,
    TokenizerMismatch,
    compare_on_corpus,
    corpus_sha256,
    load_corpus,
)
from pytest_minerva.errors import FormatError, MinervaError

if TYPE_CHECKING:
    from pytest_minerva.models.resolve import ResolvedArtifact

#: Part of the cache key of every derived directory: bump it whenever what is written can change.
#: 3: the tokenizer splits text as llama.cpp does (SmolLM2's digits), checked on the corpus.
VERSION = "3"
WEIGHTS_FILE = "model.safetensors"
#: The ``config.json`` key holding what the GGUF declared that no config field holds.
GGUF_RECORD_KEY = "minerva_gguf"
TOOLS = ("transformers", "torch", "safetensors", "gguf", "tokenizers", "accelerate", "llama_cpp_python")


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
    raw = read_json(hf_dir / "config.json")
    try:
        config = AutoConfig.from_pretrained(hf_dir, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"config.json: transformers cannot read it: {first_line(exc)}"]
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
            recorded = read_json(tokenizer_config).get("add_bos_token")
            if recorded != add_bos:
                problems.append(
                    f"add_bos_token: tokenizer_config.json add_bos_token has {recorded!r}, "
                    f"expected {add_bos!r} (tokenizer.ggml.add_bos_token)"
                )
    return problems


def _load_with_transformers(gguf_path: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    version = tool_versions(("transformers",)).get("transformers", "?")
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        # trust_remote_code=False: transformers raises rather than asking on stdin to run a model's code.
        where: dict[str, Any] = {"gguf_file": gguf_path.name, "trust_remote_code": False}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **where)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **where, dtype=torch.float32)
    # transformers raises ValueError/KeyError/NotImplementedError/RuntimeError for GGUFs it cannot map.
    except (ValueError, KeyError, NotImplementedError, RuntimeError, OSError, TypeError) as exc:
        raise FormatError(gguf_path, f"transformers {version} cannot load it: {first_line(exc)}") from None
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
    data = read_json(path)
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
    saved = AutoTokenizer.from_pretrained(dest, trust_remote_code=False)
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
    raw = read_json(path)
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
    require_modules("deriving SafeTensors from a GGUF", ("torch", "transformers"), "transformers")
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
        "tools": tool_versions(TOOLS),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "checks": checks,
        "tokenizer": tokenizer_entry,
    }
