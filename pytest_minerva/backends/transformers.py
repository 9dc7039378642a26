"""Hugging Face transformers on torch, with a decoding loop written here.

``model.generate()`` is not used: it hides per-token timing, stops at EOS, and
applies the checkpoint's generation config (repetition penalty, top-k...). The
loop below runs one forward pass per token on a ``DynamicCache`` and timestamps
each token once its id is on the host (after ``torch.cuda.synchronize`` on CUDA).

A GGUF artifact is dequantized on load (``from_pretrained(dir, gguf_file=name)``),
so the weights are the GGUF's numbers in ``LoadOptions.dtype`` (float32 default).
"""

from __future__ import annotations

import gc
import inspect
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import transformers
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, AutoTokenizer, DynamicCache

from pytest_minerva.backends.base import BatchGeneration, DeviceMemory, GenerationRequest, LoadOptions, TokenEvent
from pytest_minerva.backends.hf_text import HfTokenizerMixin, TextDeltas
from pytest_minerva.errors import BackendUnavailable, MinervaError
from pytest_minerva.formats.custom_code import refuse_custom_code

if TYPE_CHECKING:
    from pytest_minerva.models.resolve import ResolvedArtifact

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_device(device: str) -> torch.device:
    """The torch device for a minerva device name, or :class:`BackendUnavailable` saying why not."""
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"transformers: device 'cuda' is not available to torch {torch.__version__} "
                f"(CUDA build: {torch.version.cuda or 'no'}; visible GPUs: {torch.cuda.device_count()})"
            )
        return torch.device("cuda")
    if device == "metal":
        if not torch.backends.mps.is_available():
            raise BackendUnavailable(
                f"transformers: device 'metal' needs torch's MPS backend, which torch {torch.__version__} "
                "does not have here (it needs Apple silicon and macOS 12.3+)"
            )
        return torch.device("mps")
    raise BackendUnavailable(f"transformers: unknown device {device!r}; use cpu, cuda or metal")


