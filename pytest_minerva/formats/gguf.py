"""GGUF: check the header, key/value table and tensor table of a GGUF file.

Written for hostile input: every length and count is compared with the bytes left in
the file before it is used; what is kept in memory (tensor table, then metadata) is
capped by :data:`~pytest_minerva.formats.METADATA_BUDGET`; the strings walked are capped
by :data:`MAX_METADATA_STRINGS`; reads go through a
:class:`~pytest_minerva.formats.ByteSource` one window at a time. The layout follows
the GGUF specification (versions 2 and 3, little-endian). Tensor data may have gaps or
be stored out of order, as the specification allows; llama.cpp's loader is stricter.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

from pytest_minerva.errors import FormatError
from pytest_minerva.formats.common import (
    METADATA_BUDGET,
    WINDOW,
    ByteSource,
    ModelSummary,
    OmittedValue,
    TensorInfo,
    architecture_name,
    count_nonfinite,
    nonfinite_problem,
    quote,
)

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
#: The GGUF specification limits tensor names to 64 bytes.
MAX_NAME_BYTES = 64
MAX_KEY_BYTES = 1 << 16
MAX_KV_PAIRS = 1 << 16
#: Walking strings costs time per string; the largest tokenizers hold ~800k (tokens plus merges).
MAX_METADATA_STRINGS = 1 << 21
#: Longer strings are checked but not kept in metadata.
MAX_KEPT_STRING_BYTES = 1 << 20
#: Longer string arrays are checked but not kept (see :class:`~pytest_minerva.formats.OmittedValue`).
MAX_KEPT_STRINGS = 1 << 18
_HEADER_BYTES = 24
# Smallest possible encodings: used to call a count "huge" before reading anything.
_MIN_KV_BYTES = 8 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8
_INT64_MAX = (1 << 63) - 1

#: ggml type id -> (name, elements per block, bytes per block).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}

#: llama.cpp ``general.file_type`` values (``LLAMA_FTYPE_MOSTLY_*``) -> name.
FILE_TYPES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "Q4_1_SOME_F16", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
    24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS",
    31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip

#: Where the float fields sit in one block, for the types whose scales are cheap to read.
SCALE_FIELDS: dict[str, tuple[tuple[int, str], ...]] = {
    "F32": ((0, "f32"),),
    "F16": ((0, "f16"),),
    "BF16": ((0, "bf16"),),
    "F64": ((0, "f64"),),
    "Q4_0": ((0, "f16"),),
    "Q4_1": ((0, "f16"), (2, "f16")),
    "Q5_0": ((0, "f16"),),
    "Q5_1": ((0, "f16"), (2, "f16")),
    "Q8_0": ((0, "f16"),),
    "Q2_K": ((80, "f16"), (82, "f16")),
    "Q3_K": ((108, "f16"),),
    "Q4_K": ((0, "f16"), (2, "f16")),
    "Q5_K": ((0, "f16"), (2, "f16")),
    "Q6_K": ((208, "f16"),),
    "Q8_K": ((0, "f32"),),
    "IQ2_XXS": ((0, "f16"),),
    "IQ2_XS": ((0, "f16"),),
    "IQ2_S": ((0, "f16"),),
    "IQ3_XXS": ((0, "f16"),),
    "IQ3_S": ((0, "f16"),),
    "IQ1_S": ((0, "f16"),),
    "IQ4_NL": ((0, "f16"),),
    "IQ4_XS": ((0, "f16"),),
    "TQ1_0": ((52, "f16"),),
    "TQ2_0": ((64, "f16"),),
}

_BLOCK_BYTES = {name: size for name, _, size in GGML_TYPES.values()}

_STRING, _ARRAY = 8, 9
#: GGUF value type id -> (name, struct) for fixed-size values.
_SCALARS: dict[int, tuple[str, struct.Struct]] = {
    0: ("uint8", struct.Struct("<B")),
    1: ("int8", struct.Struct("<b")),
    2: ("uint16", struct.Struct("<H")),
    3: ("int16", struct.Struct("<h")),
    4: ("uint32", struct.Struct("<I")),
    5: ("int32", struct.Struct("<i")),
    6: ("float32", struct.Struct("<f")),
    7: ("bool", struct.Struct("<?")),
    10: ("uint64", struct.Struct("<Q")),
    11: ("int64", struct.Struct("<q")),
    12: ("float64", struct.Struct("<d")),
}
_U32 = _SCALARS[4][1]
_U64 = _SCALARS[10][1]
# Upper bounds of the Python memory per kept item (object, list slot, transient tuple slot).
_KEPT_NUMBER_BYTES = 48
_KEPT_STRING_BYTES = 88
_KEPT_TENSOR_BYTES = 512
#: Shape, ggml type and data offset of a tensor info, by dimension count.
_TENSOR_TAILS = {n: struct.Struct(f"<{n}QIQ") for n in range(1, MAX_DIMS + 1)}


def type_name(value_type: int) -> str:
    if value_type in _SCALARS:
        return _SCALARS[value_type][0]
    return {_STRING: "string", _ARRAY: "array"}.get(value_type, f"type {value_type}")


class _Cursor:
    """Sequential reads over a :class:`ByteSource`, one window in memory at a time."""

    __slots__ = ("base", "budget", "buf", "path", "pos", "size", "source", "strings_left")

    def __init__(self, source: ByteSource, path: str) -> None:
        self.source = source
        self.path = path
        self.size = source.size
        self.pos = 0
        self.buf = b""
        self.base = 0
        self.budget = METADATA_BUDGET
        self.strings_left = MAX_METADATA_STRINGS

    def fail(self, problem: str) -> FormatError:
        return FormatError(self.path, problem)

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def need(self, n: int, what: str) -> int:
        """Bring bytes ``[pos, pos + n)`` into the window; return where they start in it."""
        at = self.pos - self.base
        if at + n <= len(self.buf):
            return at
        if n > self.size - self.pos:
            raise self.truncated(what, n)
        self.buf = self.source.read(self.pos, min(max(n, WINDOW), self.size - self.pos))
        self.base = self.pos
        return 0

    def truncated(self, what: str, n: int) -> FormatError:
        return self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes, but the file ends at byte {self.size}")

    def scalar(self, codec: struct.Struct, what: str) -> Any:
        at = self.need(codec.size, what)
        self.pos += codec.size
        return codec.unpack_from(self.buf, at)[0]

    def take(self, n: int, what: str) -> bytes:
        at = self.need(n, what)
        self.pos += n
        return self.buf[at : at + n]

    def refuse_huge(self, subject: str, needs: str, need: int, available: int | None = None) -> None:
        """Refuse a declared length or count that needs more bytes than the file has left."""
        available = self.remaining if available is None else available
        if need > available:
            raise self.fail(
                f"{subject} is huge: {needs} {need} bytes, only {available} remain (corrupt value or truncated file)"
            )

    def string_length(self, what: str) -> int:
        # Messages are only formatted on failure: this runs for every key and tensor name.
        if self.size - self.pos < 8:
            raise self.truncated(f"the length of {what}", 8)
        length: int = self.scalar(_U64, what)
        if length > self.size - self.pos:
            self.refuse_huge(f"{what}: string length {length}", "it needs", length)
        return length

    def name(self, what: str, limit: int) -> str:
        """A key or tensor name: bounded length, valid UTF-8."""
        length = self.string_length(what)
        if length > limit:
            raise self.fail(f"{what} is {length} bytes long, more than the {limit} allowed")
        raw = self.take(length, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8 (byte {exc.start}: {raw[:40]!r})") from None

    def string_value(self, what: str) -> str | OmittedValue:
        length = self.string_length(what)
        if length > MAX_KEPT_STRING_BYTES or length + _KEPT_STRING_BYTES > self.budget:
            self.pos += length
            return OmittedValue("string", "byte", length)
        self.budget -= length + _KEPT_STRING_BYTES
        return self.take(length, what).decode("utf-8", "replace")


@dataclass
class GGUFLayout:
    """What the header and tables of a GGUF file declare (before any tensor data is read)."""

    version: int
    alignment: int
    data_start: int
    metadata: dict[str, Any]
    value_types: dict[str, int]
    tensors: list[TensorInfo]


def _read_array(cur: _Cursor, key: str) -> list[Any] | OmittedValue:
    what = f"the array of key {quote(key)}"
    element_type: int = cur.scalar(_U32, f"the element type of {what}")
    count: int = cur.scalar(_U64, f"the element count of {what}")
    if element_type == _ARRAY:
        raise cur.fail(f"key {quote(key)}: arrays of arrays are not supported (llama.cpp refuses them)")
    if element_type == _STRING:
        return _read_string_array(cur, key, count)
    if element_type not in _SCALARS:
        raise cur.fail(f"key {quote(key)}: unknown array element type {element_type}")
    kind, codec = _SCALARS[element_type]
    nbytes = count * codec.size
    cur.refuse_huge(f"key {quote(key)}: array count {count}", f"{count} {kind} values need", nbytes)
    cost = count * _KEPT_NUMBER_BYTES
    if cost > cur.budget:
        cur.pos += nbytes
        return OmittedValue("array", kind, count)
    cur.budget -= cost
    values: list[Any] = []
    per_read = WINDOW // codec.size
    left = count
    while left:
        step = min(per_read, left)
        at = cur.need(step * codec.size, what)
        _extend_numbers(values, f"<{step}{codec.format[-1]}", cur.buf, at)
        cur.pos += step * codec.size
        left -= step
    return values


def _extend_numbers(values: list[Any], layout: str, buf: bytes, at: int) -> None:
    # A function of its own: tracemalloc attributes each of the many ints to this short code object.
    values.extend(struct.unpack_from(layout, buf, at))


def _decode_strings(buf: bytes, at: int, todo: int, out: list[str]) -> int:
    """Append up to ``todo`` strings that lie wholly inside ``buf`` from ``at``; return where it stopped."""
    # Kept tiny and allocation-light on purpose: this loop runs once per token, and under tracemalloc
    # each int allocation costs a line-table walk of the allocating function.
    unpack = _U64.unpack_from
    size = len(buf)
    last_length_at = size - 8
    append = out.append
    for _ in repeat(None, todo):
        if at > last_length_at:
            break
        length = unpack(buf, at)[0]
        at += 8
        end = at + length
        if end > size:
            return at - 8
        append(buf[at:end].decode("utf-8", "replace"))
        at = end
    return at


def _skip_strings(buf: bytes, at: int, todo: int, file_end: int) -> tuple[int, int]:
    """Skip up to ``todo`` strings whose lengths lie inside ``buf`` and that end by ``file_end``;
    return how many were skipped and where it stopped."""
    unpack = _U64.unpack_from
    last_length_at = len(buf) - 8
    done = 0
    while done < todo:
        # Counting in batches of 256 keeps the per-string counter a cached small int.
        batch = min(todo - done, 256)
        skipped = 0
        while skipped < batch:
            if at > last_length_at:
                return done + skipped, at
            step = 8 + unpack(buf, at)[0]
            at += step
            if at > file_end:
                return done + skipped, at - step
            skipped += 1
        done += batch
    return done, at


def _read_string_array(cur: _Cursor, key: str, count: int) -> list[str] | OmittedValue:
    cur.refuse_huge(f"key {quote(key)}: array count {count}", f"{count} strings need at least", count * 8)
    if count > cur.strings_left:
        raise cur.fail(
            f"key {quote(key)}: {count} more strings take the key/value table past the {MAX_METADATA_STRINGS} allowed"
        )
    cur.strings_left -= count
    keep = count <= MAX_KEPT_STRINGS and count * _KEPT_STRING_BYTES <= cur.budget
    items: list[str] | None = [] if keep else None
    spent = index = 0
    while index < count:
        what = f"string #{index} in the array of key {quote(key)}"
        at = cur.need(8, f"the length of {what}")
        if items is not None:
            before = len(items)
            end = _decode_strings(cur.buf, at, count - index, items)
            done = len(items) - before
            spent += end - at + (_KEPT_STRING_BYTES - 8) * done
        else:
            done, end = _skip_strings(cur.buf, at, count - index, cur.size - cur.base)
        index += done
        cur.pos = cur.base + end
        if done == 0:
            # The next string crosses the window's end, is longer than a window, or runs past the file.
            length = cur.string_length(what)
            if items is not None and length <= MAX_KEPT_STRING_BYTES:
                items.append(cur.take(length, what).decode("utf-8", "replace"))
                spent += length + _KEPT_STRING_BYTES
            else:
                items = None
                cur.pos += length
            index += 1
        if spent > cur.budget:
            items = None
    if items is None:
        return OmittedValue("array", "string", count)
    cur.budget -= spent
    return items


def _read_value(cur: _Cursor, value_type: int, key: str) -> Any:
    if value_type == _STRING:
        return cur.string_value(f"the value of key {quote(key)}")
    if value_type == _ARRAY:
        return _read_array(cur, key)
    if value_type in _SCALARS:
        kind, codec = _SCALARS[value_type]
        return cur.scalar(codec, f"the {kind} value of key {quote(key)}")
    raise cur.fail(f"key {quote(key)}: unknown value type {value_type}")


def _refuse_huge_tensor_count(cur: _Cursor, tensor_count: int, available: int) -> None:
    needs = f"{tensor_count} tensor infos need at least"
    cur.refuse_huge(f"tensor count {tensor_count}", needs, tensor_count * _MIN_TENSOR_INFO_BYTES, available)


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    if cur.size < len(MAGIC):
        raise cur.fail(f"truncated: the file has {cur.size} bytes, a GGUF header needs {_HEADER_BYTES}")
    magic = cur.take(len(MAGIC), "the magic")
    if magic != MAGIC:
        raise cur.fail(f"wrong magic {magic!r}: a GGUF file starts with b'GGUF'")
    if cur.size < _HEADER_BYTES:
        raise cur.fail(f"truncated: the file has {cur.size} bytes, a GGUF header needs {_HEADER_BYTES}")
    version: int = cur.scalar(_U32, "the version")
    if version not in VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        if swapped in VERSIONS:
            raise cur.fail(f"version field reads {version}: a big-endian GGUF, which is not supported")
        raise cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
    tensor_count: int = cur.scalar(_U64, "the tensor count")
    kv_count: int = cur.scalar(_U64, "the key/value count")
    cur.refuse_huge(f"key/value count {kv_count}", f"{kv_count} pairs need at least", kv_count * _MIN_KV_BYTES)
    if kv_count > MAX_KV_PAIRS:
        raise cur.fail(f"key/value count {kv_count} is more than the {MAX_KV_PAIRS} allowed")
    _refuse_huge_tensor_count(cur, tensor_count, cur.remaining - kv_count * _MIN_KV_BYTES)
    if tensor_count * _KEPT_TENSOR_BYTES > cur.budget:
        raise cur.fail(
            f"tensor count {tensor_count} is more than the {cur.budget // _KEPT_TENSOR_BYTES} "
            f"this checker holds in {METADATA_BUDGET >> 20} MiB"
        )
    # The tensor table's memory is reserved first: metadata arrays that do not fit are summarized.
    cur.budget -= tensor_count * _KEPT_TENSOR_BYTES
    return version, tensor_count, kv_count


def _read_alignment(cur: _Cursor, metadata: dict[str, Any], value_types: dict[str, int]) -> int:
    if "general.alignment" not in metadata:
        return DEFAULT_ALIGNMENT
    if value_types["general.alignment"] != 4:
        kind = type_name(value_types["general.alignment"])
        raise cur.fail(f"general.alignment must be a uint32, it is a {kind}")
    alignment: int = metadata["general.alignment"]
    if alignment <= 0 or alignment & (alignment - 1):
        raise cur.fail(f"general.alignment {alignment} is not a power of two")
    return alignment


def _truncated_tensor(cur: _Cursor, name: str, fields: tuple[tuple[str, int], ...]) -> FormatError:
    """Name the field of a tensor info that the end of the file cuts."""
    at = cur.pos
    for what, size in fields:
        if at + size > cur.size:
            return cur.fail(
                f"truncated: the {what} of tensor {quote(name)} at byte {at} needs {size} bytes, "
                f"but the file ends at byte {cur.size}"
            )
        at += size
    return cur.fail(f"truncated: the file ends at byte {cur.size} inside tensor {quote(name)}")


_Declared = tuple[str, tuple[int, ...], str, int, int]


def _read_tensor_info(cur: _Cursor, index: int) -> _Declared:
    """One tensor info as (name, shape, dtype, offset relative to the data section, bytes)."""
    name = cur.name(f"the name of tensor #{index}", MAX_NAME_BYTES)
    if cur.remaining < 4:
        raise _truncated_tensor(cur, name, (("dimension count", 4),))
    n_dims: int = cur.scalar(_U32, "")
    if not 1 <= n_dims <= MAX_DIMS:
        raise cur.fail(f"tensor {quote(name)}: n_dims is {n_dims}, must be 1 to {MAX_DIMS}")
    tail = _TENSOR_TAILS[n_dims]
    if cur.remaining < tail.size:
        raise _truncated_tensor(cur, name, (("shape", 8 * n_dims), ("ggml type", 4), ("data offset", 8)))
    at = cur.need(tail.size, "")
    *shape, ggml_type, offset = tail.unpack_from(cur.buf, at)
    cur.pos += tail.size
    elements = 1
    for axis, dim in enumerate(shape):
        if dim == 0:
            raise cur.fail(f"tensor {quote(name)}: dimension {axis} is 0, must be > 0")
        elements *= dim
        if elements > _INT64_MAX:
            raise cur.fail(f"tensor {quote(name)}: shape {shape} has more elements than int64 can count")
    if ggml_type not in GGML_TYPES:
        raise cur.fail(f"tensor {quote(name)}: unknown ggml type {ggml_type}")
    type_label, block, block_bytes = GGML_TYPES[ggml_type]
    if shape[0] % block:
        raise cur.fail(
            f"tensor {quote(name)}: rows of {shape[0]} {type_label} elements are not a multiple of "
            f"its block size {block}"
        )
    return name, tuple(shape), type_label, offset, elements // block * block_bytes


def _read_tensor_table(cur: _Cursor, count: int) -> list[_Declared]:
    declared: list[_Declared] = []
    seen: dict[str, int] = {}
    for index in range(count):
        info = _read_tensor_info(cur, index)
        name = info[0]
        if name in seen:
            raise cur.fail(f"duplicate tensor name {quote(name)} (tensors #{seen[name]} and #{index})")
        seen[name] = index
        declared.append(info)
    return declared


def read_layout(source: ByteSource, path: str | Path) -> GGUFLayout:
    """Parse and check everything before the tensor data; raise FormatError on the first problem."""
    cur = _Cursor(source, str(path))
    version, tensor_count, kv_count = _read_header(cur)
    metadata: dict[str, Any] = {}
    value_types: dict[str, int] = {}
    key_index: dict[str, int] = {}
    for index in range(kv_count):
        key = cur.name(f"the key of key/value pair #{index}", MAX_KEY_BYTES)
        if key in key_index:
            raise cur.fail(f"duplicate key {quote(key)} (key/value pairs #{key_index[key]} and #{index})")
        key_index[key] = index
        cur.budget -= len(key) + _KEPT_STRING_BYTES
        if cur.budget < 0:
            raise cur.fail(f"the keys take more than the {METADATA_BUDGET >> 20} MiB of memory allowed")
        value_type: int = cur.scalar(_U32, f"the value type of key {quote(key)}")
        metadata[key] = _read_value(cur, value_type, key)
        value_types[key] = value_type
    alignment = _read_alignment(cur, metadata, value_types)
    _refuse_huge_tensor_count(cur, tensor_count, cur.remaining)
    declared = _read_tensor_table(cur, tensor_count)
    data_start = -(-cur.pos // alignment) * alignment
    tensors = [_place(cur, data_start, alignment, *info) for info in declared]
    _check_overlaps(cur, tensors)
    return GGUFLayout(version, alignment, data_start, metadata, value_types, tensors)


def _place(
    cur: _Cursor,
    data_start: int,
    alignment: int,
    name: str,
    shape: tuple[int, ...],
    dtype: str,
    offset: int,
    nbytes: int,
) -> TensorInfo:
    """The tensor with its absolute offset, checked to be aligned and inside the file."""
    start = data_start + offset
    if offset % alignment or start + nbytes > cur.size:
        label = f"tensor {quote(name)}"
        if offset % alignment:
            raise cur.fail(f"{label}: data offset {offset} is not a multiple of the alignment {alignment}")
        if start >= cur.size:
            raise cur.fail(
                f"{label}: data offset {offset} (byte {start}) is past the end of the file ({cur.size} bytes)"
            )
        raise cur.fail(f"truncated: {label} needs bytes {start}..{start + nbytes}, but the file ends at {cur.size}")
    return TensorInfo(name, shape, dtype, start, nbytes)


def _check_overlaps(cur: _Cursor, tensors: list[TensorInfo]) -> None:
    widest: TensorInfo | None = None
    for tensor in sorted(tensors, key=lambda t: (t.offset, t.offset + t.nbytes)):
        if widest is not None and tensor.offset < widest.offset + widest.nbytes:
            raise cur.fail(
                f"tensors {quote(widest.name)} (bytes {widest.offset}..{widest.offset + widest.nbytes}) and "
                f"{quote(tensor.name)} (bytes {tensor.offset}..{tensor.offset + tensor.nbytes}) overlap"
            )
        if widest is None or tensor.offset + tensor.nbytes > widest.offset + widest.nbytes:
            widest = tensor


def _file_type(metadata: dict[str, Any], tensors: list[TensorInfo]) -> str | None:
    declared = metadata.get("general.file_type")
    if isinstance(declared, int) and not isinstance(declared, bool) and declared in FILE_TYPES:
        return FILE_TYPES[declared]
    weights: Counter[str] = Counter()
    for tensor in tensors:
        if len(tensor.shape) >= 2:
            weights[tensor.dtype] += tensor.n_elements
    if not weights:
        return None
    return max(sorted(weights), key=lambda dtype: weights[dtype])


def _scan(source: ByteSource, path: str, tensors: list[TensorInfo]) -> None:
    found: list[tuple[TensorInfo, int, int, str]] = []
    for tensor in sorted(tensors, key=lambda t: t.offset):
        fields = SCALE_FIELDS.get(tensor.dtype)
        if fields is None:
            continue
        nan, inf = count_nonfinite(source, tensor.offset, tensor.nbytes, _BLOCK_BYTES[tensor.dtype], fields)
        if nan or inf:
            where = "" if tensor.dtype in ("F32", "F16", "BF16", "F64") else " in its block scales"
            found.append((tensor, nan, inf, where))
    if found:
        raise FormatError(path, nonfinite_problem(found))


def check(source: ByteSource, path: str | Path, *, deep: bool = False) -> ModelSummary:
    """Check one GGUF file read from ``source``; ``path`` is only used in messages and the summary."""
    layout = read_layout(source, path)
    if deep:
        _scan(source, str(path), layout.tensors)
    metadata = layout.metadata
    architecture = metadata.get("general.architecture")
    if layout.value_types.get("general.architecture", _STRING) != _STRING:
        kind = type_name(layout.value_types["general.architecture"])
        raise FormatError(path, f"general.architecture must be a string, it is a {kind}")
    if not isinstance(architecture, str):
        architecture = None
    context = metadata.get(f"{architecture}.context_length") if architecture else None
    return ModelSummary(
        path=Path(path),
        format="gguf",
        architecture=architecture_name(architecture),
        parameter_count=sum(t.n_elements for t in layout.tensors),
        tensor_count=len(layout.tensors),
        quant_mix=dict(Counter(t.dtype for t in layout.tensors)),
        file_type=_file_type(metadata, layout.tensors),
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None,
        size_bytes=source.size,
        metadata=metadata,
        tensors=layout.tensors,
    )
