"""Apple MLX through mlx-lm: the CPU build on Linux, Metal on Apple silicon.

Generation uses ``mlx_lm.generate.generate_step``, the loop under
``stream_generate``, because ``stream_generate`` stops at EOS. ``generate_step``
queues the next step asynchronously before handing over a token, and the token
is timestamped once its value is on the host (``.item()`` waits for its graph).
All work runs on a stream of this backend's device, so the process-wide default
device is left alone.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx_lm
import numpy as np
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

from pytest_minerva.backends.base import DeviceMemory, GenerationRequest, LoadOptions, TokenEvent
from pytest_minerva.backends.hf_text import HfTokenizerMixin, TextDeltas
from pytest_minerva.errors import BackendUnavailable, FormatError, MinervaError
from pytest_minerva.formats.custom_code import refuse_custom_code

if TYPE_CHECKING:
    from pytest_minerva.models.resolve import ResolvedArtifact

_DTYPES = ("float32", "float16", "bfloat16")


def _mlx_version() -> str:
    return str(getattr(mx, "__version__", "unknown"))


def mlx_device(device: str) -> Any:
    """The MLX device for a minerva device name, or :class:`BackendUnavailable` saying why not."""
    if device == "cpu":
        return mx.cpu
    if device == "metal":
        if not mx.metal.is_available():
            raise BackendUnavailable(
                f"mlx_lm: device 'metal' is not available to mlx {_mlx_version()} here "
                "(Metal needs Apple silicon; on Linux only the CPU build runs)"
            )
        return mx.gpu
    raise BackendUnavailable(f"mlx_lm: device {device!r} is not supported; use cpu or metal")


class MlxLmBackend(HfTokenizerMixin):
    """An MLX model directory (``config.json`` + SafeTensors + tokenizer) loaded by ``mlx_lm.load``.

    MLX has no thread setting, so ``options.threads`` is ignored. ``options.dtype``
    casts the weights after load when it is not float32. ``options.n_ctx`` bounds
    the sequence length this adapter accepts.
    """

    name = "mlx_lm"

    def __init__(self, artifact: ResolvedArtifact, options: LoadOptions) -> None:
        self._closed = True
        self.device = options.device
        self._stream = mx.new_stream(mlx_device(options.device))
        if options.dtype not in _DTYPES:
            raise MinervaError(f"mlx_lm: dtype {options.dtype!r} is not one of {', '.join(_DTYPES)}")
        if not (artifact.path / "config.json").is_file():
            # mlx_lm.load would take a missing path for a Hugging Face repo id and try to download it.
            raise FormatError(artifact.path, "not an MLX model directory (no config.json)")
        refuse_custom_code(artifact.path)
        self.dtype = options.dtype
        self.n_ctx = options.n_ctx
        self.artifact_path = artifact.path
        started = time.perf_counter()
        with mx.stream(self._stream):
            # Never the model's own code: mlx-lm's default tokenizer load lets transformers ask on stdin.
            loaded = mlx_lm.load(
                str(artifact.path), tokenizer_config={"trust_remote_code": False}, trust_remote_code=False
            )
            model, tokenizer = loaded[0], loaded[1]
            if options.dtype != "float32":
                model.set_dtype(getattr(mx, options.dtype))
                mx.eval(model.parameters())
        self.load_seconds = time.perf_counter() - started
        self._model = model
        self._tokenizer = tokenizer
        self._text_tokenizer = tokenizer._tokenizer
        self._eos_ids = {int(t) for t in tokenizer.eos_token_ids}
        self._closed = False

    @property
    def vocab_size(self) -> int:
        return int(self._model.args.vocab_size)

    @staticmethod
    def _to_numpy(logits: Any) -> np.ndarray:
        return np.array(logits.astype(mx.float32), dtype=np.float32)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Logits for every position of ``ids`` from one forward pass without a cache."""
        self._check_open()
        ids = [int(t) for t in ids]
        self._check_length(len(ids))
        with mx.stream(self._stream):
            out = self._model(mx.array([ids]))
            mx.eval(out)
        return self._to_numpy(out[0])

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Prefill ``ids[:prefix_len]`` into a fresh prompt cache, then one forward pass per token."""
        self._check_open()
        ids = [int(t) for t in ids]
        self._check_length(len(ids))
        if not 0 <= prefix_len <= len(ids):
            raise MinervaError(f"mlx_lm: prefix_len {prefix_len} is outside 0..{len(ids)}")
        rows: list[np.ndarray] = []
        with mx.stream(self._stream):
            cache = make_prompt_cache(self._model)
            if prefix_len:
                out = self._model(mx.array([ids[:prefix_len]]), cache=cache)
                mx.eval(out)
                rows.append(self._to_numpy(out[0]))
            for pos in range(prefix_len, len(ids)):
                out = self._model(mx.array([ids[pos : pos + 1]]), cache=cache)
                mx.eval(out)
                rows.append(self._to_numpy(out[0]))
        return np.concatenate(rows, axis=0)

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Tokens from ``generate_step``: argmax at temperature 0, else categorical sampling.

        Sampling uses its own ``mx.random`` key seeded with ``request.seed``, so the
        global MLX random state is untouched and the same seed gives the same tokens.
        """
        self._check_open()
        prompt = [int(t) for t in request.prompt_ids]
        if request.max_tokens < 1:
            return
        self._check_length(len(prompt) + request.max_tokens)
        sampler = None
        if request.temperature != 0:
            key = mx.random.key(request.seed if request.seed is not None else time.time_ns() & 0xFFFFFFFF)
            scale = 1.0 / request.temperature

            def sampler(logprobs: Any) -> Any:
                nonlocal key
                key, sub = mx.random.split(key)
                return mx.random.categorical(logprobs * scale, key=sub)

        deltas = TextDeltas(self._decode)
        last = request.max_tokens - 1
        steps = generate_step(
            mx.array(prompt),
            self._model,
            stream=self._stream,
            max_tokens=request.max_tokens,
            sampler=sampler,
            prompt_cache=make_prompt_cache(self._model),
        )
        try:
            for index, (token_value, _) in enumerate(steps):
                token = int(token_value)
                now = time.perf_counter()
                stop = token in self._eos_ids and not request.ignore_eos
                reason = "stop" if stop else ("length" if index == last else None)
                yield TokenEvent(index, token, deltas.add(token, reason is not None), now, reason)
                if reason is not None:
                    return
        finally:
            steps.close()
            # generate_step queued one step past the last token; let it finish before the next run.
            mx.synchronize(self._stream)

    @classmethod
    def build_facts(cls) -> dict[str, Any]:
        """mlx-lm and MLX versions, and the device MLX computes on by default."""
        metal = getattr(mx, "metal", None)
        return {
            "version": getattr(mlx_lm, "__version__", None),
            "mlx": _mlx_version(),
            "default_device": str(mx.default_device()),
            "metal": bool(metal is not None and metal.is_available()),
        }

    def info(self) -> dict[str, Any]:
        """Engine and MLX versions, device, dtype and the model's shape."""
        self._check_open()
        args = self._model.args
        return {
            "engine": "mlx-lm",
            "backend": self.name,
            "version": getattr(mlx_lm, "__version__", None),
            "mlx_version": _mlx_version(),
            "device": self.device,
            "mlx_device": str(self._stream.device),
            "threads": None,
            "dtype": self.dtype,
            "n_ctx": self.n_ctx,
            "architecture": getattr(args, "model_type", None),
            "load_seconds": self.load_seconds,
        }

    def device_memory(self) -> DeviceMemory | None:
        """MLX's own counters: host memory on the CPU build, unified memory on Apple silicon."""
        return DeviceMemory(
            "mlx",
            "mlx.core.get_peak_memory",
            mx.reset_peak_memory,
            lambda: int(mx.get_peak_memory()),
            lambda: int(mx.get_active_memory()),
        )

    def close(self) -> None:
        """Drop the model and tokenizer and release MLX's buffer cache; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        del self._model, self._tokenizer, self._text_tokenizer
        gc.collect()
        mx.clear_cache()
