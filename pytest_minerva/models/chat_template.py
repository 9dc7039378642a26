"""Render a model's chat template safely.

A GGUF file carries its chat template as Jinja source in ``tokenizer.chat_template``;
whoever made the file wrote it, so it is untrusted code. :func:`render_chat_template`
runs it in Jinja's :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` and adds
what the sandbox leaves open:

* reaching an underscore attribute (``''.__class__``, ``x.__globals__``) raises at
  once instead of rendering as an empty string, so an attack fails loudly;
* the globals are only what chat templates use (``range``, ``dict``, ``namespace``,
  ``raise_exception``, ``strftime_now``): no ``cycler``, ``joiner`` or ``lipsum``,
  and ``namespace`` refuses underscore names;
* ``*`` and ``**`` refuse results that would be huge, the output is capped at
  :data:`MAX_OUTPUT_CHARS`, and rendering is limited to :data:`MAX_SECONDS`;
* the messages are rebuilt from plain JSON types, so the template sees no object
  with methods.

Every failure is a :class:`ChatTemplateError` whose message is one line naming the
template's source and the problem.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_minerva.errors import MinervaError

__all__ = ["MAX_OUTPUT_CHARS", "MAX_SECONDS", "ChatTemplateError", "gguf_chat_template", "render_chat_template"]

#: Longest rendered prompt accepted.
MAX_OUTPUT_CHARS = 1 << 20
#: Longest time one rendering may take.
MAX_SECONDS = 5.0
_MAX_POWER_BITS = 4096


class ChatTemplateError(MinervaError):
    """A chat template is invalid, unsafe, or failed to render."""


class _Raised(Exception):
    """``raise_exception(...)`` called by the template itself."""


def _plain(value: Any, depth: int = 0) -> Any:
    if depth > 32:
        raise ChatTemplateError("the messages nest more than 32 levels deep")
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {str(_plain(k, depth + 1)): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    raise ChatTemplateError(f"message values must be JSON types, got {type(value).__name__}")


def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
    from jinja2.utils import Namespace

    class Environment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__} is not allowed")

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, count in ((left, right), (right, left)):
                    if (
                        isinstance(seq, str | list | tuple)
                        and isinstance(count, int)
                        and len(seq) * count > MAX_OUTPUT_CHARS
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


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = True,
    source: str = "chat template",
    bos_token: str = "",
    eos_token: str = "",
    **variables: Any,
) -> str:
    """Render ``template`` for ``messages`` (``[{"role": ..., "content": ...}]``) in the sandbox.

    ``variables`` (``tools``, ``date_string``...) are passed to the template as plain
    JSON values. ``source`` names the template in error messages (e.g. the GGUF path).
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    from pytest_minerva.guards import BackendTimeout, time_limit

    context = _plain(
        {
            "messages": list(messages),
            "add_generation_prompt": bool(add_generation_prompt),
            "bos_token": bos_token,
            "eos_token": eos_token,
            **variables,
        }
    )
    try:
        with time_limit(MAX_SECONDS, f"{source}: rendering", hint="chat templates get 5 s", hard=False):
            compiled = _environment().from_string(template)
            parts: list[str] = []
            size = 0
            for part in compiled.generate(**context):
                size += len(part)
                if size > MAX_OUTPUT_CHARS:
                    raise ChatTemplateError(f"{source}: the rendered prompt passed {MAX_OUTPUT_CHARS} characters")
                parts.append(part)
    except ChatTemplateError:
        raise
    except BackendTimeout:
        raise ChatTemplateError(f"{source}: rendering took more than {MAX_SECONDS:.0f} s") from None
    except SecurityError as exc:
        raise ChatTemplateError(f"{source}: refused unsafe template code: {_one_line(exc)}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"{source}: not a valid Jinja template: {_one_line(exc)} (line {exc.lineno})") from None
    except _Raised as exc:
        raise ChatTemplateError(f"{source}: the template raised an error: {_one_line(exc)}") from None
    except RecursionError:
        raise ChatTemplateError(f"{source}: the template nests or recurses too deeply") from None
    except (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError, AttributeError) as exc:
        raise ChatTemplateError(f"{source}: rendering failed: {type(exc).__name__}: {_one_line(exc)}") from None
    return "".join(parts)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def gguf_chat_template(path: str | Path) -> str | None:
    """The ``tokenizer.chat_template`` of a GGUF file, or ``None`` when it has none.

    The file is read by :func:`pytest_minerva.formats.verify`, so a malformed file
    raises :class:`~pytest_minerva.errors.FormatError` and nothing else.
    """
    from pytest_minerva.errors import FormatError
    from pytest_minerva.formats import verify

    summary = verify(path)
    value = summary.metadata.get("tokenizer.chat_template")
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormatError(path, f"tokenizer.chat_template is a {type(value).__name__}, not a string it can keep")
    return value
