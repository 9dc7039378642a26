"""llama.cpp through llama-cpp-python, driven through its low-level C API.

The high-level ``Llama`` object only loads the model and holds the context. All
decoding goes through ``llama_decode`` on a batch this adapter owns, and sampling
through a llama.cpp sampler chain, for three reasons:

* ``Llama.generate()`` silently reuses a KV-cache prefix shared with the previous
  call, so a repeated prompt would skip prefill and report a false time to first token;
* ``Llama(logits_all=True)`` keeps an ``n_ctx x vocab`` score matrix and copies every
  decode's logits into it, which costs memory and time the engine itself does not;
* the timestamp of a token must be taken right after the engine hands it over
  (``llama_sampler_sample`` synchronizes the backend), with no Python work in between.

Counters: :meth:`LlamaCppBackend.perf_counters` reads llama.cpp's own timers
(``llama_perf_context``). llama.cpp adds a decode to them only when the context
next synchronizes, reports a zero count as 1, and mis-times the very first decode
of a context, so call :meth:`~LlamaCppBackend.reset_perf_counters` after a warmup run.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import llama_cpp
import numpy as np

from pytest_minerva.backends.base import GenerationRequest, LoadOptions, TokenEvent
from pytest_minerva.errors import BackendUnavailable, FormatError, MinervaError

if TYPE_CHECKING:
    from pytest_minerva.models.resolve import ResolvedArtifact

_GPU_DEVICES = ("cuda", "metal")
_PIECE_BUFFER = 64


def _token_piece(vocab: Any, token: int, buffer: Any) -> bytes:
    """The bytes of one token, special tokens rendered as their text; ``buffer`` is reused when it is big enough."""
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
    if n < 0:
        bigger = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, bigger, -n, 0, True)
        return bigger.raw[:n]
    return bytes(buffer.raw[:n])


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class LlamaCppBackend:
    """A GGUF model loaded by llama.cpp on ``cpu`` (all layers on the CPU) or a GPU.

    ``options.threads`` sets both ``n_threads`` (decode) and ``n_threads_batch``
    (prefill); the default is every CPU this process may run on. ``options.n_ctx``
    bounds the KV cache and is also the batch size, so :meth:`logits` of up to
    ``n_ctx`` tokens is one ``llama_decode`` over one micro-batch. ``options.extra``
    may set ``flash_attn`` (bool, default False as in llama-cpp-python) and ``n_ubatch``
    (int). Without flash attention llama.cpp's one-token decode rounds attention
    differently from a batched pass (SmolLM2: up to 0.94 apart in logits of |32|);
    with it, :meth:`incremental_logits` and :meth:`logits` are bit-identical.
    """

    name = "llama_cpp"

    def __init__(self, artifact: ResolvedArtifact, options: LoadOptions) -> None:
        self._closed = True
        if artifact.format != "gguf":
            raise MinervaError(f"{artifact.path}: llama_cpp loads GGUF files, not {artifact.format}")
        self.device = options.device
        n_gpu_layers = self._gpu_layers(options.device)
        self.threads = options.threads or _default_threads()
        self.n_ctx = options.n_ctx
        self.flash_attn = bool(options.extra.get("flash_attn", False))
        n_ubatch = int(options.extra.get("n_ubatch", options.n_ctx))
        self.artifact_path = artifact.path
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                str(artifact.path),
                n_gpu_layers=n_gpu_layers,
                n_ctx=options.n_ctx,
                n_batch=options.n_ctx,
                n_ubatch=n_ubatch,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                flash_attn=self.flash_attn,
                logits_all=False,
                verbose=False,
            )
        except Exception as exc:
            # ValueError from the loader, jinja2.TemplateError from a GGUF's chat template, ...
            raise FormatError(artifact.path, f"llama.cpp cannot load it ({type(exc).__name__}: {exc})") from None
        self.load_seconds = time.perf_counter() - started
        self._ctx = self._llm.ctx
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._n_vocab = int(self._llm.n_vocab())
        self._batch = llama_cpp.llama_batch_init(options.n_ctx, 0, 1)
        self._piece = ctypes.create_string_buffer(_PIECE_BUFFER)
        self._sampler: Any = None
        # llama.cpp overwrites t_load_ms at the first decode after a reset; keep the real one.
        self._engine_load_ms = float(llama_cpp.llama_perf_context(self._ctx).t_load_ms)
        self._closed = False

    @staticmethod
    def _gpu_layers(device: str) -> int:
        if device == "cpu":
            return 0
        if device not in _GPU_DEVICES:
            raise BackendUnavailable(f"llama_cpp: unknown device {device!r}; use cpu, cuda or metal")
        if not llama_cpp.llama_supports_gpu_offload():
            raise BackendUnavailable(
                f"llama_cpp: device {device!r} needs GPU offload, but this llama-cpp-python "
                f"{llama_cpp.__version__} is a CPU-only build (reinstall it with "
                f"CMAKE_ARGS='-DGGML_{'CUDA' if device == 'cuda' else 'METAL'}=on')"
            )
        return -1

    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    @property
    def bos_id(self) -> int | None:
        token = int(llama_cpp.llama_vocab_bos(self._vocab))
        return None if token < 0 else token

    @property
    def eos_id(self) -> int | None:
        token = int(llama_cpp.llama_vocab_eos(self._vocab))
        return None if token < 0 else token

    def _check_open(self) -> None:
        if self._closed:
            raise MinervaError(f"llama_cpp backend for {self.artifact_path} is closed")

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """llama.cpp's tokenizer with special-token parsing off; ``add_bos`` prepends :attr:`bos_id`."""
        self._check_open()
        ids = [int(t) for t in self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)]
        if add_bos:
            if self.bos_id is None:
                raise MinervaError(f"{self.artifact_path}: the model has no BOS token to add")
            ids.insert(0, self.bos_id)
        return ids

    def _piece_bytes(self, token: int) -> bytes:
        return _token_piece(self._vocab, token, self._piece)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Concatenated token pieces, special tokens rendered as their text."""
        self._check_open()
        return b"".join(self._piece_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")

    def _check_length(self, n: int) -> None:
        if n < 1:
            raise MinervaError("llama_cpp: need at least one token")
        if n > self.n_ctx:
            raise MinervaError(f"llama_cpp: {n} tokens exceed the context of {self.n_ctx} (LoadOptions.n_ctx)")

    def _decode(self, ids: Sequence[int], start_pos: int, all_logits: bool) -> None:
        batch = self._batch
        n = len(ids)
        batch.n_tokens = n
        for i, token in enumerate(ids):
            batch.token[i] = token
            batch.pos[i] = start_pos + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == n - 1
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise MinervaError(f"llama_cpp: llama_decode failed with status {status} at position {start_pos}")

    def _read_logits(self, rows: int) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(pointer, shape=(rows, self._n_vocab)).astype(np.float32, copy=True)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of ``ids`` from one ``llama_decode`` on an empty KV cache."""
        self._check_open()
        ids = [int(t) for t in ids]
        self._check_length(len(ids))
        llama_cpp.llama_memory_clear(self._memory, False)
        self._decode(ids, 0, all_logits=True)
        return self._read_logits(len(ids))

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Prefill ``ids[:prefix_len]`` in one decode, then decode the rest one token at a time."""
        self._check_open()
        ids = [int(t) for t in ids]
        self._check_length(len(ids))
        if not 0 <= prefix_len <= len(ids):
            raise MinervaError(f"llama_cpp: prefix_len {prefix_len} is outside 0..{len(ids)}")
        llama_cpp.llama_memory_clear(self._memory, False)
        out = np.empty((len(ids), self._n_vocab), dtype=np.float32)
        if prefix_len:
            self._decode(ids[:prefix_len], 0, all_logits=True)
            out[:prefix_len] = self._read_logits(prefix_len)
        for pos in range(prefix_len, len(ids)):
            self._decode(ids[pos : pos + 1], pos, all_logits=True)
            out[pos] = self._read_logits(1)[0]
        return out

    def _new_sampler(self, request: GenerationRequest) -> Any:
        params = llama_cpp.llama_sampler_chain_default_params()
        params.no_perf = False
        chain = llama_cpp.llama_sampler_chain_init(params)
        if request.temperature == 0:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            seed = llama_cpp.LLAMA_DEFAULT_SEED if request.seed is None else request.seed & 0xFFFFFFFF
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(request.temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    def _free_sampler(self) -> None:
        if self._sampler is not None:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Prefill the prompt, then sample and decode one token at a time.

        Greedy (llama.cpp's greedy sampler) at temperature 0; otherwise temperature
        sampling from llama.cpp's ``dist`` sampler seeded with ``request.seed``. Each
        timestamp is taken as soon as the sampler returns the token; the caller's own
        work between events is counted in the next token's time, so keep it small.
        """
        self._check_open()
        prompt = [int(t) for t in request.prompt_ids]
        if request.max_tokens < 1:
            return
        self._check_length(len(prompt))
        if len(prompt) + request.max_tokens > self.n_ctx:
            raise MinervaError(
                f"llama_cpp: prompt {len(prompt)} + max_tokens {request.max_tokens} exceed the context of "
                f"{self.n_ctx} (LoadOptions.n_ctx)"
            )
        self._free_sampler()
        self._sampler = sampler = self._new_sampler(request)
        text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        last = request.max_tokens - 1
        llama_cpp.llama_memory_clear(self._memory, False)
        self._decode(prompt, 0, all_logits=False)
        pos = len(prompt)
        for index in range(request.max_tokens):
            token = int(llama_cpp.llama_sampler_sample(sampler, self._ctx, -1))
            now = time.perf_counter()
            is_eog = bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))
            stop = is_eog and not request.ignore_eos
            reason = "stop" if stop else ("length" if index == last else None)
            text = text_decoder.decode(self._piece_bytes(token), final=reason is not None)
            yield TokenEvent(index, token, text, now, reason)
            if reason is not None:
                return
            self._decode([token], pos, all_logits=False)
            pos += 1

    def perf_counters(self, *, reset: bool = False) -> dict[str, Any]:
        """llama.cpp's own timers since the last reset, plus the sampler's from the last stream.

        Keys: ``t_p_eval_ms``/``n_p_eval`` (multi-token decodes), ``t_eval_ms``/``n_eval``
        (single-token decodes), ``n_reused`` (graph reuses), ``t_load_ms`` (model load as
        llama.cpp measured it), ``t_sample_ms``/``n_sample``. llama.cpp reports a count
        of 0 as 1. With ``reset`` the context counters restart after reading.
        """
        self._check_open()
        data = llama_cpp.llama_perf_context(self._ctx)
        counters: dict[str, Any] = {
            "t_load_ms": self._engine_load_ms,
            "t_p_eval_ms": float(data.t_p_eval_ms),
            "n_p_eval": int(data.n_p_eval),
            "t_eval_ms": float(data.t_eval_ms),
            "n_eval": int(data.n_eval),
            "n_reused": int(data.n_reused),
        }
        if self._sampler is not None:
            sampler_data = llama_cpp.llama_perf_sampler(self._sampler)
            counters["t_sample_ms"] = float(sampler_data.t_sample_ms)
            counters["n_sample"] = int(sampler_data.n_sample)
        if reset:
            self.reset_perf_counters()
        return counters

    def reset_perf_counters(self) -> None:
        """Restart llama.cpp's context timers (and the current sampler's)."""
        self._check_open()
        llama_cpp.llama_perf_context_reset(self._ctx)
        if self._sampler is not None:
            llama_cpp.llama_perf_sampler_reset(self._sampler)

    def _meta(self, key: str) -> str | None:
        value = self._llm.metadata.get(key)
        return None if value is None else str(value)

    @classmethod
    def build_facts(cls) -> dict[str, Any]:
        """How this llama.cpp was built, without loading a model: version, GPU offload and
        ``llama_print_system_info`` (the instruction sets and backends compiled in)."""
        from pytest_minerva.backends.llama_cpp_build import enabled_features

        system = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
        return {
            "version": llama_cpp.__version__,
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "features": enabled_features(system),
            "system_info": system,
        }

    def info(self) -> dict[str, Any]:
        """Engine, versions, device, threads, context sizes and the model as llama.cpp sees it."""
        self._check_open()
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self._llm.model, desc, 256)
        return {
            "engine": "llama.cpp",
            "backend": self.name,
            "version": llama_cpp.__version__,
            "device": self.device,
            "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
            "n_gpu_layers": 0 if self.device == "cpu" else -1,
            "threads": int(llama_cpp.llama_n_threads(self._ctx)),
            "threads_batch": int(llama_cpp.llama_n_threads_batch(self._ctx)),
            "n_ctx": int(llama_cpp.llama_n_ctx(self._ctx)),
            "n_batch": int(llama_cpp.llama_n_batch(self._ctx)),
            "n_ubatch": int(llama_cpp.llama_n_ubatch(self._ctx)),
            "flash_attn": self.flash_attn,
            "kv_cache_dtype": "f16",  # llama.cpp's default K and V cache type; this adapter keeps it
            "dtype": desc.value.decode("utf-8", errors="replace").rsplit(" ", 1)[-1],
            "model_desc": desc.value.decode("utf-8", errors="replace"),
            "n_params": int(llama_cpp.llama_model_n_params(self._llm.model)),
            "model_bytes": int(llama_cpp.llama_model_size(self._llm.model)),
            "architecture": self._meta("general.architecture"),
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip(),
            "load_seconds": self.load_seconds,
        }

    def kv_cache_bytes(self) -> int:
        """Bytes of sequence 0's state (``llama_state_seq_get_size``): it grows with every cached
        token, while the cache itself is allocated for the whole context at load."""
        self._check_open()
        return int(llama_cpp.llama_state_seq_get_size(self._ctx, 0))

    def close(self) -> None:
        """Free the sampler, the batch, the context and the weights; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._free_sampler()
        llama_cpp.llama_batch_free(self._batch)
        self._llm.close()
        del self._llm


class LlamaCppVocab:
    """llama.cpp's tokenizer alone: a GGUF loaded with ``vocab_only`` (no weights, no context).

    It tokenizes exactly as :class:`LlamaCppBackend` does, in a fraction of a second and a few
    megabytes, so a converter can check a tokenizer it writes against llama.cpp's.
    """

    name = "llama_cpp"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        # llama-cpp-python prints llama.cpp's loader warnings at its ERROR level; a failed load is
        # reported below instead.
        logger = logging.getLogger("llama-cpp-python")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            model = llama_cpp.llama_model_load_from_file(self.path.encode("utf-8"), params)
        finally:
            logger.setLevel(level)
        if not model:
            raise FormatError(self.path, f"llama.cpp {llama_cpp.__version__} cannot load its vocabulary")
        self._model: Any = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._piece = ctypes.create_string_buffer(_PIECE_BUFFER)

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids with special-token parsing off, as :meth:`LlamaCppBackend.tokenize`."""
        self._check_open()
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_bos, False)
            if n >= 0:
                return [int(t) for t in tokens[:n]]
            capacity = -n
        raise MinervaError(f"{self.path}: llama.cpp could not tokenize a text of {len(data)} bytes")

    def detokenize(self, ids: Sequence[int]) -> str:
        self._check_open()
        return b"".join(_token_piece(self._vocab, int(t), self._piece) for t in ids).decode("utf-8", errors="replace")

    def _check_open(self) -> None:
        if self._model is None:
            raise MinervaError(f"llama.cpp vocabulary of {self.path} is closed")

    def close(self) -> None:
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaCppVocab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
