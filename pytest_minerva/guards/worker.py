"""The worker process: the child side of :mod:`pytest_minerva.guards.isolated`.

It loads backends on request (each gets a handle) and answers requests for them (``load``,
``tokenize``, ``detokenize``, ``logits``, ``incremental_logits``, ``stream``, ``info``,
``call`` for a forwarded capability method, ``unload``, ``facts``, ``stop``) in the format of
:mod:`pytest_minerva.guards.protocol`. An engine's exception goes back as an error reply; a
crash ends this process, which the parent notices. Its entry point is :func:`worker_main`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import traceback
from typing import IO, TYPE_CHECKING, Any

from pytest_minerva.errors import BackendUnavailable, MinervaError
from pytest_minerva.guards.memory import is_out_of_memory
from pytest_minerva.guards.protocol import (
    FORWARDED_METHODS,
    artifact_from_json,
    encode_array,
    event_json,
    protocol_input,
    protocol_output,
    read_message_blocking,
    result_to_json,
    spec_from_json,
    write_message,
)

if TYPE_CHECKING:
    from pytest_minerva.backends.base import Backend

__all__ = ["worker_main"]


def _build_in_worker(request: dict[str, Any]) -> Backend:
    from pytest_minerva.backends.base import LoadOptions

    spec = spec_from_json(request["spec"])
    artifact = artifact_from_json(request["artifact"])
    options = LoadOptions(**request["options"])
    import importlib.metadata

    if importlib.metadata.entry_points(group="pytest_minerva"):
        from pytest_minerva.hookspecs import hook_relay

        hook: Any = hook_relay()
        built = hook.pytest_minerva_make_backend(spec=spec, artifact=artifact, options=options)
        if built is not None:
            return built  # type: ignore[no-any-return]
    return spec.build(artifact, options)


def _facts_in_worker(request: dict[str, Any]) -> dict[str, Any]:
    """The backend class's ``build_facts()`` (how its engine was built), ``{}`` where it has none."""
    factory = spec_from_json(request["spec"]).factory()
    facts = getattr(factory, "build_facts", None)
    value = facts() if callable(facts) else {}
    return json.loads(json.dumps(value, default=str)) if isinstance(value, dict) else {"facts": str(value)}


def _error_reply(exc: BaseException) -> dict[str, Any]:
    from pytest_minerva import errors

    kind = type(exc).__name__
    known = kind if isinstance(exc, MinervaError) and hasattr(errors, kind) else None
    category = "oom" if is_out_of_memory(exc) else "unavailable" if isinstance(exc, BackendUnavailable) else "error"
    tail = traceback.format_exception(exc)[-6:]
    return {
        "ok": False,
        "error": {"type": kind, "known": known, "category": category, "message": str(exc), "traceback": tail},
    }


def _serve(backend: Backend, header: dict[str, Any], out: IO[bytes]) -> None:
    from pytest_minerva.backends.base import GenerationRequest

    op = header["op"]
    if op in ("logits", "incremental_logits"):
        args = [header["ids"]] + ([header["prefix_len"]] if op == "incremental_logits" else [])
        meta, payload = encode_array(getattr(backend, op)(*args))
        write_message(out, {"ok": True, "array": meta}, payload)
    elif op == "stream":
        from pytest_minerva.timing.clock import receipts

        request = GenerationRequest(**{**header["request"], "prompt_ids": tuple(header["request"]["prompt_ids"])})
        # Each event goes out as it comes, with the harness's receipt taken here, at the engine's generator.
        for event, received_s in receipts(backend.stream(request)):
            write_message(out, {"ok": True, "event": event_json(event), "received_s": received_s})
        write_message(out, {"ok": True, "done": True})
    elif op == "tokenize":
        write_message(out, {"ok": True, "value": backend.tokenize(header["text"], add_bos=header["add_bos"])})
    elif op == "detokenize":
        write_message(out, {"ok": True, "value": backend.detokenize(header["ids"])})
    elif op == "info":
        write_message(out, {"ok": True, "value": json.loads(json.dumps(backend.info(), default=str))})
    elif op == "call" and header["name"] in FORWARDED_METHODS:
        value = getattr(backend, header["name"])(*header.get("args", []), **header.get("kwargs", {}))
        write_message(out, {"ok": True, **result_to_json(value)})
    else:
        write_message(out, {"ok": False, "error": {"type": "ProtocolError", "message": f"unknown op {op!r}"}})


def _loaded_json(backend: Backend, handle: int) -> dict[str, Any]:
    return {
        "handle": handle,
        "name": backend.name,
        "device": backend.device,
        "vocab_size": backend.vocab_size,
        "bos_id": backend.bos_id,
        "eos_id": backend.eos_id,
        "forwarded": [m for m in FORWARDED_METHODS if callable(getattr(backend, m, None))],
        "pid": os.getpid(),
    }


def worker_main() -> int:
    """The worker: load backends on request (each gets a handle), answer requests for them until
    told to stop or stdin closes. One worker serves every model of one engine in a session, so
    the engine is imported once, not once per load. Engines see an empty stdin (:func:`protocol_input`)."""
    out = protocol_output()
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    stdin = protocol_input()
    backends: dict[int, Backend] = {}
    next_handle = 1
    while True:
        message = read_message_blocking(stdin)
        if message is None:
            break
        header, _payload = message
        op = header.get("op")
        if op == "stop":
            break
        try:
            if op == "facts":
                write_message(out, {"ok": True, "value": _facts_in_worker(header)})
                continue
            if op == "load":
                built = _build_in_worker(header)
                backends[next_handle] = built
                write_message(out, {"ok": True, "value": _loaded_json(built, next_handle)})
                next_handle += 1
                continue
            handle = header.get("handle")
            if handle is None and len(backends) == 1:
                handle = next(iter(backends))
            backend = backends.get(handle) if isinstance(handle, int) else None
            if backend is None:
                write_message(
                    out, {"ok": False, "error": {"type": "ProtocolError", "message": f"no backend loaded as {handle}"}}
                )
            elif op == "unload":
                del backends[handle]  # type: ignore[arg-type]
                backend.close()
                write_message(out, {"ok": True, "value": None})
            else:
                _serve(backend, header, out)
        except Exception as exc:
            write_message(out, _error_reply(exc))
    for backend in backends.values():
        with contextlib.suppress(Exception):
            backend.close()
    return 0
