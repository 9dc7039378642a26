"""The wire format between the test process and a worker process.

A worker speaks length-prefixed JSON over its stdin and stdout: each message is a
:data:`PREFIX` (header length, payload length), a JSON header, then a raw payload. Arrays
travel as raw bytes with a dtype from a short allowlist (:data:`ARRAY_DTYPES`) and a
shape. Nothing is ever unpickled, so a worker that a hostile model file has subverted
cannot run code in the test process through the channel. This module also holds how the
values a request or a reply carries (specs, artifacts, token events, what a forwarded
capability method returns) become JSON and back.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import math
import os
import struct
import sys
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pytest_minerva.backends.base import BatchGeneration, TokenEvent, capability_methods
from pytest_minerva.errors import MinervaError

if TYPE_CHECKING:
    import numpy as np

    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.models.resolve import ResolvedArtifact

__all__ = [
    "ARRAY_DTYPES",
    "FORWARDED_METHODS",
    "MAX_HEADER",
    "PREFIX",
    "ProtocolError",
    "artifact_from_json",
    "artifact_to_json",
    "decode_array",
    "encode_array",
    "event_from_json",
    "event_json",
    "protocol_output",
    "read_message_blocking",
    "result_from_json",
    "result_to_json",
    "spec_from_json",
    "spec_to_json",
    "write_message",
]

#: Optional backend methods an isolated backend forwards (they take and return JSON, or a
#: :class:`~pytest_minerva.backends.base.BatchGeneration`): those of the capability Protocols.
FORWARDED_METHODS = capability_methods()
ARRAY_DTYPES = ("float32", "float16", "float64", "int32", "int64", "uint8")
#: The largest header a reader accepts.
MAX_HEADER = 64 << 20
#: Every message starts with the byte lengths of its JSON header and of its raw payload.
PREFIX = struct.Struct(">IQ")


class ProtocolError(MinervaError):
    """The worker sent something that is not a well-formed message."""


def encode_array(array: Any) -> tuple[dict[str, Any], memoryview]:
    import numpy as np

    arr = np.ascontiguousarray(array)
    if arr.dtype.name not in ARRAY_DTYPES:
        arr = arr.astype(np.float32)
    return {"dtype": arr.dtype.name, "shape": list(arr.shape)}, arr.data.cast("B")


def decode_array(meta: Any, payload: bytearray) -> np.ndarray:
    """Rebuild an array from its ``{"dtype", "shape"}`` and raw bytes; refuse anything inconsistent."""
    import numpy as np

    if not isinstance(meta, dict) or meta.get("dtype") not in ARRAY_DTYPES:
        raise ProtocolError(f"array with a dtype outside {ARRAY_DTYPES}: {str(meta)[:100]}")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"array with a bad shape {str(shape)[:100]}")
    dtype = np.dtype(meta["dtype"])
    if math.prod(shape) * dtype.itemsize != len(payload):
        raise ProtocolError(f"array of shape {shape} {dtype} does not match its {len(payload)} bytes")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def write_message(out: IO[bytes], header: dict[str, Any], payload: memoryview | bytes = b"") -> None:
    body = json.dumps(header, allow_nan=True).encode()
    out.write(PREFIX.pack(len(body), len(payload)))
    out.write(body)
    if len(payload):
        out.write(payload)
    out.flush()


def read_message_blocking(stream: IO[bytes]) -> tuple[dict[str, Any], bytearray] | None:
    """One message from a blocking stream (the worker's stdin); ``None`` at end of file."""
    prefix = stream.read(PREFIX.size)
    if len(prefix) < PREFIX.size:
        return None
    header_len, payload_len = PREFIX.unpack(prefix)
    header = json.loads(stream.read(header_len))
    payload = bytearray(stream.read(payload_len)) if payload_len else bytearray()
    return header, payload


def protocol_input() -> IO[bytes]:
    """In a child process: the stream that carries requests (the original stdin), after pointing
    fd 0, and so ``sys.stdin``, at the null device.

    An engine that reads stdin (transformers asks "Do you wish to run the custom code? [y/N]")
    then reads end-of-file and fails at once, instead of consuming protocol bytes or waiting.
    Call it once, before anything reads stdin.
    """
    stream = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    return stream


def protocol_output() -> IO[bytes]:
    """In a child process: the stream that carries the protocol (the original stdout), after
    pointing fd 1 at stderr so whatever an engine prints cannot corrupt it."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    faulthandler.enable()
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    return out


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def artifact_to_json(artifact: ResolvedArtifact) -> dict[str, Any]:
    """The fields a worker needs to rebuild ``artifact`` (its summary stays behind)."""
    return {
        "model": artifact.model,
        "format": artifact.format,
        "quant": artifact.quant,
        "path": str(artifact.path),
        "source": artifact.source,
        "architecture": artifact.architecture,
        "sha256": artifact.sha256,
        "derived_from": artifact_to_json(artifact.derived_from) if artifact.derived_from else None,
        "detail": artifact.detail,
        "extra": json.loads(json.dumps(artifact.extra, default=str)),
    }


def spec_to_json(spec: BackendSpec) -> dict[str, Any]:
    data = dataclasses.asdict(spec)
    data["options"] = json.loads(json.dumps(data["options"], default=str))
    return data


def artifact_from_json(data: dict[str, Any]) -> ResolvedArtifact:
    from pytest_minerva.models.resolve import ResolvedArtifact

    parent = data.pop("derived_from", None)
    return ResolvedArtifact(
        model=data["model"],
        format=data["format"],
        quant=data["quant"],
        path=Path(data["path"]),
        source=data["source"],
        architecture=data["architecture"],
        sha256=data.get("sha256"),
        derived_from=artifact_from_json(parent) if parent else None,
        detail=data.get("detail", ""),
        extra=data.get("extra") or {},
    )


def spec_from_json(data: dict[str, Any]) -> BackendSpec:
    from pytest_minerva.backends import BackendSpec

    data = dict(data)
    for key in ("formats", "devices", "requires", "distributions"):
        data[key] = tuple(data[key])
    return BackendSpec(**data)


def event_json(event: TokenEvent) -> dict[str, Any]:
    return {
        "index": event.index,
        "token": event.token,
        "text": event.text,
        "time_s": event.time_s,
        "finish_reason": event.finish_reason,
    }


def event_from_json(event: dict[str, Any]) -> TokenEvent:
    """The :class:`~pytest_minerva.backends.base.TokenEvent` that :func:`event_json` sent."""
    return TokenEvent(
        int(event["index"]),
        int(event["token"]),
        str(event["text"]),
        float(event["time_s"]),
        event.get("finish_reason"),
    )


def result_to_json(value: Any) -> dict[str, Any]:
    """The reply fields for what a forwarded method returned: a
    :class:`~pytest_minerva.backends.base.BatchGeneration` as its fields, tagged so that
    :func:`result_from_json` rebuilds it; anything else as plain JSON in ``value``."""
    if isinstance(value, BatchGeneration):
        fields = {
            "tokens": [[int(token) for token in row] for row in value.tokens],
            "start_s": float(value.start_s),
            "step_times_s": [float(t) for t in value.step_times_s],
        }
        return {"value": fields, "dataclass": "BatchGeneration"}
    return {"value": json.loads(json.dumps(value, default=str))}


def result_from_json(header: dict[str, Any]) -> Any:
    """The value of a reply :func:`result_to_json` built; refuse a tag or fields it does not know."""
    kind = header.get("dataclass")
    value = header.get("value")
    if kind is None:
        return value
    if kind != "BatchGeneration" or not isinstance(value, dict):
        raise ProtocolError(f"reply with an unknown dataclass {str(kind)[:100]}")
    try:
        return BatchGeneration(
            tokens=[[int(token) for token in row] for row in value["tokens"]],
            start_s=float(value["start_s"]),
            step_times_s=[float(t) for t in value["step_times_s"]],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"a BatchGeneration reply that does not fit its fields: {exc}") from None
