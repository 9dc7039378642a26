"""What the format checkers share: the byte sources they read through, the summary they
return, bounded JSON reading, pickle refusal and the non-finite scan.

The GGUF and SafeTensors parsers (:mod:`.gguf`, :mod:`.safetensors`) build on this module;
:mod:`pytest_minerva.formats` dispatches a path to one of them.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pytest_minerva.errors import FormatError, os_problem, printable

#: Bytes read per request while parsing a header.
WINDOW = 1 << 20
#: Upper bound on the Python memory a GGUF parse keeps (tensor table first, then metadata;
#: metadata arrays that do not fit are summarized as :class:`OmittedValue`).
METADATA_BUDGET = 64 << 20
#: Largest JSON document (config.json, index) this checker parses.
MAX_JSON_BYTES = 16 << 20


CHECKER_BUG = "internal error in the model checker"
#: Longest architecture name kept from a file (real ones are short identifiers).
MAX_ARCHITECTURE_CHARS = 100

#: File suffixes of PyTorch and other pickled checkpoints, which are never loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def pickle_refusal(name: str | Path) -> str:
    """Why a pickled checkpoint is refused, and what to use instead (one line)."""
    suffix = Path(name).suffix.lower() or "pickle"
    return (
        f"a PyTorch/pickle checkpoint ({suffix}) is refused: loading one unpickles it, which runs whatever "
        "code the file contains; use the model's SafeTensors weights (*.safetensors) or a GGUF file, or convert "
        "it once where you trust it, with torch.load(path, weights_only=True) and safetensors.torch.save_file"
    )


def looks_pickled(head: bytes) -> bool:
    """True for the first bytes of a pickle (protocol 2+) or of torch.save's zip archive."""
    return (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")) or head[:4] == b"PK\x03\x04"


class CheckerBug(FormatError):
    """The checker itself failed on this file: a bug to report, not a verdict on the file."""


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor as the file declares it; ``offset`` is absolute within ``file``."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int
    file: str | None = None

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class OmittedValue:
    """A metadata value too large to keep in memory: an ``array`` of ``count`` ``element``
    values, or a ``string`` of ``count`` bytes."""

    kind: str
    element: str
    count: int

    def __str__(self) -> str:
        if self.kind == "string":
            return f"<string of {self.count} bytes, not kept>"
        return f"<array of {self.count} {self.element} values, not kept>"


@dataclass
class ModelSummary:
    """What :func:`verify` learned about a model file or directory.

    ``quant_mix`` maps a tensor type (``Q4_1``, ``F32``, ``BF16``...) to how many
    tensors have it. ``file_type`` is the llama.cpp file type name for GGUF
    (``Q4_K_M``) and the dominant dtype in lower case for SafeTensors (``bf16``).
    ``metadata`` is the GGUF key/value table, the SafeTensors ``__metadata__`` map, or
    a directory's parsed ``config.json``.
    """

    path: Path
    format: str
    architecture: str | None
    parameter_count: int
    tensor_count: int
    quant_mix: dict[str, int]
    file_type: str | None
    context_length: int | None
    size_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list, repr=False)

    def one_line(self) -> str:
        """One line: format, architecture, parameters, tensors, context and size."""
        architecture = printable(self.architecture) if self.architecture else "unknown architecture"
        parts = [f"{self.format} {self.file_type or '?'}", architecture]
        parts.append(f"{_human_count(self.parameter_count)} parameters")
        parts.append(f"{self.tensor_count} tensors")
        if self.context_length is not None:
            parts.append(f"context {self.context_length}")
        parts.append(_human_bytes(self.size_bytes))
        return f"{printable(self.path)}: " + ", ".join(parts)

    def quant_mix_text(self) -> str:
        ordered = sorted(self.quant_mix.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{name} x{count}" for name, count in ordered) or "none"

    def describe(self) -> str:
        """Several aligned lines for ``minerva verify``; what came from the file is escaped, so each stays one line."""
        rows = [
            ("format", f"{self.format} ({self.file_type or 'unknown type'})"),
            ("architecture", printable(self.architecture) if self.architecture else "unknown"),
            ("parameters", f"{self.parameter_count:,} ({_human_count(self.parameter_count)})"),
            ("tensors", str(self.tensor_count)),
            ("quantization", self.quant_mix_text()),
            ("context length", str(self.context_length) if self.context_length is not None else "unknown"),
            ("size", f"{self.size_bytes:,} bytes ({_human_bytes(self.size_bytes)})"),
        ]
        width = max(len(label) for label, _ in rows) + 1
        lines = [f"  {label + ':':<{width}} {value}" for label, value in rows]
        return "\n".join([f"{printable(self.path)}: ok", *lines])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict: no tensor list, and arrays longer than 64 items reduced to a count."""
        return {
            "path": str(self.path),
            "format": self.format,
            "architecture": self.architecture,
            "parameter_count": self.parameter_count,
            "tensor_count": self.tensor_count,
            "quant_mix": dict(self.quant_mix),
            "file_type": self.file_type,
            "context_length": self.context_length,
            "size_bytes": self.size_bytes,
            "metadata": {str(k): _jsonable(v) for k, v in self.metadata.items()},
        }


def _human_count(n: int) -> str:
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _jsonable(value: Any, depth: int = 0) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, OmittedValue):
        return str(value)
    if depth > 32:
        return "<nested too deeply>"
    if isinstance(value, list | tuple):
        if len(value) > 64:
            kinds = sorted({type(v).__name__ for v in value})
            return f"<{len(value)} x {'/'.join(kinds)}>"
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    return repr(value)


def architecture_name(value: Any) -> str | None:
    """The architecture a file declares, as one safe line (escaped, shortened), or None if it is not a string."""
    if not isinstance(value, str) or not value:
        return None
    return printable(value, MAX_ARCHITECTURE_CHARS)


def quote(text: str, limit: int = 80) -> str:
    """``text`` quoted for a one-line message: escapes control characters, shortens long text."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


class ByteSource(Protocol):
    """Random access to the bytes of one file. ``read`` returns exactly ``length`` bytes."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...


def open_regular(path: str | Path, shown: str | Path) -> tuple[int, os.stat_result]:
    """A descriptor open for reading on the regular file ``path``, and its ``fstat``.

    Anything else (FIFO, device, socket, directory) is a :class:`FormatError` before it is
    opened: opening a FIFO blocks until a writer comes, and a device never ends. The open
    is non-blocking and the opened descriptor is checked again, so a file swapped for a
    FIFO between the two steps is refused too. Every ``OSError`` (missing, permission,
    symlink loop, name too long) is a FormatError naming ``shown``.
    """
    try:
        before = os.stat(path)
    except OSError as exc:
        raise FormatError(shown, os_problem(exc)) from None
    if not stat.S_ISREG(before.st_mode):
        raise FormatError(shown, "not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FormatError(shown, f"cannot open: {os_problem(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(shown, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def is_regular_file(path: str | Path) -> bool:
    """True for a regular file (after symlinks); False for anything else and for any path ``stat`` fails on."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_head(path: str | Path, length: int, shown: str | Path | None = None) -> bytes:
    """Up to ``length`` first bytes of the regular file ``path`` (see :func:`open_regular`)."""
    fd, _ = open_regular(path, shown if shown is not None else path)
    try:
        return os.read(fd, length)
    except OSError as exc:
        raise FormatError(shown if shown is not None else path, f"cannot read: {os_problem(exc)}") from None
    finally:
        os.close(fd)


class FileSource:
    """A regular file on disk, read with bounded ``read`` calls (never whole)."""

    def __init__(self, path: Path, shown: str | Path | None = None) -> None:
        self.shown = shown if shown is not None else path
        fd, info = open_regular(path, self.shown)
        try:
            self._file = os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        self.size = info.st_size

    def read(self, offset: int, length: int) -> bytes:
        try:
            self._file.seek(offset)
            data = self._file.read(length)
        except OSError as exc:
            raise FormatError(self.shown, f"cannot read at byte {offset}: {exc.strerror or exc}") from None
        if data is None or len(data) != length:
            raise FormatError(self.shown, f"file shrank while being checked (reading byte {offset})")
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemorySource:
    """Bytes in memory standing for a file of ``size`` bytes; reads past ``prefix`` return zeros.

    Lets a test check a mutated header of a large model without writing the whole file.
    """

    def __init__(self, prefix: bytes, size: int | None = None) -> None:
        self.prefix = bytes(prefix)
        self.size = len(self.prefix) if size is None else max(size, 0)
        if self.size < len(self.prefix):
            self.prefix = self.prefix[: self.size]

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"read of {length} bytes at {offset} outside a source of {self.size} bytes")
        chunk = self.prefix[offset : offset + length]
        if len(chunk) < length:
            chunk += bytes(length - len(chunk))
        return chunk


