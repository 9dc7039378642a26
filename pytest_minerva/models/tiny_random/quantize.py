"""K-quant GGUF files (Q4_K_M), made by llama.cpp's own quantizer from the F32 file (gguf-py cannot write them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pytest_minerva.errors import MinervaError
from pytest_minerva.models.tiny_random.config import LLAMA_CPP_QUANTS

# The tiny models quantize in about a second; this only stops a hung child.
_QUANTIZE_TIMEOUT_S = 300
_QUANTIZE_SCRIPT = """
import ctypes, sys
import llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, sys.argv[3])
params.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(params)))
"""


def quantize_with_llama_cpp(source: Path, dest: Path, quant: str) -> None:
    """Write ``dest``, the GGUF ``source`` quantized by llama.cpp's quantizer to ``quant`` (e.g. Q4_K_M).

    It runs in a child process because llama.cpp aborts the process on a failed
    assertion. llama.cpp picks each tensor's type by its recipe for ``quant`` and falls
    back to another type for shapes the chosen one cannot hold.
    """
    ftype = LLAMA_CPP_QUANTS[quant]
    try:
        result = subprocess.run(
            [sys.executable, "-c", _QUANTIZE_SCRIPT, str(source), str(dest), ftype],
            capture_output=True,
            text=True,
            check=False,
            timeout=_QUANTIZE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise MinervaError(
            f"{source}: llama.cpp's quantizer did not finish {quant} within {_QUANTIZE_TIMEOUT_S} s"
        ) from None
    if result.returncode != 0 or not dest.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise MinervaError(
            f"{source}: llama.cpp's quantizer failed to write {quant} (exit {result.returncode}): "
            f"{lines[-1] if lines else 'no message'}"
        )
