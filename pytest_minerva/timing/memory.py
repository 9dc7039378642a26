"""Memory figures: peak resident set, peak device memory, and KV-cache bytes per token.

Peak RSS. On Linux the kernel keeps the process's resident-set high-water mark
(``VmHWM`` in ``/proc/self/status``) and lets the process reset it by writing ``5``
to ``/proc/self/clear_refs``; the harness resets it before loading a backend, so the
figure is that backend's own peak (model load plus all its runs). Elsewhere, or where
the reset is refused, the figure is ``resource.getrusage(RUSAGE_SELF).ru_maxrss``,
the peak over the whole process, which cannot be reset; ``method`` says which.

Peak device memory. ``torch.cuda.max_memory_allocated`` for a torch backend on CUDA
and ``mlx.core.get_peak_memory`` for MLX (host memory on the CPU build, unified memory
on Apple silicon), each read only when the backend has already imported that library.
llama.cpp exposes no peak counter.

KV-cache bytes per token, *computed* from the model config:
``2 (K and V) x layers x kv_heads x head_dim x bytes per element of the engine's cache``,
with llama.cpp's default ``f16`` cache (2 bytes) and transformers / mlx-lm caching in
the weights' dtype (4 bytes for float32). It is checked against a *measured* growth:
one untimed generation of ``kv_probe_tokens`` tokens, reading the engine's memory at the
first and the last generated token, ``(last - first) / (tokens - 1)``. The reading is the
backend's ``kv_cache_bytes()`` where it has one (:class:`~pytest_minerva.backends.base.KvCacheBytes`;
llama.cpp's is ``llama_state_seq_get_size``, the bytes of sequence 0's state, its cache
itself being allocated for the whole context at load), else its device's current memory
(MLX's active memory, torch's allocated CUDA memory), else the process RSS.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_minerva.backends.base import Backend, DeviceMemory, DeviceMemoryCounters, KvCacheBytes

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")

#: Bytes per element of the KV cache each built-in engine keeps by default.
DTYPE_BYTES = {
    "f32": 4,
    "float32": 4,
    "f16": 2,
    "float16": 2,
    "bf16": 2,
    "bfloat16": 2,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
}


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> int:
    """Resident set size of this process now (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter for this process; False where that is impossible."""
    if _status_kib("VmHWM") is None:
        return False
    try:
        _CLEAR_REFS.write_text("5", encoding="ascii")
    except OSError:
        return False
    return True


def peak_rss(*, since_reset: bool) -> tuple[int, str]:
    """``(bytes, method)``: the peak RSS since :func:`reset_peak_rss` succeeded, else over the process."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        span = "since the reset before loading" if since_reset else "over the whole process (reset refused)"
        return hwm * 1024, f"VmHWM {span} (/proc/self/status)"
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return int(maxrss) * scale, "ru_maxrss over the whole process (cannot be reset)"


def device_memory(backend: Backend) -> DeviceMemory | None:
    """The peak-memory counter for ``backend``'s device (:class:`DeviceMemoryCounters`), or
    None (llama.cpp, torch on the CPU: their memory is the process's RSS)."""
    return backend.device_memory() if isinstance(backend, DeviceMemoryCounters) else None


@dataclass(frozen=True)
class KvShape:
    """What the KV cache holds per token, read from the model's config or GGUF metadata."""

    layers: int
    kv_heads: int
    key_dim: int
    value_dim: int
    source: str

    @property
    def elements_per_token(self) -> int:
        return self.layers * self.kv_heads * (self.key_dim + self.value_dim)


def kv_shape(metadata: Mapping[str, Any]) -> KvShape | None:
    """Layers, KV heads and head sizes from GGUF metadata or a ``config.json`` mapping; None if absent."""
    arch = metadata.get("general.architecture")
    if isinstance(arch, str):

        def key(name: str) -> Any:
            return metadata.get(f"{arch}.{name}")

        layers, heads, kv_heads = (
            key("block_count"),
            key("attention.head_count"),
            key("attention.head_count_kv"),
        )
        if isinstance(kv_heads, list):
            kv_heads = max(kv_heads) if kv_heads else None
        kv_heads = kv_heads if kv_heads is not None else heads
        embed = key("embedding_length")
        default_dim = embed // heads if isinstance(embed, int) and isinstance(heads, int) and heads else None
        key_dim = key("attention.key_length") or default_dim
        value_dim = key("attention.value_length") or default_dim
        source = "GGUF metadata"
    else:
        layers = metadata.get("num_hidden_layers")
        heads = metadata.get("num_attention_heads")
        kv_heads = metadata.get("num_key_value_heads") or heads
        hidden = metadata.get("hidden_size")
        head_dim = metadata.get("head_dim") or (hidden // heads if hidden and heads else None)
        key_dim = value_dim = head_dim
        source = "config.json"
    values = (layers, kv_heads, key_dim, value_dim)
    if not all(isinstance(v, int) and v > 0 for v in values):
        return None
    return KvShape(int(layers), int(kv_heads), int(key_dim), int(value_dim), source)  # type: ignore[arg-type]


def cache_dtype(info: Mapping[str, Any]) -> str | None:
    """The KV cache's element type: what the backend's ``info()`` reports as ``kv_cache_dtype``,
    else its weights' dtype."""
    reported = info.get("kv_cache_dtype")
    if isinstance(reported, str):
        return reported.lower()
    dtype = info.get("dtype")
    return str(dtype).lower() if isinstance(dtype, str) and str(dtype).lower() in DTYPE_BYTES else None


@dataclass
class KvFigures:
    """KV-cache bytes per token: computed from the config, and measured by growth where possible."""

    computed_bytes_per_token: float | None = None
    computed_formula: str = ""
    cache_dtype: str | None = None
    measured_bytes_per_token: float | None = None
    measured_method: str = ""
    measured_tokens: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def computed_kv(metadata: Mapping[str, Any], backend_name: str, info: Mapping[str, Any]) -> KvFigures:
    """The computed figure (labelled with its formula), or an empty one saying what was missing."""
    shape = kv_shape(metadata)
    dtype = cache_dtype(info)
    if shape is None:
        return KvFigures(note="the model config lacks layers / KV heads / head size")
    if dtype is None:
        return KvFigures(note=f"{backend_name} does not say which dtype its KV cache uses")
    per_element = DTYPE_BYTES[dtype]
    formula = (
        f"computed from {shape.source}: {shape.layers} layers x {shape.kv_heads} KV heads x "
        f"({shape.key_dim} + {shape.value_dim}) K+V dims x {per_element:g} bytes ({dtype})"
    )
    return KvFigures(shape.elements_per_token * per_element, formula, dtype)


def kv_reader(backend: Backend) -> tuple[Callable[[], int], str]:
    """A function returning the engine memory that grows with the KV cache, and what it reads."""
    if isinstance(backend, KvCacheBytes):
        return (lambda: int(backend.kv_cache_bytes())), f"{backend.name}.kv_cache_bytes()"
    device = device_memory(backend)
    if device is not None:
        return device.current, f"{device.library} current allocated memory"
    return current_rss_bytes, "process RSS (psutil)"