#: numpy code, exponent mask and mantissa mask of each float encoding: all-ones exponent is NaN/Inf.
_FLOAT_BITS: dict[str, tuple[str, int, int]] = {
    "f16": ("<u2", 0x7C00, 0x03FF),
    "bf16": ("<u2", 0x7F80, 0x007F),
    "f32": ("<u4", 0x7F800000, 0x007FFFFF),
    "f64": ("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
}


def count_nonfinite(
    source: ByteSource, offset: int, nbytes: int, record_size: int, fields: tuple[tuple[int, str], ...]
) -> tuple[int, int]:
    """Count NaN and Inf among float ``fields`` (``(byte offset, 'f16'|'bf16'|'f32'|'f64')``)
    of the fixed-size records at ``offset``, reading at most a few MiB at a time."""
    import numpy as np

    per_chunk = max(1, (4 * WINDOW) // record_size)
    total = nbytes // record_size
    nan = inf = 0
    done = 0
    while done < total:
        count = min(per_chunk, total - done)
        chunk = source.read(offset + done * record_size, count * record_size)
        records = np.frombuffer(chunk, dtype=np.uint8).reshape(count, record_size)
        for at, kind in fields:
            code, exponent, mantissa = _FLOAT_BITS[kind]
            width = np.dtype(code).itemsize
            if width == record_size:
                values = np.frombuffer(chunk, dtype=code)
            else:
                values = np.ascontiguousarray(records[:, at : at + width]).view(code).ravel()
            all_ones = values.dtype.type(exponent)
            special = values[(values & all_ones) == all_ones]
            if special.size:
                n_nan = int(np.count_nonzero(special & values.dtype.type(mantissa)))
                nan += n_nan
                inf += int(special.size) - n_nan
        done += count
    return nan, inf


def nonfinite_problem(found: list[tuple[TensorInfo, int, int, str]]) -> str:
    """One line naming the first tensor with NaN/Inf and how many more there are."""
    tensor, nan, inf, where = found[0]
    text = f"tensor {quote(tensor.name)} ({tensor.dtype}) holds {nan} NaN and {inf} Inf values{where}"
    if tensor.file:
        text = f"{printable(tensor.file)}: {text}"
    if len(found) > 1:
        text += f"; {len(found) - 1} more tensor(s) hold NaN/Inf too"
    return text


def read_json_file(path: Path, shown: str, what: str) -> Any:
    """Parse a small JSON file; any problem becomes a one-line :class:`FormatError`."""
    with FileSource(path, shown) as source:
        if source.size > MAX_JSON_BYTES:
            raise FormatError(shown, f"{what} is {source.size} bytes, more than the {MAX_JSON_BYTES} allowed")
        raw = source.read(0, source.size)
    return parse_json(raw, shown, what)


def parse_json(raw: bytes, shown: str | Path, what: str) -> Any:
    """``json.loads`` with every failure (encoding, syntax, nesting, huge numbers) as one line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(shown, f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise FormatError(shown, f"{what} is not valid JSON: {exc.msg} at {where}") from None
    except _DuplicateKey as exc:
        raise FormatError(shown, f"{what} has the key {quote(exc.key)} twice") from None
    except RecursionError:
        raise FormatError(shown, f"{what} nests too deeply to be valid JSON for a model") from None
    except ValueError as exc:
        raise FormatError(shown, f"{what} is not valid JSON: {str(exc).splitlines()[0]}") from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def mlx_quantization(config: Any) -> dict[str, int] | None:
    """The ``{"group_size", "bits"}`` entry mlx-lm writes into config.json, if present."""
    if not isinstance(config, dict):
        return None
    quant = config.get("quantization")
    if not isinstance(quant, dict):
        return None
    bits, group = quant.get("bits"), quant.get("group_size")
    if type(bits) is not int or type(group) is not int or min(bits, group) <= 0:
        return None
    return {"bits": bits, "group_size": group}
