"""A GGUF file's header: its metadata and tensor shapes, read without the tensor data.

Both the GGUF converter (:mod:`~pytest_minerva.derive.gguf_to_safetensors`) and the tokenizer
rules (:mod:`~pytest_minerva.derive.gguf_tokenizer`) read a GGUF through this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Arrays longer than this (token lists, merges) are kept as lengths only.
_SHORT_ARRAY = 64


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
