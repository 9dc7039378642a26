"""A memory-bandwidth roofline for single-stream decoding.

Generating one token at batch size 1 reads every weight the forward pass uses once,
so decode speed is bounded by ``memory bandwidth / bytes read per token``. Both
inputs are defined here:

* **Bandwidth** is *measured* by :func:`probe_bandwidth`: ``threads`` Python threads
  each sum (``numpy.sum``, which releases the GIL) their share of a float64 buffer
  at least 8x the last-level cache, a few repeats within a time budget; the figure
  is the median of ``buffer bytes / seconds``. It is a read bandwidth, the access
  pattern of decoding; ``method`` records the buffer size, threads and repeats.
* **Bytes per token** is *computed* by :func:`weight_bytes_per_token` from the model's
  tensors as the engine holds them: GGUF tensor sizes for llama.cpp (quantized),
  element count x bytes per element for engines that dequantize (4 for float32).
  The token embedding is a lookup, so it counts one row, unless the model has no
  separate output head (tied embeddings) and the whole matrix is read as the head.

The ceiling ``bandwidth / bytes per token`` ignores KV-cache reads, activations and
compute, so real decode rates sit below it; :func:`roofline` reports the fraction.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pytest_minerva.formats import TensorInfo

EMBEDDING_NAMES = (
    "token_embd.weight",
    "model.embed_tokens.weight",
    "embed_tokens.weight",
    "tok_embeddings.weight",
)
HEAD_NAMES = ("output.weight", "lm_head.weight", "model.lm_head.weight")
MIN_PROBE_BYTES = 256 * 2**20


def last_level_cache_bytes() -> int | None:
    """The largest CPU cache this machine reports (Linux sysfs), or None."""
    best = None
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
        digits = text[:-1] if scale != 1 else text
        if digits.isdigit():
            size = int(digits) * scale
            best = size if best is None else max(best, size)
    return best


@dataclass(frozen=True)
class Bandwidth:
    """A measured read bandwidth and how it was measured."""

    gb_per_s: float
    samples_gb_per_s: tuple[float, ...]
    buffer_bytes: int
    threads: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples_gb_per_s"] = list(self.samples_gb_per_s)
        return data


def probe_bandwidth(threads: int = 1, *, budget_s: float = 2.5, max_repeats: int = 7) -> Bandwidth:
    """Measure read bandwidth: ``threads`` threads summing a buffer far larger than the LLC.

    Stops after ``max_repeats`` timed passes or when ``budget_s`` is spent (allocation
    included), whichever is first; at least one pass is always timed.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    started = time.perf_counter()
    llc = last_level_cache_bytes() or 0
    size = max(MIN_PROBE_BYTES, 8 * llc)
    buffer = np.ones(size // 8, dtype=np.float64)  # ones, not empty: pages must be resident
    chunks = np.array_split(buffer, max(1, threads))
    samples: list[float] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(np.sum, chunks))  # warm: threads started, TLBs filled
        while len(samples) < max_repeats:
            t0 = time.perf_counter()
            list(pool.map(np.sum, chunks))
            elapsed = time.perf_counter() - t0
            samples.append(buffer.nbytes / elapsed / 1e9)
            if time.perf_counter() - started + elapsed > budget_s:
                break
    method = (
        f"numpy.sum over a {buffer.nbytes / 2**20:.0f} MiB float64 buffer split across {max(1, threads)} "
        f"thread(s) (LLC {llc / 2**20:.0f} MiB), median of {len(samples)} passes"
    )
    return Bandwidth(statistics.median(samples), tuple(samples), int(buffer.nbytes), max(1, threads), method)


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of weights read to generate one token, and how they were counted."""

    bytes_per_token: float
    total_weight_bytes: float
    embedding_bytes_counted: float
    tied_embeddings: bool
    method: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def weight_bytes_per_token(
    tensors: Iterable[TensorInfo], *, vocab_size: int | None = None, element_bytes: float | None = None
) -> WeightBytes:
    """Bytes read per generated token from a tensor table.

    ``element_bytes=None`` counts each tensor's stored size (a GGUF as llama.cpp holds
    it); a number counts ``n_elements x element_bytes`` (an engine that dequantizes to
    that width). The embedding counts one of its ``vocab_size`` rows (its largest
    dimension when ``vocab_size`` is not given) unless no output head is present.
    """
    listed = list(tensors)
    if not listed:
        raise ValueError("no tensors to count")

    def size(t: TensorInfo) -> float:
        return float(t.nbytes) if element_bytes is None else float(t.n_elements) * element_bytes

    total = math.fsum(size(t) for t in listed)
    embedding = next((t for t in listed if t.name in EMBEDDING_NAMES), None)
    tied = not any(t.name in HEAD_NAMES for t in listed)
    counted = total
    embed_counted = size(embedding) if embedding is not None else 0.0
    if embedding is not None and not tied:
        rows = vocab_size or max(embedding.shape)
        embed_counted = size(embedding) / rows
        counted = total - size(embedding) + embed_counted
    how = "stored tensor sizes" if element_bytes is None else f"elements x {element_bytes:g} bytes"
    if embedding is None:
        detail = "no token embedding found"
    elif tied:
        detail = "tied embeddings: the embedding is read in full as the output head"
    else:
        detail = "token embedding counts one row"
    return WeightBytes(counted, total, embed_counted, tied, f"{how}; {detail}")


@dataclass(frozen=True)
class Roofline:
    """A decode rate set against the bandwidth ceiling."""

    bandwidth_gb_per_s: float
    bytes_per_token: float
    ceiling_tokens_per_s: float
    decode_tokens_per_s: float
    fraction: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def roofline(bandwidth_gb_per_s: float, bytes_per_token: float, decode_tokens_per_s: float) -> Roofline:
    """The ceiling ``bandwidth / bytes per token`` and ``decode rate / ceiling``."""
    if bandwidth_gb_per_s <= 0 or bytes_per_token <= 0:
        raise ValueError("bandwidth and bytes per token must be positive")
    ceiling = bandwidth_gb_per_s * 1e9 / bytes_per_token
    return Roofline(bandwidth_gb_per_s, bytes_per_token, ceiling, decode_tokens_per_s, decode_tokens_per_s / ceiling)
