"""A model file is what the catalog says it is: its header's identity facts, and its pin.

The catalog states per model the facts a file's header carries (architecture, block count,
embedding length, head counts, vocabulary size, context length) and per artifact its
quantization; resolution holds every file against them before any engine sees it. A file whose
bytes differ from the catalog's sha256 pin is accepted only when those facts match, and is then
labelled "unpinned" in the header, the artifacts report and the bench JSON.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from model_files import small_gguf

from pytest_minerva.derive.cache import ArtifactCache
from pytest_minerva.errors import FormatError
from pytest_minerva.models.catalog import Catalog, CatalogError, ModelSpec, parse_catalog
from pytest_minerva.models.identity import describe_facts
from pytest_minerva.models.resolve import Resolver
from pytest_minerva.options import Settings
from pytest_minerva.session import build_session

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINYLLAMA_Q4_K_M = "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"


def _resolved(model: str, fmt: str, quant: str | None = None) -> Path:
    """A catalog model's artifact as this machine resolves it (generated, derived or shipped)."""
    session = build_session(Settings(models=[model]))
    spec = session.models[0]
    artifact = next(a for a in spec.variants(fmt) if quant is None or (a.quant or "").lower() == quant.lower())
    try:
        return Path(session.resolver.resolve(spec, artifact).path)
    except Exception as exc:  # the embedded model's package is not installed
        pytest.skip(f"{model} {fmt} is not available here: {exc}")


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$MINERVA_MODEL_DIR`` in a temporary directory, and an empty Hugging Face cache."""
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("MINERVA_MODEL_DIR", str(root))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    return root


def _resolver(tmp_path: Path, model_dir: Path) -> Resolver:
    return Resolver(
        ArtifactCache(tmp_path / "cache"), model_dir=model_dir, hf_cache=tmp_path / "hf", catalog=list(Catalog.load())
    )


def test_every_catalog_model_states_its_identity_facts() -> None:
    for model in Catalog.load():
        assert set(model.facts) == {"block_count", "embedding_length", "head_count", "head_count_kv", "vocab_size"}
        assert model.architecture and model.context_length, model.name


def test_smollm2_renamed_as_tinyllama_is_refused_naming_the_fact(tmp_path: Path, model_dir: Path) -> None:
    source = _resolved("smollm2-135m", "gguf")
    (model_dir / "tinyllama").mkdir()
    placed = model_dir / "tinyllama" / TINYLLAMA_Q4_K_M
    shutil.copy2(source, placed)
    tinyllama = Catalog.load().get("tinyllama")
    with pytest.raises(FormatError) as refused:
        _resolver(tmp_path, model_dir).resolve(tinyllama, tinyllama.artifact("gguf"))
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        f"{placed.resolve()}: is not tinyllama's gguf Q4_K_M: block_count is 30, the catalog expects 22 "
        "(and embedding_length, head_count, head_count_kv, vocab_size, context_length, quant differ too); "
        "it looks like smollm2-135m"
    )


def test_the_renamed_file_fails_the_suite_with_that_one_line(tmp_path: Path) -> None:
    """The issue's own run: ``pytest -m gguf --model tinyllama`` on the shipped artifact test."""
    source = _resolved("smollm2-135m", "gguf")
    root = tmp_path / "models"
    (root / "tinyllama").mkdir(parents=True)
    shutil.copy2(source, root / "tinyllama" / TINYLLAMA_Q4_K_M)
    env = {**os.environ, "MINERVA_MODEL_DIR": str(root), "HF_HUB_CACHE": str(tmp_path / "hf")}
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "gguf", "--model", "tinyllama"]
    command += ["--pyargs", "pytest_minerva.suites.test_artifacts", "-q", "-rfEs"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-2000:]
    # The artifact fixture fails (pytest reports it as an error at setup), naming the file and the fact.
    failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    assert len(failed) == 1, done.stdout[-3000:]
    assert "test_artifact_verifies[tinyllama-gguf-q4_k_m]" in failed[0]
    reason = next(line for line in done.stdout.splitlines() if line.endswith("it looks like smollm2-135m"))
    assert reason.startswith(f"{root.resolve() / 'tinyllama' / TINYLLAMA_Q4_K_M}: is not tinyllama's gguf Q4_K_M: ")
    assert "block_count is 30, the catalog expects 22" in reason
    assert "Traceback" not in done.stdout


