"""Any OpenAI-compatible HTTP server as a backend: ``--backend openai_http``.

With ``LoadOptions.extra["endpoint"]`` (the ``--minerva-endpoint`` URL) the adapter
talks to that server; the API key is read from the environment variable named by
``extra["api_key_env"]`` (``--minerva-api-key-env``) at each request and is never
stored, shown or logged: a failed request is a one-line :class:`ServingError` or
:class:`MinervaError` with the key redacted, and no traceback local holds it
(:mod:`pytest_minerva.serving.client`). Without an endpoint it starts ``llama_cpp.server`` on
loopback on the artifact's GGUF (:class:`~pytest_minerva.serving.server.LlamaCppServer`,
``options.threads`` threads, ``options.n_ctx`` context) and stops it in :meth:`close`.

What it can and cannot do:

* :meth:`~OpenAIHttpBackend.stream` streams ``/v1/completions`` (or
  ``/v1/chat/completions`` with ``extra["api"] = "chat"``) and times each chunk as
  it arrives (see :mod:`pytest_minerva.serving.sse` for the definitions). The whole
  response is read before the first event is yielded, so the caller's work cannot
  delay a timestamp; the adapter declares it (``stream_buffering``), and the harness
  reports its per-token figures as adapter-reported. Greedy decoding sends ``temperature 0`` and ``repeat_penalty
  1.0`` (llama_cpp.server's default 1.1 changes the greedy chain); ``ignore_eos``
  sends ``min_tokens = max_tokens`` (llama_cpp.server, vLLM) and ``ignore_eos``
  (vLLM).
* Prefix caching: servers reuse the KV cache of a prompt prefix they saw last
  (llama-cpp-python always does; llama.cpp's server and vLLM by default), so a
  repeated prompt would skip its prefill and report a false TTFT. After each stream
  the adapter sends a one-token request whose prompt starts with a different token
  (``extra["flush_prefix"] = False`` turns this off); it runs after the last event
  was yielded, so it is outside the end-to-end time the harness observes.
* Token ids: an OpenAI server returns text, not ids. The events' ids are the
  generated text re-tokenized and fitted to the counted length; ``info()`` says so.
* :meth:`~OpenAIHttpBackend.tokenize` uses the server's ``/extras/tokenize`` when it
  has one (llama_cpp.server), else llama.cpp's tokenizer on the local GGUF. The
  server's tokenizer parses special-token syntax such as ``<|im_end|>`` (it has no
  switch), unlike the in-process backends.
* Logits: a server returns at most the top-k log-probabilities of each generated
  token. :meth:`~OpenAIHttpBackend.logits` raises :class:`LogitsUnavailable`;
  :meth:`~OpenAIHttpBackend.top_logprobs` returns the top-k, and
  :func:`compare_topk` compares them with a reference's full logits. The served
  llama_cpp.server must be started with ``logits_all`` (``extra["logprobs"] = True``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_minerva.backends.base import GenerationRequest, LoadOptions, TokenEvent
from pytest_minerva.errors import BackendUnavailable, LogitsUnavailable, MinervaError
from pytest_minerva.serving.client import Endpoint, HttpStatusError, Timeouts, request_json, shorten
from pytest_minerva.serving.sse import StreamResult, stream_request

if TYPE_CHECKING:
    import numpy as np

    from pytest_minerva.models.resolve import ResolvedArtifact
    from pytest_minerva.serving.server import LlamaCppServer

#: Sampling fields sent with every request so that temperature 0 is plain greedy decoding.
GREEDY_FIELDS: dict[str, Any] = {"top_p": 1.0, "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
_MEMO = 64


class ServingError(MinervaError):
    """A request to the server failed; ``failure`` holds the reason code and message."""

    def __init__(self, failure: Any) -> None:
        self.failure = failure
        super().__init__(f"openai_http: {failure}")


@dataclass(frozen=True)
class ServedTopK:
    """A greedy continuation with the top-``k`` log-probabilities the server returned for each token.

    ``tokens[i]`` is the text of generated token ``i``; ``top[i]`` maps token text to
    log-probability for the ``k`` most likely tokens at that position (plus the chosen
    one); tokens that decode to the same text share one entry.
    """

    prompt_tokens: int
    tokens: tuple[str, ...]
    token_logprobs: tuple[float, ...]
    top: tuple[dict[str, float], ...]
    k: int
    finish_reason: str | None


@dataclass(frozen=True)
class TopkAgreement:
    """How a served top-k agrees with reference logits, position by position.

    ``positions`` counts compared positions: up to and including the first where
    the greedy tokens differ (later contexts differ, so they are not compared).
    ``max_abs_logprob_diff`` is over tokens in both top-k sets.
    """

    positions: int
    greedy_matches: int
    first_mismatch: int | None
    top1_agreement: float
    mean_topk_overlap: float
    min_topk_overlap: float
    max_abs_logprob_diff: float
    k: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _token_ids(tokens: object) -> list[int] | None:
    """``tokens`` as a list of ids, or None when it is not a list of integers."""
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        return None
    return [int(t) for t in tokens]


def _clean(text: str) -> str:
    # llama_cpp.server decodes each piece with errors="ignore"; drop replacement characters to match.
    return text.replace("\ufffd", "")


def compare_topk(
    served: ServedTopK,
    reference_ids: Sequence[int],
    reference_logits: np.ndarray,
    piece: Callable[[int], str],
) -> TopkAgreement:
    """Compare a served greedy continuation and its top-k with a reference's.

    ``reference_ids`` is the reference's greedy continuation of the same prompt and
    ``reference_logits[i]`` its full logits for predicting token ``i`` (one row per
    generated token); ``piece(id)`` is a token's text rendered the way the server
    renders it (:func:`llama_server_piece` for llama_cpp.server). Log-probabilities
    are ``log_softmax`` in float64.
    """
    import numpy as np

    k = served.k
    n = min(len(served.tokens), len(reference_ids), len(reference_logits))
    if n == 0:
        raise MinervaError("compare_topk: nothing to compare (no generated tokens)")
    greedy = top1 = 0
    first_mismatch = None
    overlaps: list[float] = []
    max_diff = 0.0
    compared = 0
    for i in range(n):
        row = np.asarray(reference_logits[i], dtype=np.float64)
        logprobs = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        order = np.argsort(-logprobs, kind="stable")[:k]
        ref: dict[str, float] = {}
        for token in order:
            ref.setdefault(_clean(piece(int(token))), float(logprobs[token]))
        got = dict(sorted(served.top[i].items(), key=lambda kv: -kv[1])[:k])
        got = {_clean(t): lp for t, lp in got.items()}
        compared += 1
        if _clean(served.tokens[i]) == _clean(piece(int(reference_ids[i]))):
            greedy += 1
        elif first_mismatch is None:
            first_mismatch = i
        if got and max(got, key=lambda t: got[t]) == next(iter(ref)):
            top1 += 1
        shared = set(ref) & set(got)
        overlaps.append(len(shared) / max(len(ref), 1))
        for text in shared:
            max_diff = max(max_diff, abs(ref[text] - got[text]))
        if first_mismatch is not None:
            break
    return TopkAgreement(
        positions=compared,
        greedy_matches=greedy,
        first_mismatch=first_mismatch,
        top1_agreement=top1 / compared,
        mean_topk_overlap=math.fsum(overlaps) / compared,
        min_topk_overlap=min(overlaps),
        max_abs_logprob_diff=max_diff,
        k=k,
    )


def llama_server_piece(gguf_path: str | Path) -> Callable[[int], str]:
    """A token's text as llama_cpp.server shows it in logprobs: special tokens empty, invalid UTF-8 dropped."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)

    def piece(token: int) -> str:
        return str(vocab.detokenize([token]).decode("utf-8", errors="ignore"))

    return piece


