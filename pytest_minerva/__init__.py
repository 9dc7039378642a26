"""pytest-minerva: correctness and speed regression tests for LLM inference backends.

Importing this package is cheap: no torch, mlx or llama_cpp is imported until a
test asks for a backend.
"""

from __future__ import annotations

__version__ = "0.1.0"
