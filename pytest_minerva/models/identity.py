"""A model file is what the catalog says it is: the identity facts a header can confirm.

The catalog states, per model, the facts a file's own header carries (:data:`FACTS`: the
architecture, block count, embedding length, head counts, vocabulary size and context
length) and, per artifact, its quantization (``quant``: the GGUF file type, or the dtype of
a SafeTensors directory's weights). :func:`found_facts` reads the same facts from a checked
file's summary (:func:`pytest_minerva.formats.verify`): a GGUF's metadata, or a SafeTensors
directory's ``config.json`` and the dtype of its tensors. :func:`check_identity` compares
them and raises one line naming the file, the fact, the expected and the found value, and,
where the found facts match another catalog model, which one the file looks like.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pytest_minerva.errors import FormatError, printable

if TYPE_CHECKING:
    from pytest_minerva.formats.common import ModelSummary
    from pytest_minerva.models.catalog import ArtifactSpec, ModelSpec

#: The identity facts a catalog model may state, in the order a mismatch is looked for.
FACTS = (
    "architecture",
    "block_count",
    "embedding_length",
    "head_count",
    "head_count_kv",
    "vocab_size",
    "context_length",
)
#: GGUF metadata keys of each fact, ``{arch}`` being the file's architecture.
_GGUF_KEYS = {
    "block_count": "{arch}.block_count",
    "embedding_length": "{arch}.embedding_length",
    "head_count": "{arch}.attention.head_count",
    "head_count_kv": "{arch}.attention.head_count_kv",
    "vocab_size": "{arch}.vocab_size",
    "context_length": "{arch}.context_length",
}
#: config.json keys of each fact (Hugging Face names); a multimodal config nests them in text_config.
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "head_count": "num_attention_heads",
    "head_count_kv": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "context_length": "max_position_embeddings",
}


#: Hugging Face ``model_type`` names for the GGUF architecture the catalog states (llama.cpp's
#: converters write Mistral 7B as ``llama``; a text-only Gemma 3 config says ``gemma3_text``).
ARCHITECTURE_ALIASES = {"gemma3_text": "gemma3", "mistral": "llama"}


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def found_facts(summary: ModelSummary) -> dict[str, Any]:
    """The identity facts a checked file states about itself (a fact it does not state is left out)."""
    found: dict[str, Any] = {}
    if summary.architecture:
        found["architecture"] = summary.architecture
    metadata = summary.metadata or {}
    if summary.format == "gguf":
        arch = summary.architecture or ""
        for fact, key in _GGUF_KEYS.items():
            value = _whole(metadata.get(key.format(arch=arch)))
            if value is not None:
                found[fact] = value
        if "vocab_size" not in found:
            tokens = metadata.get("tokenizer.ggml.tokens")
            if isinstance(tokens, list | tuple):
                found["vocab_size"] = len(tokens)
    else:
        nested = metadata.get("text_config")
        text: dict[str, Any] = nested if isinstance(nested, dict) else {}
        for fact, key in _CONFIG_KEYS.items():
            value = _whole(metadata.get(key, text.get(key)))
            if value is not None:
                found[fact] = value
        if "head_count_kv" not in found and "head_count" in found:
            found["head_count_kv"] = found["head_count"]  # Hugging Face's default: no grouped-query attention
    if summary.file_type:
        found["quant"] = str(summary.file_type)
    return found


def expected_facts(model: ModelSpec, spec: ArtifactSpec) -> dict[str, Any]:
    """What the catalog says a file of ``model``'s ``spec`` artifact is."""
    expected: dict[str, Any] = {"architecture": model.architecture}
    expected.update(model.facts)
    if model.context_length and "context_length" not in expected:
        expected["context_length"] = model.context_length
    if spec.quant:
        expected["quant"] = spec.quant
    return expected


def _same(fact: str, expected: Any, found: Any) -> bool:
    if fact == "architecture":
        return ARCHITECTURE_ALIASES.get(str(found), str(found)).lower() == str(expected).lower()
    if fact == "quant":
        return str(expected).lower() == str(found).lower()
    return expected == found


def mismatches(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(fact, expected, found)`` for every stated fact the file states otherwise."""
    return [
        (fact, expected[fact], found[fact])
        for fact in (*FACTS, "quant")
        if fact in expected and fact in found and not _same(fact, expected[fact], found[fact])
    ]


def looks_like(found: Mapping[str, Any], models: Iterable[ModelSpec], besides: str) -> str | None:
    """The catalog model (other than ``besides``) whose stated facts the file matches, if exactly one does."""
    matches = []
    for model in models:
        if model.name == besides or not model.facts:
            continue
        stated = {"architecture": model.architecture, **model.facts}
        if all(fact in found and _same(fact, value, found[fact]) for fact, value in stated.items()):
            matches.append(model.name)
    return matches[0] if len(matches) == 1 else None


def check_identity(
    path: Any, model: ModelSpec, spec: ArtifactSpec, summary: ModelSummary, catalog: Iterable[ModelSpec] = ()
) -> None:
    """Raise :class:`FormatError` when the file's header contradicts what the catalog says it is.

    One line: ``PATH: is not MODEL's FORMAT QUANT: FACT is FOUND, the catalog expects EXPECTED``,
    and ``(it looks like OTHER)`` where the file matches another catalog model.
    """
    found = found_facts(summary)
    wrong = mismatches(expected_facts(model, spec), found)
    if not wrong:
        return
    fact, expected, got = wrong[0]
    what = f"{model.name}'s {spec.format}" + (f" {spec.quant}" if spec.quant else "")
    more = f" (and {', '.join(name for name, _, _ in wrong[1:])} differ too)" if len(wrong) > 1 else ""
    other = looks_like(found, catalog, model.name)
    like = f"; it looks like {other}" if other else ""
    raise FormatError(
        path,
        f"is not {what}: {fact} is {printable(str(got))}, the catalog expects {printable(str(expected))}{more}{like}",
    )


def describe_facts(facts: Mapping[str, Any]) -> str:
    """The facts in one line, as a person reads a model card: ``llama, 30 blocks, embedding 576,
    9 heads (3 KV), vocab 49152, context 8192, Q4_1``; what the file does not state is left out."""
    parts = []
    if "architecture" in facts:
        parts.append(printable(str(facts["architecture"])))
    if "block_count" in facts:
        parts.append(f"{facts['block_count']} blocks")
    if "embedding_length" in facts:
        parts.append(f"embedding {facts['embedding_length']}")
    if "head_count" in facts:
        kv = f" ({facts['head_count_kv']} KV)" if "head_count_kv" in facts else ""
        parts.append(f"{facts['head_count']} heads{kv}")
    if "vocab_size" in facts:
        parts.append(f"vocab {facts['vocab_size']}")
    if "context_length" in facts:
        parts.append(f"context {facts['context_length']}")
    if "quant" in facts:
        parts.append(printable(str(facts["quant"])))
    return ", ".join(parts) or "no identity facts stated"


__all__ = [
    "FACTS",
    "check_identity",
    "describe_facts",
    "expected_facts",
    "found_facts",
    "looks_like",
    "mismatches",
]
