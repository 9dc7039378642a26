"""The built-in backend adapters, each running the real SmolLM2-135M model.

Every backend is loaded once per module (a module-scoped fixture per engine and
format) with one thread, since these tests check values, not speed. The SafeTensors
and MLX directories are derived from the GGUF into the artifact cache on first use.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pytest_minerva.backends import Backend, GenerationRequest, LoadOptions, builtin_registry
from pytest_minerva.derive.cache import ArtifactCache, default_cache_dir
from pytest_minerva.errors import ArtifactMissing, BackendUnavailable, FormatError, MinervaError
from pytest_minerva.models.catalog import Catalog
from pytest_minerva.models.resolve import ResolvedArtifact, Resolver

MODEL = "smollm2-135m"
OPTIONS = LoadOptions(device="cpu", threads=1, n_ctx=512)

TEXTS = (
    "The capital of France is",
    " leading space and  two spaces",
    "Unicode: naïve café, Ελληνικά, 日本語, emoji 🙂",
    "<|im_start|>user\nhi<|im_end|>",
    "line one\n\nline two\twith a tab",
    "",
)

# 32 tokens of ordinary prose, for comparing a full pass with a cached decode.
PROSE = (
    "The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon, and "
    "Neil Armstrong became the first person to walk on its surface, followed by Buzz Aldrin."
)

# max |incremental_logits - logits| over PROSE, measured on this model (logits reach |31.9|):
# llama.cpp 0.94 without flash attention (its single-token attention path rounds differently;
# with flash attention the two are bit-identical), transformers 1e-4, MLX 0.
INCREMENTAL_BOUND = {"llama_cpp": 1.5, "transformers": 1e-3, "mlx_lm": 1e-4}


@dataclass(frozen=True)
class Case:
    engine: str
    fmt: str

    @property
    def id(self) -> str:
        return f"{self.engine}-{self.fmt}"


CASES = (
    Case("llama_cpp", "gguf"),
    Case("transformers", "gguf"),
    Case("transformers", "safetensors"),
    Case("mlx_lm", "mlx"),
)
# Reloading is cheap for these; transformers-on-GGUF dequantizes for ~20 s and shares close().
CHEAP_CASES = (CASES[0], CASES[2], CASES[3])


@pytest.fixture(scope="module")
def resolver() -> Resolver:
    return Resolver(ArtifactCache(default_cache_dir()), verify=False)


def resolve(resolver: Resolver, fmt: str) -> ResolvedArtifact:
    model = Catalog.load().get(MODEL)
    try:
        return resolver.resolve(model, model.artifact(fmt))
    except ArtifactMissing as exc:
        pytest.skip(f"{MODEL} {fmt} is not available here: {exc}")


def build(resolver: Resolver, case: Case, options: LoadOptions = OPTIONS) -> Backend:
    spec = builtin_registry().get(case.engine)
    for module in spec.requires:
        pytest.importorskip(module)
    return spec.build(resolve(resolver, case.fmt), options)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.id)
def case_backend(request: pytest.FixtureRequest, resolver: Resolver) -> Iterator[tuple[Case, Backend]]:
    backend = build(resolver, request.param)
    yield request.param, backend
    backend.close()


@pytest.fixture
def adapter(case_backend: tuple[Case, Backend]) -> Backend:
    """The loaded backend (``backend`` is the plugin's own matrix fixture)."""
    return case_backend[1]


@pytest.fixture(scope="module")
def gguf_path(resolver: Resolver) -> str:
    return str(resolve(resolver, "gguf").path)


@pytest.fixture(scope="module")
def reference_tokenize(gguf_path: str) -> Iterator[Callable[[str], list[int]]]:
    """llama.cpp's tokenizer on the GGUF, called directly: no BOS, special tokens as text."""
    llama_cpp = pytest.importorskip("llama_cpp")
    vocab = llama_cpp.Llama(gguf_path, vocab_only=True, verbose=False)
    yield lambda text: list(vocab.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    vocab.close()


@pytest.fixture(scope="module")
def gguf_tokenizer_ids(gguf_path: str) -> dict[str, int]:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(gguf_path)

    def scalar(key: str) -> int:
        return int(reader.fields[key].contents())

    return {
        "bos": scalar("tokenizer.ggml.bos_token_id"),
        "eos": scalar("tokenizer.ggml.eos_token_id"),
        "add_bos": scalar("tokenizer.ggml.add_bos_token"),
        "vocab": len(reader.fields["tokenizer.ggml.tokens"].data),
    }


def chat_prompt(backend: Backend) -> list[int]:
    """A ChatML question that SmolLM2 answers in a few tokens and then ends with EOS."""
    assert backend.bos_id is not None
    assert backend.eos_id is not None
    return [
        backend.bos_id,
        *backend.tokenize("user\nWhat is the capital of France? Answer in one word."),
        backend.eos_id,
        *backend.tokenize("\n"),
        backend.bos_id,
        *backend.tokenize("assistant\n"),
    ]


def test_backend_satisfies_the_protocol_and_reports_itself(case_backend: tuple[Case, Backend]) -> None:
    case, backend = case_backend
    assert isinstance(backend, Backend)
    assert backend.name == case.engine
    assert backend.device == "cpu"
    info = backend.info()
    assert info["backend"] == case.engine
    assert info["device"] == "cpu"
    assert info["n_ctx"] == OPTIONS.n_ctx
    assert isinstance(info["version"], str)
    assert info["version"]
    if case.engine != "mlx_lm":
        assert info["threads"] == 1


def test_reference_tokenizers_agree(reference_tokenize: Callable[[str], list[int]], gguf_path: str) -> None:
    """llama.cpp's C++ tokenizer and the Hugging Face one transformers builds from the GGUF."""
    pytest.importorskip("transformers")

    from transformers import AutoTokenizer

    path = Path(gguf_path)
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for text in TEXTS:
        hf_ids = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert hf_ids == reference_tokenize(text), text


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_tokenize_matches_the_reference_and_round_trips(
    adapter: Backend, reference_tokenize: Callable[[str], list[int]], text: str
) -> None:
    ids = adapter.tokenize(text)
    assert ids == reference_tokenize(text)
    assert adapter.detokenize(ids) == text


def test_special_token_syntax_is_plain_text(adapter: Backend) -> None:
    ids = adapter.tokenize("<|im_end|>")
    assert adapter.eos_id not in ids
    assert len(ids) > 1
    assert adapter.detokenize([adapter.eos_id]) == "<|im_end|>"


def test_bos_and_eos_are_the_ggufs_and_add_bos_prepends_it(
    adapter: Backend, gguf_tokenizer_ids: dict[str, int]
) -> None:
    assert adapter.bos_id == gguf_tokenizer_ids["bos"]
    assert adapter.eos_id == gguf_tokenizer_ids["eos"]
    # The GGUF says not to add BOS; the contract adds it on request on every backend anyway.
    assert gguf_tokenizer_ids["add_bos"] == 0
    text = "The capital of France is"
    assert adapter.tokenize(text, add_bos=True) == [gguf_tokenizer_ids["bos"], *adapter.tokenize(text)]
    assert adapter.tokenize("", add_bos=True) == [gguf_tokenizer_ids["bos"]]


def test_logits_shape_dtype_and_vocab(adapter: Backend, gguf_tokenizer_ids: dict[str, int]) -> None:
    ids = adapter.tokenize(PROSE)[:7]
    logits = adapter.logits(ids)
    assert adapter.vocab_size == gguf_tokenizer_ids["vocab"]
    assert logits.shape == (7, gguf_tokenizer_ids["vocab"])
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert logits.std(axis=1).min() > 1.0


def test_greedy_next_token_after_the_capital_of_france_is_paris(adapter: Backend) -> None:
    logits = adapter.logits(adapter.tokenize("The capital of France is"))
    assert adapter.detokenize([int(logits[-1].argmax())]) == " Paris"


@pytest.mark.parametrize("prefix_len", [0, 16, 32])
def test_incremental_logits_match_the_full_pass(case_backend: tuple[Case, Backend], prefix_len: int) -> None:
    case, backend = case_backend
    ids = backend.tokenize(PROSE, add_bos=True)[:32]
    assert len(ids) == 32
    full = backend.logits(ids)
    incremental = backend.incremental_logits(ids, prefix_len)
    assert incremental.shape == full.shape
    assert incremental.dtype == np.float32
    worst = float(np.abs(incremental - full).max())
    assert worst <= INCREMENTAL_BOUND[case.engine]
    assert (incremental.argmax(axis=1) == full.argmax(axis=1)).mean() >= 0.9


def test_incremental_logits_reject_a_prefix_past_the_end(adapter: Backend) -> None:
    with pytest.raises(MinervaError, match=r"prefix_len 4 is outside 0\.\.3"):
        adapter.incremental_logits([1, 2, 3], 4)


def test_llama_cpp_with_flash_attention_decodes_bit_identically(resolver: Resolver) -> None:
    options = LoadOptions(device="cpu", threads=1, n_ctx=512, extra={"flash_attn": True})
    backend = build(resolver, CASES[0], options)
    try:
        ids = backend.tokenize(PROSE, add_bos=True)[:32]
        np.testing.assert_array_equal(backend.incremental_logits(ids, 5), backend.logits(ids))
        assert backend.info()["flash_attn"] is True
    finally:
        backend.close()


def test_stream_goes_past_eos_along_the_greedy_chain(case_backend: tuple[Case, Backend]) -> None:
    case, backend = case_backend
    prompt = chat_prompt(backend)
    events = list(backend.stream(GenerationRequest(tuple(prompt), max_tokens=16)))
    tokens = [e.token for e in events]

    assert [e.index for e in events] == list(range(16))
    assert backend.eos_id in tokens[:-1], "the prompt should make the model emit EOS early"
    assert all(later.time_s > earlier.time_s for earlier, later in itertools.pairwise(events))
    assert [e.finish_reason for e in events] == [None] * 15 + ["length"]
    assert "".join(e.text for e in events) == backend.detokenize(tokens)
    assert backend.detokenize(tokens).startswith("The capital of France is Paris.<|im_end|>")

    # The same computation as the stream (prefill, then one cached step per token): exact argmax.
    cached = backend.incremental_logits(prompt + tokens[:-1], len(prompt))[len(prompt) - 1 :]
    assert tokens == [int(row.argmax()) for row in cached]
    # One full forward pass: the same chain, up to that backend's measured rounding.
    full = backend.logits(prompt + tokens[:-1])[len(prompt) - 1 :]
    bound = INCREMENTAL_BOUND[case.engine]
    for row, token in zip(full, tokens, strict=True):
        assert row[token] >= row.max() - 2 * bound


def test_stream_stops_at_eos_when_asked(adapter: Backend) -> None:
    prompt = tuple(chat_prompt(adapter))
    full = [e.token for e in adapter.stream(GenerationRequest(prompt, max_tokens=16))]
    events = list(adapter.stream(GenerationRequest(prompt, max_tokens=16, ignore_eos=False)))
    first_eos = full.index(adapter.eos_id)
    assert [e.token for e in events] == full[: first_eos + 1]
    assert events[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(adapter: Backend) -> None:
    prompt = tuple(chat_prompt(adapter))

    def sample(seed: int) -> list[int]:
        request = GenerationRequest(prompt, max_tokens=16, temperature=1.0, seed=seed)
        return [e.token for e in adapter.stream(request)]

    first = sample(1234)
    assert sample(1234) == first
    assert sample(4321) != first
    assert all(0 <= t < adapter.vocab_size for t in first)


def test_stream_refuses_more_tokens_than_the_context(adapter: Backend) -> None:
    request = GenerationRequest((1, 2, 3), max_tokens=OPTIONS.n_ctx)
    with pytest.raises(MinervaError, match=r"exceed the context of 512"):
        list(adapter.stream(request))


@pytest.mark.parametrize("case", CHEAP_CASES, ids=lambda c: c.id)
def test_close_twice_is_safe_and_later_calls_fail(resolver: Resolver, case: Case) -> None:
    backend = build(resolver, case)
    assert backend.tokenize("hi")
    backend.close()
    backend.close()
    with pytest.raises(MinervaError, match=r"is closed"):
        backend.tokenize("hi")


@pytest.fixture(scope="module")
def llama(resolver: Resolver) -> Iterator[Backend]:
    backend = build(resolver, CASES[0])
    yield backend
    backend.close()


def test_llama_cpp_perf_counters_count_prefill_and_decode(llama: Backend) -> None:
    prompt = tuple(chat_prompt(llama))
    list(llama.stream(GenerationRequest(prompt, max_tokens=4)))
    llama.reset_perf_counters()  # type: ignore[attr-defined]
    list(llama.stream(GenerationRequest(prompt, max_tokens=12)))
    counters = llama.perf_counters()  # type: ignore[attr-defined]
    assert counters["n_p_eval"] == len(prompt)
    assert counters["n_eval"] == 12 - 1
    assert counters["n_sample"] == 12
    assert counters["t_p_eval_ms"] > 0
    assert counters["t_eval_ms"] > 0
    assert counters["t_load_ms"] > 0


def test_llama_cpp_perf_counters_for_a_one_token_prompt(llama: Backend) -> None:
    """A one-token prefill is a single-token decode to llama.cpp, and it reports a count of 0 as 1."""
    llama.perf_counters(reset=True)  # type: ignore[attr-defined]
    assert llama.perf_counters()["t_eval_ms"] == 0.0  # type: ignore[attr-defined]
    list(llama.stream(GenerationRequest((1,), max_tokens=12)))
    counters = llama.perf_counters()  # type: ignore[attr-defined]
    assert counters["n_eval"] == 12
    assert counters["n_p_eval"] == 1
    assert counters["t_p_eval_ms"] == 0.0


@pytest.fixture
def transformers_backend(case_backend: tuple[Case, Backend]) -> Backend:
    case, backend = case_backend
    if case.engine != "transformers":
        pytest.skip("batched generation is a transformers-only extra")
    return backend


def test_transformers_batch_matches_one_prompt_at_a_time(transformers_backend: Backend) -> None:
    backend = transformers_backend
    prompts = [
        backend.tokenize("The capital of France is"),
        chat_prompt(backend),
        backend.tokenize("1, 2, 3,"),
    ]
    alone = [[e.token for e in backend.stream(GenerationRequest(tuple(p), max_tokens=8))] for p in prompts]
    assert backend.generate_batch(prompts, 8) == alone  # type: ignore[attr-defined]
    timed = backend.timed_generate_batch(prompts, 8)  # type: ignore[attr-defined]
    assert timed.tokens == alone
    assert len(timed.step_times_s) == 8
    assert timed.start_s < timed.step_times_s[0]
    assert all(b > a for a, b in itertools.pairwise(timed.step_times_s))


@pytest.mark.parametrize(
    ("engine", "device", "message"),
    [
        ("llama_cpp", "cuda", r"llama_cpp: device 'cuda' needs GPU offload, but .* is a CPU-only build"),
        ("llama_cpp", "tpu", r"llama_cpp: unknown device 'tpu'"),
        ("transformers", "cuda", r"transformers: device 'cuda' is not available to torch"),
        ("transformers", "tpu", r"transformers: unknown device 'tpu'"),
        ("mlx_lm", "cuda", r"mlx_lm: device 'cuda' is not supported; use cpu or metal"),
        ("mlx_lm", "metal", r"mlx_lm: device 'metal' is not available"),
    ],
)
def test_unavailable_device_is_refused_with_a_reason(
    resolver: Resolver, engine: str, device: str, message: str
) -> None:
    spec = builtin_registry().get(engine)
    for module in spec.requires:
        pytest.importorskip(module)
    if device == "cuda" and engine == "llama_cpp":
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            pytest.skip("this llama-cpp-python build can offload to a GPU")
    if device == "cuda" and engine == "transformers":
        import torch

        if torch.cuda.is_available():
            pytest.skip("torch sees a CUDA device here")
    if device == "metal" and engine == "mlx_lm":
        import mlx.core as mx

        if mx.metal.is_available():
            pytest.skip("Metal is available here")
    artifact = resolve(resolver, spec.formats[0])
    with pytest.raises(BackendUnavailable, match=message):
        spec.build(artifact, LoadOptions(device=device))


def test_llama_cpp_names_the_file_it_cannot_load(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    artifact = ResolvedArtifact("broken", "gguf", None, bad, "explicit", "llama")
    with pytest.raises(FormatError, match=r"broken\.gguf: llama\.cpp cannot load it"):
        builtin_registry().get("llama_cpp").build(artifact, OPTIONS)
