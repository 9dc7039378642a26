"""Generated models with seeded random weights: ``tiny-random-llama`` and ``tiny-random-gemma3``.

Each generator writes the same weights as a Hugging Face SafeTensors directory and as
GGUF files in several precisions, within seconds and byte-identically for a given
seed, so a suite can test every format x quantization pair without downloading
anything. The models are small but not degenerate: weight scales are chosen so that
next-token distributions are peaked and attention depends on position, which makes
a wrong conversion or a lossy quantization show up in the logits.

``tiny-random-llama`` (:data:`LLAMA`): 2 layers, grouped-query attention (4 query heads
share 2 KV heads), an untied ``lm_head``, GGUF F32, F16, Q8_0, Q4_1 and Q4_0.

``tiny-random-gemma3`` (:data:`GEMMA3`): a Gemma 3 text model with what sets that
architecture apart: 6 layers with 5 sliding-window layers then a global one (the
Gemma 3 pattern, which llama.cpp hard-codes when a GGUF does not state it), a
separate RoPE base for each kind, q/k norms, pre- and post-norms around attention and
the feed-forward, GeGLU (``gelu_pytorch_tanh``), embeddings scaled by
``sqrt(hidden_size)`` and tied to the output. Norm weights follow transformers'
``(1 + w)`` convention in SafeTensors and are stored as ``1 + w`` in GGUF, exactly as
llama.cpp's ``convert_hf_to_gguf.py`` writes them. GGUF F32, F16, Q8_0 and Q5_0 come
from gguf-py; Q4_K_M comes from llama.cpp's own quantizer (gguf-py cannot write
K-quants), so it is built only where llama-cpp-python is installed, and its bytes
depend on the llama.cpp version.

Both share one tokenizer: a byte-level BPE (GPT-2 style) trained deterministically on
``fixtures/tiny_corpus.txt``; llama.cpp reads it as ``tokenizer.ggml.model = gpt2``
with the ``gpt-2`` pre-tokenizer, transformers reads ``tokenizer.json``.

The resolver calls a generator through its registry
(``pytest_minerva.models.resolve.GENERATORS``): ``"pytest_minerva.models.tiny_random"`` (this
package: :func:`build` and :func:`artifact_path` pick the generator a catalog entry names,
the llama by default) or ``"pytest_minerva.models.tiny_random:GEMMA3"``. Each has the shape of
:class:`~pytest_minerva.models.tiny_random.generators.Generator`: ``VERSION``,
``build(model, dest)`` and ``artifact_path(root, spec)``, and the resolver caches a build
under a key made of the model name, the seed and ``VERSION``.

One job per module: :mod:`.config` (names, versions, shapes), :mod:`.tokenizer`,
:mod:`.weights`, :mod:`.safetensors_writer`, :mod:`.gguf_writer`, :mod:`.quantize`
(llama.cpp's K-quants) and :mod:`.generators` (the builds and their manifests).
"""

from __future__ import annotations

from pytest_minerva.models.tiny_random.config import (
    BOS_ID,
    BOS_TOKEN,
    CORPUS_FILE,
    DEFAULT_SEED,
    EOS_ID,
    EOS_TOKEN,
    GEMMA3_GGUF_QUANTS,
    GEMMA3_NAME,
    GEMMA3_VERSION,
    GGUF_QUANTS,
    LLAMA_CPP_QUANTS,
    NAME,
    VERSION,
    TinyGemma3Config,
    TinyLlamaConfig,
)
from pytest_minerva.models.tiny_random.generators import (
    GEMMA3,
    GENERATOR_TARGETS,
    LLAMA,
    Gemma3Generator,
    Generator,
    LlamaGenerator,
    TinyRandomGenerator,
    artifact_path,
    build,
    generator_for,
)
from pytest_minerva.models.tiny_random.gguf_writer import (
    gguf_tensor_name,
    gguf_tensor_types,
    permute_qk,
    write_gemma3_gguf,
    write_gguf,
)
from pytest_minerva.models.tiny_random.quantize import quantize_with_llama_cpp
from pytest_minerva.models.tiny_random.safetensors_writer import gemma3_hf_config, hf_config, write_safetensors_dir
from pytest_minerva.models.tiny_random.tokenizer import corpus_path, train_tokenizer
from pytest_minerva.models.tiny_random.weights import random_gemma3_weights, random_weights

__all__ = [
    "BOS_ID",
    "BOS_TOKEN",
    "CORPUS_FILE",
    "DEFAULT_SEED",
    "EOS_ID",
    "EOS_TOKEN",
    "GEMMA3",
    "GEMMA3_GGUF_QUANTS",
    "GEMMA3_NAME",
    "GEMMA3_VERSION",
    "GENERATOR_TARGETS",
    "GGUF_QUANTS",
    "LLAMA",
    "LLAMA_CPP_QUANTS",
    "NAME",
    "VERSION",
    "Gemma3Generator",
    "Generator",
    "LlamaGenerator",
    "TinyGemma3Config",
    "TinyLlamaConfig",
    "TinyRandomGenerator",
    "artifact_path",
    "build",
    "corpus_path",
    "gemma3_hf_config",
    "generator_for",
    "gguf_tensor_name",
    "gguf_tensor_types",
    "hf_config",
    "permute_qk",
    "quantize_with_llama_cpp",
    "random_gemma3_weights",
    "random_weights",
    "train_tokenizer",
    "write_gemma3_gguf",
    "write_gguf",
    "write_safetensors_dir",
]