def test_a_safetensors_directory_of_another_model_is_refused(tmp_path: Path, model_dir: Path) -> None:
    source = _resolved("tiny-random-gemma3", "safetensors")
    placed = model_dir / "tiny-random-llama" / "safetensors"
    shutil.copytree(source, placed)
    llama = Catalog.load().get("tiny-random-llama")
    with pytest.raises(FormatError) as refused:
        _resolver(tmp_path, model_dir).resolve(llama, llama.artifact("safetensors"))
    message = str(refused.value)
    assert message.startswith(f"{placed.resolve()}: is not tiny-random-llama's safetensors")
    assert "architecture is gemma3_text, the catalog expects llama" in message
    assert message.endswith("; it looks like tiny-random-gemma3")


QUANT_CATALOG = """
[models.toy-llama]
architecture = "llama"
context_length = 512

[models.toy-llama.facts]
block_count = 2
embedding_length = 128
head_count = 4
head_count_kv = 2
vocab_size = 512

[[models.toy-llama.artifacts]]
format = "gguf"
quant = "Q4_0"
files = ["toy-llama.Q4_0.gguf"]
primary = true
"""


def test_a_q8_0_file_under_a_q4_0_name_is_refused(tmp_path: Path, model_dir: Path) -> None:
    source = _resolved("tiny-random-llama", "gguf", "Q8_0")
    toy = parse_catalog(QUANT_CATALOG, "toy.toml")["toy-llama"]
    (model_dir / "toy-llama").mkdir()
    placed = model_dir / "toy-llama" / "toy-llama.Q4_0.gguf"
    shutil.copy2(source, placed)
    with pytest.raises(FormatError) as refused:
        _resolver(tmp_path, model_dir).resolve(toy, toy.artifact("gguf"))
    assert str(refused.value) == (
        f"{placed.resolve()}: is not toy-llama's gguf Q4_0: quant is Q8_0, the catalog expects Q4_0; "
        "it looks like tiny-random-llama"
    )


def _one_byte_changed(source: Path, target: Path) -> None:
    """A copy of ``source`` with one letter of its ``general.name`` changed: other bytes, the same model."""
    data = bytearray(source.read_bytes())
    at = data.find(b"Smollm2", 0, 1 << 20)
    assert at > 0, "no model name in the header to change"
    data[at] = ord("s")
    target.write_bytes(bytes(data))


def test_a_user_file_other_than_the_pin_is_accepted_unpinned_when_its_facts_match(
    tmp_path: Path, model_dir: Path
) -> None:
    source = _resolved("smollm2-135m", "gguf")
    (model_dir / "smollm2-135m").mkdir()
    placed = model_dir / "smollm2-135m" / SMOLLM2_FILE
    _one_byte_changed(source, placed)
    smollm2 = Catalog.load().get("smollm2-135m")
    artifact = _resolver(tmp_path, model_dir).resolve(smollm2, smollm2.artifact("gguf"))
    assert artifact.source == "model-dir"
    assert artifact.unpinned.startswith("sha256 is ") and f"the catalog expects {smollm2.artifact('gguf').sha256}" in (
        artifact.unpinned
    )
    assert "UNPINNED: sha256 is" in artifact.describe()
    assert artifact.record()["unpinned"] == artifact.unpinned
    assert artifact.facts["block_count"] == 30 and artifact.facts["quant"] == "Q4_1"

    # The shipped file itself is pinned: its sha256 is the catalog's.
    shipped = _resolver(tmp_path, tmp_path / "nowhere").resolve(smollm2, smollm2.artifact("gguf"))
    assert shipped.unpinned == "" and shipped.sha256 == smollm2.artifact("gguf").sha256