class TransformersBackend(HfTokenizerMixin):
    """A causal LM loaded by transformers from a SafeTensors directory or a GGUF file.

    ``options.threads`` calls ``torch.set_num_threads`` (process-wide) when given.
    ``options.dtype`` is float32, float16 or bfloat16. ``options.n_ctx`` bounds the
    sequence length this adapter accepts, as it does for the other backends.
    """

    name = "transformers"

    def __init__(self, artifact: ResolvedArtifact, options: LoadOptions) -> None:
        self._closed = True
        self.device = options.device
        self._torch_device = torch_device(options.device)
        if options.dtype not in _DTYPES:
            raise MinervaError(f"transformers: dtype {options.dtype!r} is not one of {', '.join(_DTYPES)}")
        self.dtype = options.dtype
        if options.threads:
            torch.set_num_threads(options.threads)
        self.n_ctx = options.n_ctx
        self.artifact_path = artifact.path
        self.source_format = artifact.format
        # trust_remote_code=False: a model's own code is never run, and transformers raises instead of asking on stdin.
        if artifact.format == "gguf":
            where: dict[str, Any] = {
                "pretrained_model_name_or_path": str(artifact.path.parent),
                "gguf_file": artifact.path.name,
                "trust_remote_code": False,
            }
        elif artifact.format == "safetensors":
            refuse_custom_code(artifact.path, CONFIG_MAPPING)
            where = {"pretrained_model_name_or_path": str(artifact.path), "trust_remote_code": False}
        else:
            raise MinervaError(f"{artifact.path}: transformers loads gguf or safetensors, not {artifact.format}")
        started = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(**where)
        self._text_tokenizer = self._tokenizer
        # use_safetensors: never fall back to a pickled pytorch_model.bin lying in the same directory.
        weights: dict[str, Any] = {"use_safetensors": True} if artifact.format == "safetensors" else {}
        model = AutoModelForCausalLM.from_pretrained(**where, **weights, dtype=_DTYPES[options.dtype])
        torch.nn.Module.to(model, self._torch_device)
        self._model = model.eval()
        self.load_seconds = time.perf_counter() - started
        self._config = self._model.config
        # transformers 5.25 renamed forward()'s past_key_values to cache (the old name warns, and goes in 5.40).
        forward_params = inspect.signature(self._model.forward).parameters
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        self._closed = False

    def _cache_arg(self, cache: Any) -> dict[str, Any]:
        return {self._cache_kw: cache}

    @property
    def vocab_size(self) -> int:
        return int(self._model.get_output_embeddings().weight.shape[0])

    def _ids_tensor(self, ids: Sequence[int]) -> torch.Tensor:
        return torch.tensor([list(ids)], dtype=torch.long, device=self._torch_device)

    @staticmethod
    def _to_numpy(logits: torch.Tensor) -> np.ndarray:
        return logits.detach().to("cpu", torch.float32).numpy().copy()

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of ``ids`` from one forward pass without a cache."""
        self._check_open()
        ids = [int(t) for t in ids]
        self._check_length(len(ids))
        with torch.inference_mode():
            out = self._model(input_ids=self._ids_tensor(ids), use_cache=False)
        return self._to_numpy(out.logits[0])

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Prefill ``ids[:prefix_len]`` into a ``DynamicCache``, then one forward pass per token."""
        self._check_open()
        ids = [int(t) for t in ids]
        self._check_length(len(ids))
        if not 0 <= prefix_len <= len(ids):
            raise MinervaError(f"transformers: prefix_len {prefix_len} is outside 0..{len(ids)}")
        cache = DynamicCache(config=self._config)
        rows: list[np.ndarray] = []
        with torch.inference_mode():
            if prefix_len:
                prefix = self._ids_tensor(ids[:prefix_len])
                out = self._model(input_ids=prefix, **self._cache_arg(cache), use_cache=True)
                rows.append(self._to_numpy(out.logits[0]))
            for pos in range(prefix_len, len(ids)):
                step = self._ids_tensor(ids[pos : pos + 1])
                out = self._model(input_ids=step, **self._cache_arg(cache), use_cache=True)
                rows.append(self._to_numpy(out.logits[0]))
        return np.concatenate(rows, axis=0)

    def _sync(self) -> None:
        if self._torch_device.type == "cuda":
            torch.cuda.synchronize()
        elif self._torch_device.type == "mps":
            torch.mps.synchronize()

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Prefill the prompt, then one cached forward pass per generated token.

        Greedy (argmax) at temperature 0; otherwise ``softmax(logits / temperature)``
        sampled with a ``torch.Generator`` seeded by ``request.seed``. Each timestamp
        is taken once the token id is on the host; the caller's work between events
        counts toward the next token's time.
        """
        self._check_open()
        prompt = [int(t) for t in request.prompt_ids]
        if request.max_tokens < 1:
            return
        self._check_length(len(prompt) + request.max_tokens)
        generator: torch.Generator | None = None
        if request.temperature != 0:
            generator = torch.Generator(device=self._torch_device)
            generator.manual_seed(request.seed if request.seed is not None else torch.seed())
        deltas = TextDeltas(self._decode)
        eos = self.eos_id
        last = request.max_tokens - 1
        cache = DynamicCache(config=self._config)
        with torch.inference_mode():
            out = self._model(
                input_ids=self._ids_tensor(prompt), **self._cache_arg(cache), use_cache=True, logits_to_keep=1
            )
            for index in range(request.max_tokens):
                next_logits = out.logits[0, -1]
                if generator is None:
                    chosen = torch.argmax(next_logits)
                else:
                    probs = torch.softmax(next_logits.float() / request.temperature, dim=-1)
                    chosen = torch.multinomial(probs, 1, generator=generator)[0]
                self._sync()
                token = int(chosen.item())
                now = time.perf_counter()
                stop = token == eos and not request.ignore_eos
                reason = "stop" if stop else ("length" if index == last else None)
                yield TokenEvent(index, token, deltas.add(token, reason is not None), now, reason)
                if reason is not None:
                    return
                out = self._model(
                    input_ids=chosen.reshape(1, 1), **self._cache_arg(cache), use_cache=True, logits_to_keep=1
                )

    def timed_generate_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> BatchGeneration:
        """Greedy ``max_tokens`` tokens for each prompt at once, EOS ignored.

        Prompts are left-padded to the longest with an attention mask and explicit
        positions, so each row computes what it would alone (up to float rounding).
        """
        self._check_open()
        if not prompts:
            raise MinervaError("transformers: generate_batch needs at least one prompt")
        if max_tokens < 1:
            raise MinervaError(f"transformers: max_tokens must be at least 1, got {max_tokens}")
        rows = [[int(t) for t in p] for p in prompts]
        width = max(len(r) for r in rows)
        if min(len(r) for r in rows) < 1:
            raise MinervaError("transformers: every prompt needs at least one token")
        self._check_length(width + max_tokens)
        pad = self._tokenizer.pad_token_id
        pad = int(pad if pad is not None else (self.eos_id or 0))
        device = self._torch_device
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self._config)
        generated: list[torch.Tensor] = []
        step_times: list[float] = []
        with torch.inference_mode():
            start = time.perf_counter()
            out = self._model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                **self._cache_arg(cache),
                use_cache=True,
                logits_to_keep=1,
            )
            next_positions = positions[:, -1:]
            for step in range(max_tokens):
                chosen = torch.argmax(out.logits[:, -1], dim=-1, keepdim=True)
                self._sync()
                generated.append(chosen.to("cpu"))
                step_times.append(time.perf_counter())
                if step == max_tokens - 1:
                    break
                mask = torch.cat([mask, torch.ones_like(chosen)], dim=-1)
                next_positions = next_positions + 1
                out = self._model(
                    input_ids=chosen,
                    attention_mask=mask,
                    position_ids=next_positions,
                    **self._cache_arg(cache),
                    use_cache=True,
                    logits_to_keep=1,
                )
        tokens = torch.cat(generated, dim=-1).tolist()
        return BatchGeneration([[int(t) for t in row] for row in tokens], start, step_times)

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
        """Greedy tokens for each prompt, batched; see :meth:`timed_generate_batch` for timings."""
        return self.timed_generate_batch(prompts, max_tokens).tokens

    @classmethod
    def build_facts(cls) -> dict[str, Any]:
        """transformers and torch versions, torch's CPU kernels and the GPUs it sees."""
        mps = getattr(torch.backends, "mps", None)
        return {
            "version": transformers.__version__,
            "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "mps": bool(mps is not None and mps.is_available()),
        }

    def info(self) -> dict[str, Any]:
        """Engine and torch versions, device, threads, dtype and how the weights were loaded."""
        self._check_open()
        return {
            "engine": "transformers",
            "backend": self.name,
            "version": transformers.__version__,
            "torch_version": torch.__version__,
            "device": self.device,
            "torch_device": str(self._torch_device),
            "threads": torch.get_num_threads(),
            "dtype": self.dtype,
            "n_ctx": self.n_ctx,
            "source_format": self.source_format,
            "dequantized": self.source_format == "gguf",
            "attn_implementation": getattr(self._config, "_attn_implementation", None),
            "architecture": getattr(self._config, "model_type", None),
            "n_params": int(sum(p.numel() for p in self._model.parameters())),
            "load_seconds": self.load_seconds,
        }

    def device_memory(self) -> DeviceMemory | None:
        """CUDA's allocator counters when the model is on CUDA; None on the CPU (the process RSS)."""
        if self.device != "cuda":
            return None
        return DeviceMemory(
            "torch.cuda",
            "torch.cuda.max_memory_allocated",
            torch.cuda.reset_peak_memory_stats,
            lambda: int(torch.cuda.max_memory_allocated()),
            lambda: int(torch.cuda.memory_allocated()),
        )

    def close(self) -> None:
        """Drop the model and tokenizer and return their memory; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        del self._model, self._tokenizer, self._text_tokenizer
        gc.collect()
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()
