"""The two generators, ``tiny-random-llama`` (:data:`LLAMA`) and ``tiny-random-gemma3`` (:data:`GEMMA3`).

Both are :class:`TinyRandomGenerator` objects and so have the shape the resolver calls
(:class:`Generator`): ``VERSION`` (part of the cache key, with the model name and the
seed), ``build(model, dest) -> manifest`` and ``artifact_path(root, spec)``. A build
trains the tokenizer, draws the weights, writes the SafeTensors directory and every GGUF
quantization the catalog entry lists, and returns a manifest of what it wrote.

:func:`build` and :func:`artifact_path` pick the generator a catalog entry names, so the
package itself (registered as ``"pytest_minerva.models.tiny_random"``) is a generator too.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from pytest_minerva.errors import ArtifactMissing, MinervaError
from pytest_minerva.models.catalog import ArtifactSpec, ModelSpec
from pytest_minerva.models.tiny_random.config import (
    CORPUS_FILE,
    DEFAULT_SEED,
    GEMMA3_GGUF_QUANTS,
    GEMMA3_NAME,
    GEMMA3_VERSION,
    GGUF_QUANTS,
    LLAMA_CPP_QUANTS,
    NAME,
    VERSION,
    TinyGemma3Config,
    TinyLlamaConfig,
    require_package,
)
from pytest_minerva.models.tiny_random.gguf_writer import gguf_tensor_types, write_gemma3_gguf, write_gguf
from pytest_minerva.models.tiny_random.quantize import quantize_with_llama_cpp
from pytest_minerva.models.tiny_random.safetensors_writer import write_safetensors_dir
from pytest_minerva.models.tiny_random.tokenizer import corpus_path, train_tokenizer
from pytest_minerva.models.tiny_random.weights import random_gemma3_weights, random_weights


class Generator(Protocol):
    """What the resolver calls on a registered generator (``pytest_minerva.models.resolve.GENERATORS``)."""

    @property
    def VERSION(self) -> str: ...

    def build(self, model: ModelSpec, dest: Path) -> dict[str, Any]: ...

    def artifact_path(self, root: Path, spec: ArtifactSpec) -> Path: ...


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _file_table(dest: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(dest).as_posix(): {"sha256": _sha256(path), "bytes": path.stat().st_size}
        for path in sorted(dest.rglob("*"))
        if path.is_file()
    }


class TinyRandomGenerator(ABC):
    """A generated model: its name, architecture, the GGUF quantizations it writes and its cache-key version.

    It writes a SafeTensors directory (``safetensors/``) and one GGUF file per
    quantization (``gguf/NAME-QUANT.gguf``) into an empty directory, byte-identically
    for a given seed.
    """

    name: str
    architecture: str
    #: GGUF quantizations it can write, in decreasing precision.
    quants: tuple[str, ...]
    version: str

    @property
    def VERSION(self) -> str:
        """Part of the resolver's cache key: bumped whenever any byte a build writes can change."""
        return self.version

    @abstractmethod
    def build(self, model: ModelSpec, dest: Path) -> dict[str, Any]:
        """Write the SafeTensors directory and every GGUF quantization ``model`` lists into ``dest``."""

    def artifact_path(self, root: Path, spec: ArtifactSpec) -> Path:
        """Where :meth:`build` put ``spec`` under ``root``: a GGUF file, or the SafeTensors directory."""
        if spec.format == "gguf":
            quant = (spec.quant or "F32").upper()
            if quant not in self.quants:
                raise MinervaError(f"{self.name} writes no GGUF {quant}; it writes {', '.join(self.quants)}")
            return Path(root) / "gguf" / f"{self.name}-{quant}.gguf"
        if spec.format == "safetensors":
            return Path(root) / "safetensors"
        raise MinervaError(
            f"{self.name} writes gguf and safetensors, not {spec.format}; derive {spec.format} from those"
        )

    def _prepare(self, model: ModelSpec, dest: Path) -> tuple[Path, list[str], int]:
        """Check ``dest`` is empty, the GGUF quantizations ``model`` asks for and the build dependencies.

        Returns ``dest`` as a path, those quantizations in decreasing precision, and the seed.
        """
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise MinervaError(f"{dest}: {self.name} builds into an empty directory, and this one is not empty")
        wanted = [(a.quant or "F32").upper() for a in model.artifacts if a.format == "gguf"] or ["F32"]
        for quant in wanted:
            if quant not in self.quants:
                raise MinervaError(
                    f"model {model.name!r}: {self.name} cannot write GGUF {quant}; it writes {', '.join(self.quants)}"
                )
        for module in ("tokenizers", "safetensors", "gguf"):
            require_package(module, self.name)
        seed = DEFAULT_SEED if model.seed is None else int(model.seed)
        return dest, sorted(set(wanted), key=self.quants.index), seed


