"""The child process that renders chat templates for :mod:`pytest_minerva.models.chat_template`.

It runs as ``python -m pytest_minerva.models.template_worker MEMORY_BYTES``, builds the Jinja
sandbox once, renders a small template so Jinja's lazy imports are done, then limits itself
(where :mod:`resource` exists): its address space to what it holds after start-up plus
``MEMORY_BYTES`` (Linux, which reports the size in ``/proc/self/status``), no core file, no
file written; its stderr then goes nowhere. It says it is ready and answers each JSON request
line on stdin with one JSON reply line on stdout:

* request: ``{"template": str, "context": {...}, "max_output_chars": int, "max_seconds": float}``
* reply: ``{"text": str}`` or ``{"error": KIND, "detail": str, "line": int | None}``, where
  ``KIND`` is ``unsafe``, ``syntax``, ``raised``, ``recursion``, ``failed``, ``output`` or
  ``memory``.

Before each render it raises its CPU-time soft limit to the CPU it has used plus the render's
limit and a second, so a render that outlives its parent is still ended by the kernel
(``SIGXCPU``). After a :class:`MemoryError` it replies and exits; the parent starts a fresh
one. It reads its requests until stdin closes, so it ends with its parent.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import sys
from typing import IO, Any

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

__all__ = ["main", "sandbox_environment"]

#: Compiled templates kept, by source text: a test session renders a handful of templates many times.
COMPILED_KEPT = 8
_MAX_POWER_BITS = 4096
_WARM_UP = "{% set ns = namespace(n=0) %}{% for m in messages %}{{ m | tojson }}{{ dict(a=1) }}{% endfor %}"


class _Raised(Exception):
    """``raise_exception(...)`` called by the template itself."""


class _TooLong(Exception):
    """The rendered prompt passed the request's ``max_output_chars``."""


def sandbox_environment() -> Any:
    """The Jinja environment templates render in; set its ``max_output_chars`` before each render.

    An :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` where an underscore attribute
    raises, the globals are only what chat templates use, ``namespace`` refuses underscore
    names, and ``*`` and ``**`` refuse huge results.
    """
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
    from jinja2.utils import Namespace

    class Environment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})
        max_output_chars = 1 << 20

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, count in ((left, right), (right, left)):
                    if (
                        isinstance(seq, str | list | tuple)
                        and isinstance(count, int)
                        and len(seq) * count > self.max_output_chars
                    ):
                        raise SecurityError(f"repeating a sequence {count} times is too large")
                return left * right
            huge = isinstance(left, int) and isinstance(right, int) and abs(left) > 1
            if huge and right * abs(left).bit_length() > _MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large")
            return left**right

    class SafeNamespace(Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                SafeNamespace.check(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            SafeNamespace.check(name)
            Namespace.__setitem__(self, name, value)

        @staticmethod
        def check(name: Any) -> None:
            if not isinstance(name, str) or name.startswith("_"):
                raise SecurityError(f"a namespace cannot hold the attribute {name!r}")

    def make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(*args, **kwargs)

    def raise_exception(message: Any) -> None:
        raise _Raised(str(message))

    def strftime_now(fmt: str) -> str:
        return datetime.datetime.now().strftime(str(fmt))

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, sort_keys: bool = False) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys)

    env = Environment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols], undefined=jinja2.Undefined
    )
    safe_range = env.globals["range"]
    env.globals.clear()
    env.globals.update(
        range=safe_range,
        dict=make_dict,
        namespace=SafeNamespace,
        raise_exception=raise_exception,
        strftime_now=strftime_now,
    )
    env.filters["tojson"] = tojson
    return env


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _render(env: Any, compiled: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    import jinja2
    from jinja2.sandbox import SecurityError

    source, limit = request["template"], int(request["max_output_chars"])
    env.max_output_chars = limit
    _limit_cpu(float(request["max_seconds"]))
    try:
        template = compiled.get(source)
        if template is None:
            template = env.from_string(source)
            if len(compiled) >= COMPILED_KEPT:
                compiled.clear()
            compiled[source] = template
        parts: list[str] = []
        size = 0
        for part in template.generate(**request["context"]):
            size += len(part)
            if size > limit:
                raise _TooLong
            parts.append(part)
        return {"text": "".join(parts)}
    except MemoryError:
        raise
    except _TooLong:
        return {"error": "output"}
    except SecurityError as exc:
        return {"error": "unsafe", "detail": _one_line(exc)}
    except jinja2.TemplateSyntaxError as exc:
        return {"error": "syntax", "detail": _one_line(exc), "line": exc.lineno}
    except _Raised as exc:
        return {"error": "raised", "detail": _one_line(exc)}
    except RecursionError:
        return {"error": "recursion"}
    except Exception as exc:
        return {"error": "failed", "detail": f"{type(exc).__name__}: {_one_line(exc)}"}


def _limit_cpu(seconds: float) -> None:
    if resource is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _address_space() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _limit_process(memory_bytes: int) -> int | None:
    """Apply the limits that hold for the child's whole life; the address-space limit, or ``None``."""
    if resource is None:
        return None
    import signal

    sys.dont_write_bytecode = True
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A file write then fails with EFBIG instead of killing the renderer.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    size = _address_space()
    if size is None:
        return None
    limit = size + memory_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    # Hard as well as soft: a template that escaped the sandbox cannot raise it again.
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return limit


def _send(out: IO[bytes], reply: dict[str, Any]) -> None:
    out.write(json.dumps(reply, ensure_ascii=True).encode("ascii") + b"\n")
    out.flush()


def main(argv: list[str] | None = None) -> int:
    """Serve render requests on stdin until it closes; 0, or 3 after running out of memory."""
    args = sys.argv[1:] if argv is None else argv
    out = sys.stdout.buffer
    try:
        memory_bytes = int(args[0])
        env = sandbox_environment()
        compiled: dict[str, Any] = {}
        warm = {"template": _WARM_UP, "context": {"messages": [{"a": 1}]}, "max_output_chars": 100, "max_seconds": 60}
        _render(env, compiled, warm)
        compiled.clear()
        memory_limit = _limit_process(memory_bytes)
    except Exception as exc:
        _send(out, {"ready": False, "error": f"{type(exc).__name__}: {_one_line(exc)}"})
        return 1
    # Nobody reads stderr after start-up: a full pipe would stall the renderer.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    _send(out, {"ready": True, "pid": os.getpid(), "memory_limit": memory_limit})
    for line in iter(sys.stdin.buffer.readline, b""):
        try:
            reply = _render(env, compiled, json.loads(line))
        except MemoryError:
            reply = {"error": "memory"}
        _send(out, reply)
        if reply.get("error") == "memory":
            return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