def test_unpinned_files_are_named_in_the_header(tmp_path: Path, model_dir: Path) -> None:
    source = _resolved("smollm2-135m", "gguf")
    (model_dir / "smollm2-135m").mkdir()
    _one_byte_changed(source, model_dir / "smollm2-135m" / SMOLLM2_FILE)
    (model_dir / "tinyllama").mkdir()
    shutil.copy2(source, model_dir / "tinyllama" / TINYLLAMA_Q4_K_M)
    session = build_session(Settings(models=["smollm2-135m", "tinyllama"], cache_dir=str(tmp_path / "cache")))
    header = [line for line in session.report_header() if "UNPINNED" in line]
    assert len(header) == 2, session.report_header()
    assert header[0].startswith("minerva: UNPINNED smollm2-135m gguf Q4_1 at ") and ": sha256 is " in header[0]
    assert header[1].startswith("minerva: UNPINNED tinyllama gguf Q4_K_M at ")
    assert header[1].endswith(": the catalog pins no sha256 for it")


def test_a_file_given_by_path_shows_the_facts_it_states(tmp_path: Path) -> None:
    path = small_gguf(tmp_path / "mine.gguf", context_length=64)
    session = build_session(Settings(models=[str(path)], cache_dir=str(tmp_path / "cache")))
    lines = [line for line in session.report_header() if str(path) in line]
    assert lines == [f"minerva: {session.models[0].name} is {path}: llama, context 64, F32"] or (
        len(lines) == 1 and "llama" in lines[0] and "context 64" in lines[0]
    ), session.report_header()


def test_a_derived_safetensors_directory_states_the_facts_of_its_source(tmp_path: Path) -> None:
    session = build_session(Settings(models=["smollm2-135m"]))
    model = session.models[0]
    try:
        gguf = session.resolver.resolve(model, model.artifact("gguf"))
        derived = session.resolver.resolve(model, model.artifact("safetensors"))
    except Exception as exc:
        pytest.skip(f"smollm2-135m is not available here: {exc}")
    assert derived.source == "derived"
    same = {k: v for k, v in gguf.facts.items() if k not in ("quant", "context_length")}
    assert {k: derived.facts[k] for k in same} == same
    assert describe_facts(gguf.facts).startswith("llama, 30 blocks, embedding 576, 9 heads (3 KV), vocab 49152")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[models.toy.facts]\nlayers = 2\n", "unknown fact(s) ['layers']"),
        ("[models.toy.facts]\nblock_count = 0\n", "fact block_count must be a whole number of 1 or more, got 0"),
        ("[models.toy.facts]\nvocab_size = true\n", "fact vocab_size must be a whole number of 1 or more, got True"),
    ],
)
def test_bad_facts_in_a_catalog_are_refused_naming_them(table: str, message: str) -> None:
    text = '[models.toy]\narchitecture = "llama"\n\n' + table + '\n[[models.toy.artifacts]]\nformat = "gguf"\n'
    text += 'files = ["toy.gguf"]\nprimary = true\n'
    with pytest.raises(CatalogError, match=re.escape(message)):
        parse_catalog(text, "toy.toml")


def test_model_spec_facts_default_to_none_stated() -> None:
    assert ModelSpec(name="bare", architecture="llama").facts == {}


def test_bench_labels_an_unpinned_file_in_its_json_and_report(tmp_path: Path, model_dir: Path) -> None:
    from command_line import run_cli

    from pytest_minerva.storage import results

    source = _resolved("smollm2-135m", "gguf")
    (model_dir / "smollm2-135m").mkdir()
    _one_byte_changed(source, model_dir / "smollm2-135m" / SMOLLM2_FILE)
    out = tmp_path / "bench.json"
    argv = ["--model", "smollm2-135m", "--backend", "llama_cpp", "--scenario", "short", "--runs", "1", "--warmup", "0"]
    ran = run_cli("bench", *argv, "--no-kv-probe", "--no-numerics", "--threads", "1", "--json", str(out))
    assert ran.code == 0, ran.err
    backend = results.load(out)["backends"][0]
    artifact = backend["artifact"]
    assert artifact["source"] == "model-dir" and artifact["unpinned"].startswith("sha256 is ")
    assert artifact["facts"]["block_count"] == 30 and artifact["facts"]["quant"] == "Q4_1"
    title = next(line for line in ran.out.splitlines() if line.startswith("### llama_cpp"))
    assert title.endswith(f"(UNPINNED: {artifact['unpinned']})")
