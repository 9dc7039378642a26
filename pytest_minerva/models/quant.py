"""How precise a GGUF file type or dtype is, in approximate bits per weight.

The resolver derives from the most precise variant of a format that it can have, and the
quantization comparisons of the test matrix take the most precise GGUF as their reference;
both rank variants with :func:`quant_bits`.
"""

from __future__ import annotations

# Approximate bits per weight: derive from the most precise GGUF present.
_QUANT_BITS = {
    "F32": 32,
    "BF16": 16,
    "F16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.6,
    "Q5_K_M": 5.7,
    "Q5_K_S": 5.5,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.8,
    "Q4_K_S": 4.5,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "Q3_K_L": 4.1,
    "Q3_K_M": 3.9,
    "Q3_K_S": 3.5,
    "Q2_K": 3.4,
}


def quant_bits(quant: str | None) -> float:
    """Approximate bits per weight of a GGUF file type or dtype name (0 when unknown)."""
    return float(_QUANT_BITS.get((quant or "").upper(), 0.0))
