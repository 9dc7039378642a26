"""A small TOML writer: the value types our TOML files hold (the tolerances file), written deterministically.

The standard library reads TOML (``tomllib``) but does not write it. This writes what
our files need: bare or quoted keys; booleans, integers, floats (``inf`` and ``nan``
included), strings, and arrays of those; one ``[table]`` or ``[[array.of.tables]]``
header followed by its ``key = value`` lines. Anything else (``None``, a dict as a
value, dates, bytes) raises ``TypeError``: it is never written in some other form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when it can be, else a quoted (basic string) key."""
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def toml_value(value: Any) -> str:
    """``value`` as a TOML value; ``TypeError`` for a type this writer does not write."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".eEn") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def table_lines(header: str, items: Mapping[str, Any]) -> list[str]:
    """A table's lines: ``header`` (``[name]`` or ``[[name]]``), one ``key = value`` per item, a blank line."""
    return [header, *(f"{toml_key(k)} = {toml_value(v)}" for k, v in items.items()), ""]


def leading_comments(text: str) -> str:
    """The comment block that opens a TOML document (``#`` lines and blank lines between them), to keep on rewrite."""
    header: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or (header and not line.strip()):
            header.append(line)
        else:
            break
    return "\n".join(header).rstrip("\n")