class LlamaGenerator(TinyRandomGenerator):
    """The ``tiny-random-llama`` generator: 2 layers, grouped-query attention, an untied ``lm_head``."""

    name = NAME
    architecture = "llama"
    quants = GGUF_QUANTS
    version = VERSION

    def build(self, model: ModelSpec, dest: Path, *, permute_qk: bool = True) -> dict[str, Any]:
        """Write the SafeTensors directory and every GGUF quantization ``model`` lists into ``dest``.

        ``dest`` must be empty. The same ``model.seed`` always gives byte-identical files.
        Returns a JSON-able manifest: generator, version, seed, config, build seconds and,
        per file (relative to ``dest``), its sha256 and size. ``permute_qk=False`` writes
        GGUF files with the q/k rows in Hugging Face's order, a broken conversion that
        tests use to prove the logits comparison catches one.
        """
        started = time.perf_counter()
        dest, quants, seed = self._prepare(model, dest)
        config = TinyLlamaConfig()
        tokenizer = train_tokenizer(vocab_size=config.vocab_size)
        weights = random_weights(config, seed)

        write_safetensors_dir(dest / "safetensors", weights, tokenizer, config)
        (dest / "gguf").mkdir(parents=True)
        for quant in quants:
            write_gguf(
                dest / "gguf" / f"{self.name}-{quant}.gguf", weights, tokenizer, config, quant, permute=permute_qk
            )

        return {
            "generator": self.name,
            "version": self.VERSION,
            "seed": seed,
            "config": {**asdict(config), "head_dim": config.head_dim},
            "gguf_quants": quants,
            "tokenizer": {"corpus": CORPUS_FILE, "corpus_sha256": _sha256(corpus_path())},
            "qk_permuted": permute_qk,
            "files": _file_table(dest),
            "build_seconds": round(time.perf_counter() - started, 3),
        }


