"""SafeTensors: check single files and Hugging Face / MLX model directories.

A file is an 8-byte little-endian header length, a JSON header mapping tensor names to
``dtype``, ``shape`` and ``data_offsets``, then the data region. The rules are those the
``safetensors`` library enforces when loading: known dtypes, byte ranges that match
the shapes, and ranges that tile the data region exactly (no overlap, gap or tail).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_minerva.errors import FormatError, printable
from pytest_minerva.formats.common import (
    ByteSource,
    FileSource,
    ModelSummary,
    TensorInfo,
    architecture_name,
    count_nonfinite,
    is_regular_file,
    mlx_quantization,
    nonfinite_problem,
    parse_json,
    quote,
    read_json_file,
)

#: The safetensors format refuses headers larger than this.
MAX_HEADER_BYTES = 100_000_000
INDEX_NAME = "model.safetensors.index.json"
#: Most tensors accepted in one file: real checkpoints hold at most a few thousand per file.
MAX_TENSORS = 1 << 16
#: Most JSON values and keys a header may hold. A tensor entry has about a dozen (its name, an
#: object, dtype, shape and its dimensions, two offsets), so MAX_TENSORS entries fit with room to spare.
MAX_HEADER_ITEMS = 16 * MAX_TENSORS
# A JSON string, or an unterminated one up to the end; possessive, so no input makes it backtrack.
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)

#: dtype -> bits per element, as the safetensors library defines them.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
_FLOAT_KINDS = {"F16": "f16", "BF16": "bf16", "F32": "f32", "F64": "f64"}
_UINT64_LIMIT = 1 << 64


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _UINT64_LIMIT


def _tensor_entry(name: str, entry: Any, data_start: int, data_length: int, fail: Any) -> TensorInfo:
    label = f"tensor {quote(name)}"
    if not isinstance(entry, dict):
        raise fail(f"{label}: entry is a JSON {_json_type(entry)}, not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str):
        raise fail(f"{label}: dtype is missing or not a string")
    if dtype not in DTYPE_BITS:
        raise fail(f"{label}: unknown dtype {quote(dtype)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise fail(f"{label}: shape must be a list of non-negative integers, got {quote(str(shape))}")
    elements = 1
    for dim in shape:
        elements *= dim
        if elements >= _UINT64_LIMIT:
            raise fail(f"{label}: shape {quote(str(shape))} has more elements than a 64-bit count holds")
    offsets = entry.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise fail(f"{label}: data_offsets must be [begin, end], two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise fail(f"{label}: data_offsets [{begin}, {end}] end before they begin")
    bits = elements * DTYPE_BITS[dtype]
    if bits % 8:
        raise fail(f"{label}: {elements} {dtype} elements do not fill a whole number of bytes")
    if end - begin != bits // 8:
        raise fail(
            f"{label}: {dtype} shape {shape} needs {bits // 8} bytes, but data_offsets [{begin}, {end}] "
            f"hold {end - begin}"
        )
    if end > data_length:
        raise fail(
            f"{label}: data_offsets [{begin}, {end}] end past the data region ({data_length} bytes after the header)"
        )
    return TensorInfo(name, tuple(shape), dtype, data_start + begin, end - begin)


def _check_tiling(tensors: list[TensorInfo], data_start: int, data_length: int, fail: Any) -> None:
    covered = data_start
    widest: TensorInfo | None = None
    for tensor in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        if tensor.nbytes == 0:
            continue
        if widest is not None and tensor.offset < covered:
            raise fail(
                f"tensors {quote(widest.name)} (data bytes {widest.offset - data_start}.."
                f"{widest.offset + widest.nbytes - data_start}) and {quote(tensor.name)} (data bytes "
                f"{tensor.offset - data_start}..{tensor.offset + tensor.nbytes - data_start}) overlap"
            )
        if tensor.offset > covered:
            raise fail(
                f"data bytes {covered - data_start}..{tensor.offset - data_start} belong to no tensor "
                "(the safetensors library refuses gaps)"
            )
        covered = tensor.offset + tensor.nbytes
        widest = tensor
    if covered != data_start + data_length:
        raise fail(
            f"{data_start + data_length - covered} bytes after the last tensor belong to no tensor "
            "(the safetensors library refuses them)"
        )


def _json_items(raw: bytes) -> int:
    """An upper bound on the values and keys ``json.loads(raw)`` would build: each follows a
    ``{``, ``[``, ``,`` or ``:``, or is the document itself."""
    return 1 + sum(raw.count(sep) for sep in (b"{", b"[", b",", b":"))


def _bounded_header(raw: bytes, fail: Any) -> bytes:
    """``raw`` if parsing it builds at most :data:`MAX_HEADER_ITEMS` Python objects, else ``fail``.

    ``json.loads`` spends about 200 bytes on each tiny item (``"t1":{}``), so a 95 MB header
    would take gigabytes before the tensor count could be checked. Counting separators is
    free; only when that count is over the limit are the strings (whose commas and colons
    do not count) looked at, first by their number, then by removing them.
    """
    if _json_items(raw) <= MAX_HEADER_ITEMS:
        return raw
    # Every string is a value or a key; each unescaped quote opens or closes one.
    strings = (raw.count(b'"') - raw.count(b"\\")) // 2
    if strings <= MAX_HEADER_ITEMS and _json_items(_JSON_STRING.sub(b'""', raw)) <= MAX_HEADER_ITEMS:
        return raw
    raise fail(
        f"the header holds more than {MAX_HEADER_ITEMS} JSON values and keys, more than {MAX_TENSORS} tensors "
        "(the most allowed) can need"
    )


def read_tensors(source: ByteSource, path: str | Path) -> tuple[dict[str, str], list[TensorInfo]]:
    """Parse and check the header; return ``__metadata__`` and the tensors in header order."""

    def fail(problem: str) -> FormatError:
        return FormatError(path, problem)

    size = source.size
    if size < 8:
        raise fail(f"truncated: the file has {size} bytes, less than the 8-byte header length")
    header_length = int.from_bytes(source.read(0, 8), "little")
    if header_length > MAX_HEADER_BYTES:
        # Not shown: the 8 bytes of a file that is no SafeTensors file are its content, not a length.
        raise fail(
            f"not a SafeTensors file: its first 8 bytes, read as the header length, exceed the "
            f"{MAX_HEADER_BYTES}-byte limit of the format"
        )
    if header_length > size - 8:
        raise fail(f"header length {header_length} is larger than the file ({size} bytes, {size - 8} after it)")
    header = parse_json(_bounded_header(source.read(8, header_length), fail), path, "the header")
    if not isinstance(header, dict):
        raise fail(f"the header is a JSON {_json_type(header)}, not an object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise fail(f"__metadata__ is a JSON {_json_type(metadata)}, not an object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise fail(f"__metadata__[{quote(key)}] is a JSON {_json_type(value)}; values must be strings")
    if len(header) > MAX_TENSORS:
        raise fail(f"{len(header)} tensors is more than the {MAX_TENSORS} allowed")
    data_start = 8 + header_length
    data_length = size - data_start
    tensors = [_tensor_entry(name, entry, data_start, data_length, fail) for name, entry in header.items()]
    _check_tiling(tensors, data_start, data_length, fail)
    return metadata, tensors


def _scan(source: ByteSource, tensors: list[TensorInfo]) -> list[tuple[TensorInfo, int, int, str]]:
    found = []
    for tensor in sorted(tensors, key=lambda t: t.offset):
        kind = _FLOAT_KINDS.get(tensor.dtype)
        if kind is None:
            continue
        width = DTYPE_BITS[tensor.dtype] // 8
        nan, inf = count_nonfinite(source, tensor.offset, tensor.nbytes, width, ((0, kind),))
        if nan or inf:
            found.append((tensor, nan, inf, ""))
    return found


def _dominant_dtype(tensors: list[TensorInfo]) -> str | None:
    weights: Counter[str] = Counter()
    for tensor in tensors:
        weights[tensor.dtype] += tensor.n_elements
    if not weights:
        return None
    return max(sorted(weights), key=lambda dtype: weights[dtype]).lower()


def check(source: ByteSource, path: str | Path, *, deep: bool = False) -> ModelSummary:
    """Check one SafeTensors file read from ``source``; ``path`` is used in messages and the summary."""
    metadata, tensors = read_tensors(source, path)
    if deep:
        found = _scan(source, tensors)
        if found:
            raise FormatError(path, nonfinite_problem(found))
    return ModelSummary(
        path=Path(path),
        format="safetensors",
        architecture=None,
        parameter_count=sum(t.n_elements for t in tensors),
        tensor_count=len(tensors),
        quant_mix=dict(Counter(t.dtype for t in tensors)),
        file_type=_dominant_dtype(tensors),
        context_length=None,
        size_bytes=source.size,
        metadata=dict(metadata),
        tensors=tensors,
    )


def _plain_file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def _weight_files(root: Path, shown: str) -> tuple[list[str], dict[str, str] | None]:
    index_path = root / INDEX_NAME
    if not is_regular_file(index_path):
        names = sorted(p.name for p in root.glob("*.safetensors") if is_regular_file(p))
        if not names:
            raise FormatError(shown, "no *.safetensors weight files")
        return names, None
    index = read_json_file(index_path, shown, INDEX_NAME)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(shown, f"{INDEX_NAME} has no weight_map object")
    for tensor, file_name in weight_map.items():
        if not _plain_file_name(file_name):
            raise FormatError(
                shown, f"{INDEX_NAME} maps tensor {quote(tensor)} to {quote(str(file_name))}, not a file name"
            )
    names = sorted(set(weight_map.values()))
    for name in names:
        if not is_regular_file(root / name):
            raise FormatError(shown, f"{INDEX_NAME} names {quote(name)}, which is not in the directory")
    return names, weight_map


def _parameter_count(tensors: list[TensorInfo], quantization: dict[str, int] | None) -> int:
    """Elements of all tensors; MLX-quantized weights count unpacked and their scales/biases not at all."""
    if quantization is None:
        return sum(t.n_elements for t in tensors)
    names = {t.name for t in tensors}
    quantized = {
        t.name[: -len(".weight")]
        for t in tensors
        if t.name.endswith(".weight") and t.dtype == "U32" and t.name[: -len(".weight")] + ".scales" in names
    }
    total = 0
    for tensor in tensors:
        stem, _, leaf = tensor.name.rpartition(".")
        if stem in quantized and leaf in ("scales", "biases"):
            continue
        packed = stem in quantized and leaf == "weight"
        total += tensor.n_elements * 32 // quantization["bits"] if packed else tensor.n_elements
    return total


def check_directory(root: Path, shown: str, *, deep: bool = False) -> ModelSummary:
    """Check a Hugging Face / MLX model directory: config.json, every weight file, and the index."""
    config_path = root / "config.json"
    if not is_regular_file(config_path):
        raise FormatError(shown, "no config.json (a model directory needs config.json and *.safetensors)")
    config = read_json_file(config_path, shown, "config.json")
    if not isinstance(config, dict):
        raise FormatError(shown, f"config.json is a JSON {_json_type(config)}, not an object")
    names, weight_map = _weight_files(root, shown)
    tensors: list[TensorInfo] = []
    where: dict[str, str] = {}
    size = 0
    found: list[tuple[TensorInfo, int, int, str]] = []
    for name in names:
        try:
            with FileSource(root / name, name) as source:
                _, declared = read_tensors(source, name)
                file_tensors = [replace(t, file=name) for t in declared]
                if deep:
                    found += _scan(source, file_tensors)
                size += source.size
        except FormatError as exc:
            raise FormatError(shown, f"{printable(name)}: {exc.problem}") from None
        for tensor in file_tensors:
            if tensor.name in where:
                first = printable(where[tensor.name])
                raise FormatError(shown, f"tensor {quote(tensor.name)} is in {first} and {printable(name)}")
            where[tensor.name] = name
        tensors += file_tensors
    if weight_map is not None:
        for tensor_name, file_name in weight_map.items():
            if where.get(tensor_name) != file_name:
                raise FormatError(
                    shown, f"{INDEX_NAME} puts tensor {quote(tensor_name)} in {printable(file_name)}, which lacks it"
                )
        if len(where) != len(weight_map):
            missing = next(n for n in where if n not in weight_map)
            raise FormatError(shown, f"tensor {quote(missing)} in {printable(where[missing])} is not in {INDEX_NAME}")
    if found:
        raise FormatError(shown, nonfinite_problem(found))
    quantization = mlx_quantization(config)
    architecture = config.get("model_type")
    context = config.get("max_position_embeddings")
    text_config = config.get("text_config")
    if context is None and isinstance(text_config, dict):
        context = text_config.get("max_position_embeddings")
    return ModelSummary(
        path=root,
        format="safetensors",
        architecture=architecture_name(architecture),
        parameter_count=_parameter_count(tensors, quantization),
        tensor_count=len(tensors),
        quant_mix=dict(Counter(t.dtype for t in tensors)),
        file_type=f"q{quantization['bits']}" if quantization else _dominant_dtype(tensors),
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None,
        size_bytes=size,
        metadata=config,
        tensors=tensors,
    )
