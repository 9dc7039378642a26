"""Memory checks before a load, and out-of-memory errors that carry figures.

Before a load, the memory the load needs (estimated from the file size and the backend,
:func:`needed_memory`) is compared with what the device has free; when it cannot fit,
the case is skipped with both figures (:class:`NotEnoughMemory`). An out-of-memory error
raised by the engine becomes :class:`OutOfMemory`, a failure carrying the same figures.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_minerva.errors import BackendUnavailable, MinervaError

if TYPE_CHECKING:
    from pytest_minerva.backends import BackendSpec
    from pytest_minerva.backends.base import LoadOptions
    from pytest_minerva.models.resolve import ResolvedArtifact

__all__ = [
    "NotEnoughMemory",
    "OutOfMemory",
    "artifact_bytes",
    "available_memory",
    "check_memory",
    "human_bytes",
    "is_out_of_memory",
    "killed_detail",
    "needed_memory",
    "out_of_memory",
]


class OutOfMemory(MinervaError):
    """The engine ran out of memory; the message gives what was needed and what was free."""


class NotEnoughMemory(BackendUnavailable):
    """A load would not fit in the device's free memory; the case is skipped with the figures."""


_GIB = 1 << 30


def human_bytes(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB else f"{n / (1 << 20):.0f} MiB"


def artifact_bytes(path: Path) -> int:
    """Size of a model file, or of the files directly inside a model directory."""
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def available_memory(device: str) -> int | None:
    """Free memory in bytes on ``device`` now, or ``None`` where it cannot be read."""
    if device == "cuda":
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            return int(free)
        from pytest_minerva.hardware import detect_cuda

        gpus, _how = detect_cuda()
        frees = [g.memory_free_mb for g in gpus if g.memory_free_mb is not None]
        return max(frees) * (1 << 20) if frees else None
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def needed_memory(spec: BackendSpec, artifact: ResolvedArtifact, options: LoadOptions) -> tuple[int, str]:
    """Bytes a load needs, and how that was estimated (for the message).

    An engine that holds every weight in ``options.dtype``
    (``spec.holds_weights_in_load_dtype``: transformers, which dequantizes a GGUF) needs
    parameters x dtype size; other engines hold the file as it is. Both get 10 % plus
    256 MiB for the KV cache, activations and the engine itself.
    """
    size = artifact_bytes(artifact.path)
    parameters = getattr(artifact.summary, "parameter_count", 0) or 0
    if spec.holds_weights_in_load_dtype and parameters:
        width = _DTYPE_BYTES.get(options.dtype, 4)
        weights = parameters * width
        how = f"{parameters:,} parameters x {width} bytes ({options.dtype})"
    else:
        weights = size
        how = f"the {human_bytes(size)} of weights"
    return int(weights * 1.1) + (256 << 20), how + " + 10% + 256 MiB"


def check_memory(what: str, spec: BackendSpec, artifact: ResolvedArtifact, options: LoadOptions) -> int:
    """Raise :class:`NotEnoughMemory` when ``spec``'s load of ``artifact`` cannot fit; return the bytes needed."""
    needed, how = needed_memory(spec, artifact, options)
    free = available_memory(options.device)
    if free is not None and needed > free:
        raise NotEnoughMemory(
            f"{what}: needs about {human_bytes(needed)} of {options.device} memory ({how}), "
            f"but only {human_bytes(free)} is free"
        )
    return needed


def is_out_of_memory(exc: BaseException) -> bool:
    """True for MemoryError and the engines' own out-of-memory errors (torch, CUDA, Metal)."""
    if isinstance(exc, MemoryError):
        return True
    if type(exc).__name__ in ("OutOfMemoryError", "OutOfMemory"):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "failed to allocate" in text


def out_of_memory(what: str, step: str, needed: int | None, device: str, detail: str) -> OutOfMemory:
    free = available_memory(device)
    figures = []
    if needed is not None:
        figures.append(f"needed about {human_bytes(needed)}")
    if free is not None:
        figures.append(f"{human_bytes(free)} of {device} memory is free now")
    shown = " ".join(detail.split())[:200]
    return OutOfMemory(f"{what}: ran out of memory during {step} ({'; '.join(figures) or 'no figures'}): {shown}")


def killed_detail(needed: int | None, device: str) -> str:
    """What a worker killed by ``SIGKILL`` (the kernel's out-of-memory killer) may have lacked:
    ``"; the load needs about X, Y is free now"``, or ``""`` without an estimate."""
    if needed is None:
        return ""
    free = available_memory(device)
    shown = f", {human_bytes(free)} is free now" if free is not None else ""
    return f"; the load needs about {human_bytes(needed)}{shown}"