class Gemma3Generator(TinyRandomGenerator):
    """The ``tiny-random-gemma3`` generator, registered as ``"pytest_minerva.models.tiny_random:GEMMA3"``.

    :attr:`VERSION` (the cache key part) gains a ``-no-llama-cpp`` suffix where
    llama-cpp-python is not installed, since the Q4_K_M file cannot be built then; a
    later install thus gets a fresh build with it instead of the cached one without.
    """

    name = GEMMA3_NAME
    architecture = "gemma3"
    quants = GEMMA3_GGUF_QUANTS
    version = GEMMA3_VERSION

    @property
    def VERSION(self) -> str:
        return self.version if importlib.util.find_spec("llama_cpp") else f"{self.version}-no-llama-cpp"

    def build(
        self,
        model: ModelSpec,
        dest: Path,
        *,
        config: TinyGemma3Config | None = None,
        norm_shift: float = 1.0,
    ) -> dict[str, Any]:
        """Write the SafeTensors directory and every GGUF quantization ``model`` lists into ``dest``.

        ``dest`` must be empty; the same ``model.seed`` gives byte-identical files
        (Q4_K_M: with the same llama.cpp). GGUF F32 is always written, since llama.cpp
        quantizes from it. Q4_K_M is skipped, with the reason in the manifest's
        ``gguf_not_built``, where llama-cpp-python is missing. ``config`` and
        ``norm_shift`` exist for tests that need a variant or a broken conversion. The
        manifest also lists, per GGUF, how many tensors have each type and, for files
        llama.cpp quantized, every tensor's type (``llama_cpp_tensor_types``).
        """
        started = time.perf_counter()
        dest, quants, seed = self._prepare(model, dest)
        config = config or TinyGemma3Config()
        tokenizer = train_tokenizer(vocab_size=config.vocab_size)
        weights = random_gemma3_weights(config, seed)

        write_safetensors_dir(dest / "safetensors", weights, tokenizer, config)
        gguf_dir = dest / "gguf"
        gguf_dir.mkdir(parents=True)
        not_built: dict[str, str] = {}
        written: list[str] = []
        for quant in ["F32", *(q for q in quants if q != "F32")]:
            path = gguf_dir / f"{self.name}-{quant}.gguf"
            if quant in LLAMA_CPP_QUANTS:
                if importlib.util.find_spec("llama_cpp") is None:
                    not_built[quant] = "llama.cpp's quantizer is needed: pip install llama-cpp-python"
                    continue
                quantize_with_llama_cpp(gguf_dir / f"{self.name}-F32.gguf", path, quant)
            else:
                write_gemma3_gguf(path, weights, tokenizer, config, quant, norm_shift=norm_shift)
            written.append(quant)

        tensor_types = {quant: gguf_tensor_types(gguf_dir / f"{self.name}-{quant}.gguf") for quant in written}
        tools = {"gguf": _version("gguf"), "tokenizers": _version("tokenizers")}
        if any(q in LLAMA_CPP_QUANTS for q in written):
            tools["llama-cpp-python"] = _version("llama-cpp-python")
        return {
            "generator": self.name,
            "version": self.VERSION,
            "seed": seed,
            "config": {
                **asdict(config),
                "layer_types": config.layer_types,
                "query_pre_attn_scalar": config.query_pre_attn_scalar,
            },
            "gguf_quants": sorted(written, key=self.quants.index),
            "gguf_not_built": not_built,
            "gguf_type_counts": {
                quant: dict(sorted(Counter(types.values()).items())) for quant, types in tensor_types.items()
            },
            "llama_cpp_tensor_types": {q: t for q, t in tensor_types.items() if q in LLAMA_CPP_QUANTS},
            "norm_shift": norm_shift,
            "tokenizer": {"corpus": CORPUS_FILE, "corpus_sha256": _sha256(corpus_path())},
            "tools": tools,
            "files": _file_table(dest),
            "build_seconds": round(time.perf_counter() - started, 3),
        }

    def artifact_path(self, root: Path, spec: ArtifactSpec) -> Path:
        """Where :meth:`build` put ``spec``; :class:`ArtifactMissing` for a K-quant it could not build."""
        path = super().artifact_path(root, spec)
        quant = (spec.quant or "").upper()
        if spec.format == "gguf" and quant in LLAMA_CPP_QUANTS and not path.is_file():
            raise ArtifactMissing(
                f"{self.name} GGUF {quant} was not built: llama.cpp's quantizer makes it; "
                "pip install llama-cpp-python (pytest-minerva[gguf])"
            )
        return path


#: The ``tiny-random-llama`` generator.
LLAMA = LlamaGenerator()
#: The ``tiny-random-gemma3`` generator.
GEMMA3 = Gemma3Generator()

#: Generators this package provides, by the name a catalog entry's ``generator`` uses.
GENERATOR_TARGETS: dict[str, str] = {
    NAME: "pytest_minerva.models.tiny_random",
    GEMMA3_NAME: "pytest_minerva.models.tiny_random:GEMMA3",
}


def generator_for(name: str | None) -> TinyRandomGenerator:
    """The generator a catalog entry's ``generator`` names: :data:`GEMMA3` for gemma3, else :data:`LLAMA`."""
    return GEMMA3 if name == GEMMA3_NAME else LLAMA


def build(model: ModelSpec, dest: Path) -> dict[str, Any]:
    """Build ``model`` into ``dest`` with the generator ``model.generator`` names; returns the manifest."""
    return generator_for(model.generator).build(model, dest)


def artifact_path(root: Path, spec: ArtifactSpec) -> Path:
    """Where :func:`build` put ``spec`` under ``root``, by the generator ``spec.generator`` names."""
    return generator_for(spec.generator).artifact_path(root, spec)
