"""``ExampleBackend``: llama.cpp through llama-cpp-python, as a third-party adapter.

It reuses pytest-minerva's ``LlamaCppBackend`` (which drives llama.cpp's C API) and changes
what identifies it. ``name`` is the one attribute that must change: pytest-minerva uses it in
case ids, markers, reports and crash messages, and ``info()["backend"]`` reads it. Anything
pytest-minerva needs to know about an engine it has never heard of comes from ``info()``, never
from its name, so the KV cache's element type is stated there (llama.cpp's default, f16).
"""

from __future__ import annotations

from typing import Any

from pytest_minerva.backends.llama_cpp import LlamaCppBackend

#: llama.cpp keeps its KV cache in f16 unless told otherwise (``type_k`` / ``type_v``).
LLAMA_CPP_CACHE_DTYPE = "f16"


class ExampleBackend(LlamaCppBackend):
    """A GGUF model loaded by llama.cpp; every number comes from llama.cpp running it."""

    name = "example_llama"

    def info(self) -> dict[str, Any]:
        facts = super().info()  # "backend" is self.name
        facts["adapter"] = "minerva_example_engine"
        facts.setdefault("kv_cache_dtype", LLAMA_CPP_CACHE_DTYPE)  # older LlamaCppBackend did not say
        return facts
