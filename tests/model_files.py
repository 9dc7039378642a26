"""Small model files the tests write: one home, so a change to the format touches one writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def small_gguf(path: Path, architecture: str = "llama", *, context_length: int | None = None) -> Path:
    """A valid one-tensor GGUF (8x8 f32 ``token_embd.weight``) whose ``general.architecture`` is ``architecture``."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    if context_length is not None:
        writer.add_context_length(context_length)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
