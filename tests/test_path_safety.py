"""Names and paths cannot leave the model and cache directories, and pickles are never loaded."""

from __future__ import annotations

import ast
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from model_files import small_gguf

from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.errors import FormatError, PathEscape, UnknownModel, UnsafeFile
from pytest_minerva.formats import verify
from pytest_minerva.models.catalog import ArtifactSpec, Catalog, ModelSpec, parse_catalog
from pytest_minerva.models.local import model_from_path, select_models
from pytest_minerva.models.resolve import Resolver

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_minerva"


def safetensors_dir(root: Path) -> Path:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    root.mkdir(parents=True, exist_ok=True)
    safetensors_numpy.save_file({"w": np.ones((2, 2), np.float32)}, str(root / "model.safetensors"))
    (root / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    return root


@pytest.fixture
def toy() -> ModelSpec:
    return ModelSpec(
        "toy",
        "llama",
        artifacts=(
            ArtifactSpec("gguf", "F32", files=("toy.gguf",), primary=True),
            ArtifactSpec("safetensors", "f32", primary=True),
        ),
    )


# -- --model values ----------------------------------------------------------------------------


def test_model_option_naming_a_system_file_is_refused(pytester: pytest.Pytester) -> None:
    passwd = os.path.relpath("/etc/passwd", pytester.path)
    assert passwd.startswith("../")
    result = pytester.runpytest("--model", passwd, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: --model {passwd}: not a model file; a path must be a .gguf file or a model directory*"]
    )


@pytest.mark.parametrize("value", ["../../etc/shadow-nope", "smollm2-135m/../../x", "/nonexistent/model", "~nobody/x"])
def test_model_values_that_are_neither_names_nor_existing_paths(value: str) -> None:
    with pytest.raises(UnknownModel, match=r"no such file or directory, and not a catalog name \(names use"):
        select_models(Catalog.load(), [value])


def test_a_name_without_slashes_must_be_in_the_catalog() -> None:
    with pytest.raises(UnknownModel, match=r"^unknown model 'no-such-model': not a path and not in the catalog"):
        select_models(Catalog.load(), ["no-such-model"])


def test_explicit_model_paths_still_work(tmp_path: Path) -> None:
    gguf_file = small_gguf(tmp_path / "my model (1).gguf")
    [model] = select_models(Catalog(), [str(gguf_file)])
    assert model.explicit_path == tmp_path and model.primary("gguf") is not None
    [model] = select_models(Catalog(), [str(safetensors_dir(tmp_path / "hf"))])
    assert model.primary("safetensors") is not None


# -- catalog entries, from TOML and from plugins -------------------------------------------------


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/x.gguf", "..", "a\\b.gguf"])
def test_plugin_catalog_entries_with_escaping_file_names_are_refused(name: str) -> None:
    model = ModelSpec("evil", "llama", artifacts=(ArtifactSpec("gguf", files=(name,)),))
    with pytest.raises(PathEscape, match=r"^model 'evil' artifact #1: file name .* must be a plain file name"):
        Catalog().add(model)


def test_plugin_catalog_entries_are_checked_through_the_hook(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_minerva.models.catalog import ArtifactSpec, ModelSpec

        def pytest_minerva_register_models(catalog):
            catalog.add(ModelSpec("evil", "llama", artifacts=(
                ArtifactSpec("gguf", package_module="os", package_path="../../../etc/passwd"),)))
        """
    )
    # named on the command line: the plugin starts at configure time, and the entry is refused there
    result = pytester.runpytest("--collect-only", "--minerva-model", "smollm2-135m")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: model 'evil' artifact #1: file name '../../../etc/passwd' must be a plain*"])
    # used only by a test's fixture: the plugin starts at collection, and the entry is refused there
    pytester.makepyfile("def test_uses(backend):\n    pass\n")
    result = pytester.runpytest("--collect-only")
    assert result.ret != pytest.ExitCode.OK
    assert (
        "model 'evil' artifact #1: file name '../../../etc/passwd' must be a plain"
        in result.stdout.str() + result.stderr.str()
    )


@pytest.mark.parametrize("alias", ["../up", "UP"])
def test_plugin_aliases_are_checked(alias: str) -> None:
    with pytest.raises(PathEscape, match="alias"):
        Catalog().add(ModelSpec("ok", "llama", aliases=(alias,)))


def test_a_model_name_that_would_escape_the_model_dir_is_refused(tmp_path: Path) -> None:
    evil = ModelSpec("../outside", "llama", artifacts=(ArtifactSpec("gguf", files=("x.gguf",)),))
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path / "models", verify=False)
    with pytest.raises(PathEscape, match=r"model name '\.\./outside' is not allowed"):
        resolver.resolve(evil, evil.artifacts[0])


# -- symlinks in the model directory -------------------------------------------------------------


def test_a_symlinked_shard_inside_a_model_directory_is_refused(toy: ModelSpec, tmp_path: Path) -> None:
    outside = safetensors_dir(tmp_path / "elsewhere")
    local = tmp_path / "models" / "toy" / "safetensors"
    local.mkdir(parents=True)
    (local / "config.json").write_text((outside / "config.json").read_text())
    os.symlink(outside / "model.safetensors", local / "model.safetensors")
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path / "models", verify=False)
    with pytest.raises(PathEscape, match=r"model.safetensors: resolves to .*elsewhere/model.safetensors, outside"):
        resolver.resolve(toy, toy.artifact("safetensors"))


def test_a_symlinked_model_directory_is_refused(toy: ModelSpec, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    small_gguf(outside / "toy.gguf")
    (tmp_path / "models").mkdir()
    os.symlink(outside, tmp_path / "models" / "toy")
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=tmp_path / "models", verify=False)
    with pytest.raises(PathEscape, match="outside"):
        resolver.resolve(toy, toy.artifact("gguf"))


def test_symlinks_that_stay_inside_the_model_dir_are_fine(toy: ModelSpec, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "toy").mkdir(parents=True)
    real = small_gguf(models / "shared.gguf")
    os.symlink(real, models / "toy" / "toy.gguf")
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=models, verify=False)
    assert resolver.resolve(toy, toy.artifact("gguf")).path == real


# -- the artifact cache ---------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "key"), [("derived", "../../x"), ("../derived", "k"), ("derived", "/abs"), ("d", "")])
def test_cache_keys_cannot_escape(tmp_path: Path, kind: str, key: str) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(PathEscape, match="must be a plain name"):
        cache.get_or_build(kind, key, lambda tmp: {})


def test_a_cache_entry_symlinked_outside_the_cache_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "minerva-artifact.json").write_text("{}")
    cache = ArtifactCache(tmp_path / "cache")
    (cache.root / "derived").mkdir(parents=True)
    os.symlink(planted, cache.root / "derived" / "key")
    with pytest.raises(PathEscape, match=r"derived/key: resolves to .*planted, outside the cache"):
        cache.get_or_build("derived", "key", lambda tmp: {})


def test_a_symlink_planted_inside_a_cache_entry_is_refused(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    entry = cache.get_or_build("derived", "key", lambda tmp: (tmp / "sub").mkdir() or {})
    assert entry.built
    (tmp_path / "secret").write_text("x")
    os.symlink(tmp_path / "secret", entry.path / "sub" / "model.safetensors")
    with pytest.raises(PathEscape, match=r"sub/model.safetensors: resolves to .*secret, outside the cache"):
        cache.get_or_build("derived", "key", lambda tmp: {})
    os.unlink(entry.path / "sub" / "model.safetensors")
    os.symlink(entry.path / "minerva-artifact.json", entry.path / "sub" / "inside")
    assert cache.get_or_build("derived", "key", lambda tmp: {}).built is False


# -- never unpickle -------------------------------------------------------------------------------

PICKLE_MESSAGE = (
    r"a PyTorch/pickle checkpoint \({suffix}\) is refused: loading one unpickles it, which runs whatever code the "
    r"file contains; use the model's SafeTensors weights \(\*.safetensors\) or a GGUF file"
)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt"])
def test_pickled_checkpoints_are_refused_with_a_pointer_to_safetensors(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x02}q\x00.")  # a pickle; it is never opened by pickle
    with pytest.raises(UnsafeFile, match=rf"^{path}: " + PICKLE_MESSAGE.format(suffix=suffix)):
        select_models(Catalog(), [str(path)])
    with pytest.raises(FormatError, match=PICKLE_MESSAGE.format(suffix=suffix)):
        verify(path)


def test_pickles_are_recognised_without_a_suffix(tmp_path: Path) -> None:
    for name, head in [("torch_zip", b"PK\x03\x04" + bytes(12)), ("pickle", b"\x80\x04\x95" + bytes(12))]:
        path = tmp_path / name
        path.write_bytes(head)
        with pytest.raises(FormatError, match=PICKLE_MESSAGE.format(suffix="pickle")):
            verify(path)


def test_directories_with_only_pickled_weights_are_refused(tmp_path: Path, toy: ModelSpec) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "pytorch_model.bin").write_bytes(b"\x80\x02.")
    with pytest.raises(UnsafeFile, match=PICKLE_MESSAGE.format(suffix=".bin")):
        model_from_path(hf)
    models = tmp_path / "models"
    (models / "toy").mkdir(parents=True)
    os.rename(hf, models / "toy" / "safetensors")
    resolver = Resolver(ArtifactCache(tmp_path / "cache"), model_dir=models, verify=False)
    with pytest.raises(UnsafeFile, match=PICKLE_MESSAGE.format(suffix=".bin")):
        resolver.resolve(toy, toy.artifact("safetensors"))


def test_catalog_entries_naming_pickles_are_refused() -> None:
    text = "[models.x]\narchitecture='llama'\n[[models.x.artifacts]]\nformat='safetensors'\nfiles=['pytorch_model.bin']"
    with pytest.raises(UnsafeFile, match=r"^cat.toml: model 'x' artifact #1: file 'pytorch_model.bin': a PyTorch"):
        parse_catalog(text, "cat.toml")


def test_a_gguf_named_bin_and_a_safetensors_whose_length_looks_like_a_pickle(tmp_path: Path) -> None:
    gguf_bin = tmp_path / "old-name.bin"
    gguf_bin.write_bytes(small_gguf(tmp_path / "real.gguf").read_bytes())
    assert verify(gguf_bin).format == "gguf"
    select_models(Catalog(), [str(gguf_bin)])
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    header += b" " * (0x0280 - len(header))  # length 640: its first two bytes are 0x80 0x02, a pickle's opening
    raw = struct.pack("<Q", len(header)) + header + bytes(4)
    assert raw[:2] == b"\x80\x02"
    for name in ("w.safetensors", "no-suffix"):
        (tmp_path / name).write_bytes(raw)
        assert verify(tmp_path / name).tensor_count == 1


def _calls(tree: ast.AST) -> list[tuple[str, ast.Call]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.append((ast.unparse(node.func), node))
    return found


def test_the_package_never_unpickles() -> None:
    """No pickle import anywhere, torch.load only with weights_only=True, np.load never with allow_pickle."""
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib") for n in names):
                    problems.append(f"{path.name}:{node.lineno}: imports {names}")
        for func, call in _calls(tree):
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if func.endswith("torch.load") and keywords.get("weights_only") != "True":
                problems.append(f"{path.name}:{call.lineno}: {func} without weights_only=True")
            if func.endswith(("np.load", "numpy.load")) and keywords.get("allow_pickle", "False") != "False":
                problems.append(f"{path.name}:{call.lineno}: {func} with allow_pickle")
            if func.endswith(("pickle.load", "pickle.loads", "Unpickler")):
                problems.append(f"{path.name}:{call.lineno}: {func}")
    assert problems == []
    assert len(list(PACKAGE.rglob("*.py"))) > 30  # the scan saw the package