class OpenAIHttpBackend:
    """A model behind an OpenAI-compatible endpoint (started here on loopback when none is given).

    ``options.extra`` keys: ``endpoint`` (URL or :class:`Endpoint`), ``api_key_env``,
    ``api`` (``completions`` or ``chat``), ``timeouts`` (:class:`Timeouts`),
    ``served_model`` (the ``model`` field to send; default: the server's first model),
    ``logprobs`` (start the local server with ``logits_all`` so :meth:`top_logprobs` works).
    """

    name = "openai_http"

    def __init__(self, artifact: ResolvedArtifact, options: LoadOptions) -> None:
        self._closed = True
        self._server: LlamaCppServer | None = None
        self.device = options.device
        self.artifact_path = artifact.path
        extra = options.extra
        self.api = str(extra.get("api", "completions"))
        if self.api not in ("completions", "chat"):
            raise MinervaError(f"openai_http: api must be completions or chat, not {self.api!r}")
        timeouts = extra.get("timeouts")
        self.timeouts = timeouts if isinstance(timeouts, Timeouts) else Timeouts()
        endpoint = extra.get("endpoint")
        api_key_env = extra.get("api_key_env")
        if endpoint:
            self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint(str(endpoint), api_key_env)
        else:
            if artifact.format != "gguf":
                raise MinervaError(
                    f"{artifact.path}: openai_http starts llama_cpp.server, which serves GGUF, not {artifact.format}; "
                    "give --minerva-endpoint to use another server"
                )
            from pytest_minerva.serving.server import LlamaCppServer

            self._server = LlamaCppServer(
                artifact.path,
                n_ctx=options.n_ctx,
                threads=options.threads or 1,
                logits_all=bool(extra.get("logprobs", False)),
                flash_attn=bool(extra.get("flash_attn", False)),
                api_key_env=api_key_env,
            )
            self._server.start()
            self.endpoint = self._server.endpoint
        try:
            self._connect(artifact, extra)
        except BaseException:
            self._stop_server()
            raise
        self._closed = False

    def _connect(self, artifact: ResolvedArtifact, extra: dict[str, Any]) -> None:
        listing = request_json(self.endpoint, "GET", "/v1/models", timeouts=self.timeouts)
        data = listing.get("data") if isinstance(listing, dict) else None
        self.served_models = [str(m.get("id")) for m in data or [] if isinstance(m, dict)]
        self.served_model: str | None = extra.get("served_model") or (
            self.served_models[0] if self.served_models else None
        )
        self._local: Any = None
        self.flush_prefix = bool(extra.get("flush_prefix", True))
        self._flush_texts: list[tuple[str, int | None]] = []
        self._memo_text: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self.prompt_lookups = 0
        self.prompt_mismatches = 0
        summary = artifact.summary
        if summary is None and artifact.format == "gguf":
            from pytest_minerva import formats

            summary = formats.verify(artifact.path)
        metadata = summary.metadata if summary is not None else {}
        tokens = metadata.get("tokenizer.ggml.tokens")
        count = len(tokens) if isinstance(tokens, list | tuple) else getattr(tokens, "count", None)
        self._vocab_size = int(count) if isinstance(count, int) and count > 0 else None
        self._bos = metadata.get("tokenizer.ggml.bos_token_id")
        self._eos = metadata.get("tokenizer.ggml.eos_token_id")
        self._add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
        self.tokenizer_source = "server /extras/tokenize"
        try:
            request_json(self.endpoint, "POST", "/extras/tokenize", {"input": "a"}, timeouts=self.timeouts)
        except HttpStatusError as exc:
            if exc.status not in (404, 405):
                raise
            self.tokenizer_source = "llama.cpp on the local GGUF"
            self._local_tokenizer()

    def _local_tokenizer(self) -> Any:
        if self._local is None:
            try:
                import llama_cpp
            except ImportError:
                raise BackendUnavailable(
                    "openai_http: the server has no /extras/tokenize and llama-cpp-python is not installed "
                    "for a local tokenizer"
                ) from None
            self._local = llama_cpp.Llama(str(self.artifact_path), vocab_only=True, verbose=False)
        return self._local

    def __repr__(self) -> str:
        return f"OpenAIHttpBackend({self.endpoint!r}, api={self.api!r})"

    @property
    def vocab_size(self) -> int:
        if self._vocab_size is None:
            raise MinervaError(f"openai_http: {self.artifact_path} does not say how large its vocabulary is")
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return None if self._bos is None else int(self._bos)

    @property
    def eos_id(self) -> int | None:
        return None if self._eos is None else int(self._eos)

    def _check_open(self) -> None:
        if self._closed:
            raise MinervaError(f"openai_http backend for {self.endpoint.url} is closed")

    def _raw_tokenize(self, text: str) -> list[int]:
        if self._local is not None:
            return [int(t) for t in self._local.tokenize(text.encode("utf-8"), add_bos=False, special=True)]
        answer = request_json(self.endpoint, "POST", "/extras/tokenize", {"input": text}, timeouts=self.timeouts)
        ids = _token_ids(answer.get("tokens", []) if isinstance(answer, dict) else [])
        if ids is None:
            raise MinervaError(f"openai_http: {self.endpoint.url}/extras/tokenize answered without a list of token ids")
        if self._add_bos and self.bos_id is not None and ids[:1] == [self.bos_id]:
            ids = ids[1:]
        return ids

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Ids the server gives ``text`` (special-token syntax is parsed); ``add_bos`` prepends :attr:`bos_id`."""
        self._check_open()
        ids = self._raw_tokenize(text)
        if add_bos:
            if self.bos_id is None:
                raise MinervaError(f"{self.artifact_path}: the model has no BOS token to add")
            ids.insert(0, self.bos_id)
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` from the server's ``/extras/detokenize`` (or the local tokenizer)."""
        self._check_open()
        key = tuple(int(t) for t in ids)
        if key in self._memo_text:
            return self._memo_text[key]
        if self._local is not None:
            text = self._local.detokenize(list(key)).decode("utf-8", errors="replace")
        else:
            answer = request_json(
                self.endpoint, "POST", "/extras/detokenize", {"tokens": list(key)}, timeouts=self.timeouts
            )
            text = str(answer.get("text", "")) if isinstance(answer, dict) else ""
        self._remember(key, text)
        return text

    def _remember(self, key: tuple[int, ...], text: str) -> None:
        self._memo_text[key] = text
        while len(self._memo_text) > _MEMO:
            self._memo_text.popitem(last=False)

    def prompt_text(self, ids: Sequence[int]) -> str:
        """The text to send for ``ids``; checks once that the server tokenizes it back to ``ids``."""
        key = tuple(int(t) for t in ids)
        text = self._memo_text.get(key)
        if text is None:
            self.prompt_lookups += 1
            text = self.detokenize(key)
        return text

    def check_prompt(self, ids: Sequence[int]) -> bool:
        """Whether the text sent for ``ids`` tokenizes back to exactly ``ids`` on the server."""
        same = self._raw_tokenize(self.prompt_text(ids)) == [int(t) for t in ids]
        if not same:
            self.prompt_mismatches += 1
        return same

    def _payload(self, request: GenerationRequest, text: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature}
        if self.api == "chat":
            payload["messages"] = [{"role": "user", "content": text}]
        else:
            payload["prompt"] = text
        if request.temperature == 0:
            payload.update(GREEDY_FIELDS)
        if request.ignore_eos:
            payload["min_tokens"] = request.max_tokens
            payload["ignore_eos"] = True
        if request.seed is not None:
            payload["seed"] = request.seed
        if self.served_model:
            payload["model"] = self.served_model
        payload["stream_options"] = {"include_usage": True}
        return payload

    def stream_result(self, request: GenerationRequest) -> StreamResult:
        """One streamed request, counted; raises :class:`ServingError` if it failed."""
        self._check_open()
        text = self.prompt_text(request.prompt_ids)
        result = stream_request(self.endpoint, self.api, self._payload(request, text), timeouts=self.timeouts)
        if not result.ok:
            raise ServingError(result.failure)
        result.count_tokens(self._raw_tokenize, requested=request.max_tokens)
        return result

    def stream_buffering(self) -> str:
        """This adapter reads the whole response before its first event (see :meth:`stream`)."""
        return "reads the whole HTTP response before the first event"

    def stream(self, request: GenerationRequest) -> Iterator[TokenEvent]:
        """Stream ``request`` and yield one event per counted token with its chunk's arrival time.

        The whole response is read (and its tokens counted) before the first event, so the
        timestamps are the chunks' arrival times, not when the events are yielded
        (:meth:`stream_buffering`). Where a chunk carried several tokens they share its
        timestamp; where the count is below the chunk count, the trailing chunks are merged
        into the last token. The prefix-cache flush runs after the last event (or when the
        caller closes the stream early), outside the time from the request to the last event.
        """
        self._check_open()
        if request.max_tokens < 1:
            return
        result = self.stream_result(request)
        try:
            yield from self._events(result)
        finally:
            if self.flush_prefix and request.prompt_ids:
                self._flush(int(request.prompt_ids[0]))

    def _events(self, result: StreamResult) -> Iterator[TokenEvent]:
        n = result.completion_tokens or 0
        if n == 0 or not result.chunk_times_s:
            return
        times, texts = list(result.chunk_times_s), list(result.chunk_texts)
        if n < len(times):
            texts = [*texts[: n - 1], "".join(texts[n - 1 :])]
            times = [*times[: n - 1], times[-1]]
        else:
            texts += [""] * (n - len(times))
            times += [times[-1]] * (n - len(times))
        ids = self._raw_tokenize(result.text)[:n] or [self.eos_id or 0]
        ids += [ids[-1]] * (n - len(ids))
        for index in range(n):
            reason = (result.finish_reason or "length") if index == n - 1 else None
            yield TokenEvent(index, ids[index], texts[index], times[index], reason)

    def _flush(self, first_token: int) -> None:
        """One-token request starting with a token other than ``first_token``, so no prefix is reused."""
        if not self._flush_texts:
            self._flush_texts = [(text, next(iter(self._raw_tokenize(text)), None)) for text in ("\n", ".")]
        text = next(t for t, first in self._flush_texts if first != first_token)
        payload: dict[str, Any] = {"prompt": text, "max_tokens": 1, "temperature": 0.0}
        if self.served_model:
            payload["model"] = self.served_model
        request_json(self.endpoint, "POST", "/v1/completions", payload, timeouts=self.timeouts)

    def top_logprobs(self, prompt_ids: Sequence[int], max_tokens: int, k: int = 5) -> ServedTopK:
        """Greedy ``max_tokens`` tokens (stopping at EOS) with the server's top-``k`` logprobs per token."""
        self._check_open()
        if self.api != "completions":
            raise LogitsUnavailable("openai_http: top_logprobs uses /v1/completions; load with api=completions")
        text = self.prompt_text(prompt_ids)
        payload: dict[str, Any] = {
            "prompt": text,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "logprobs": k,
            **GREEDY_FIELDS,
        }
        if self.served_model:
            payload["model"] = self.served_model
        try:
            answer = request_json(self.endpoint, "POST", "/v1/completions", payload, timeouts=self.timeouts)
        except HttpStatusError as exc:
            raise LogitsUnavailable(f"openai_http: the server returns no logprobs ({exc})") from None
        choice = (answer.get("choices") or [{}])[0] if isinstance(answer, dict) else {}
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        if not isinstance(logprobs, dict) or not logprobs.get("top_logprobs"):
            raise LogitsUnavailable(f"openai_http: {self.endpoint.url} answered without top_logprobs")
        try:
            usage = answer.get("usage") or {}
            return ServedTopK(
                prompt_tokens=int(usage.get("prompt_tokens", -1)),
                tokens=tuple(str(t) for t in logprobs["tokens"]),
                token_logprobs=tuple(float(x) for x in logprobs["token_logprobs"]),
                top=tuple({str(t): float(v) for t, v in (d or {}).items()} for d in logprobs["top_logprobs"]),
                k=k,
                finish_reason=choice.get("finish_reason"),
            )
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            why = shorten(f"{type(exc).__name__}: {exc}", 100)
        raise MinervaError(f"openai_http: {self.endpoint.url} answered logprobs of the wrong shape ({why})")

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """Always raises :class:`LogitsUnavailable`: a server returns top-k logprobs, not logits."""
        raise LogitsUnavailable(
            "openai_http: an OpenAI-compatible server returns only the top-k log-probabilities of generated "
            "tokens, not full logits; compare on the top-k with top_logprobs() and compare_topk()"
        )

    def incremental_logits(self, ids: Sequence[int], prefix_len: int) -> np.ndarray:
        """Always raises :class:`LogitsUnavailable` (see :meth:`logits`)."""
        return self.logits(ids)

    def kv_cache_bytes(self) -> int:
        """Always raises: a server's KV cache cannot be observed from the client."""
        raise MinervaError("openai_http: the server's KV cache cannot be observed from the client")

    def info(self) -> dict[str, Any]:
        """The endpoint (no key), API, served model, tokenizer and the local server's settings."""
        self._check_open()
        data: dict[str, Any] = {
            "engine": "openai_http",
            "backend": self.name,
            "endpoint": self.endpoint.url,
            "api_key_env": self.endpoint.api_key_env,
            "api": self.api,
            "device": self.device,
            "served_model": self.served_model,
            "tokenizer": self.tokenizer_source,
            "token_ids": "re-tokenized from the generated text (the server returns no ids)",
            "timeouts": {"connect_s": self.timeouts.connect_s, "read_s": self.timeouts.read_s},
            "prompt_text_lookups": self.prompt_lookups,
            "prefix_cache_flush": self.flush_prefix,
        }
        if self._vocab_size is not None:
            data["vocab_size"] = self._vocab_size
        if self._server is not None:
            data["server"] = self._server.info()
            data["threads"] = self._server.threads
            data["kv_cache_dtype"] = "f16"
            import importlib.metadata

            data["version"] = importlib.metadata.version("llama-cpp-python")
        return data

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def close(self) -> None:
        """Stop the server this backend started (if any); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._local = None
        self._stop_server()
