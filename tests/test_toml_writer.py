"""The TOML writer: what it writes reads back through ``tomllib`` unchanged, and it refuses the rest."""

from __future__ import annotations

import datetime
import math
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_minerva.storage.toml_writer import leading_comments, table_lines, toml_key, toml_value

# TOML strings cannot hold DEL (U+007F) unescaped and the writer does not escape it; lone surrogates
# cannot be encoded at all. Both are left out: neither ever appears in a tolerances file.
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x7f"), max_size=30)
SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    TEXT,
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4), max_leaves=10)


def read_back(items: dict[str, Any]) -> dict[str, Any]:
    return tomllib.loads("\n".join(table_lines("[t]", items)))["t"]


def as_lists(value: Any) -> Any:
    return [as_lists(v) for v in value] if isinstance(value, list | tuple) else value


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(TEXT, VALUES, max_size=6))
def test_tables_round_trip(items: dict[str, Any]) -> None:
    assert read_back(items) == items


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0"),
        (-12, "-12"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (1e-05, "1e-05"),
        (1e16, "1e+16"),
        (0.1, "0.1"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        ("plain", '"plain"'),
        ('quote " and \\ and \n', '"quote \\" and \\\\ and \\n"'),
        ("naïve 日本語", '"naïve 日本語"'),
        ([1, 2.5, "x", [True]], '[1, 2.5, "x", [true]]'),
        ((1, 2), "[1, 2]"),
        ([], "[]"),
    ],
)
def test_values_are_written_exactly(value: Any, text: str) -> None:
    assert toml_value(value) == text
    assert read_back({"v": value})["v"] == as_lists(value)


def test_floats_keep_their_type_and_nan_reads_back_as_nan() -> None:
    assert isinstance(read_back({"v": 3.0})["v"], float)
    assert isinstance(read_back({"v": 3})["v"], int)
    assert math.isnan(read_back({"v": math.nan})["v"])


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("kl_mean", "kl_mean"),
        ("a-b_C9", "a-b_C9"),
        ("same-weights-q4_1", "same-weights-q4_1"),
        ("dotted.name", '"dotted.name"'),
        ("with space", '"with space"'),
        ("", '""'),
        ("ключ", '"ключ"'),
    ],
)
def test_keys_are_bare_when_they_can_be(key: str, text: str) -> None:
    assert toml_key(key) == text
    assert read_back({key: 1}) == {key: 1}


def test_table_lines_and_arrays_of_tables() -> None:
    lines = [
        *table_lines('[profiles."f32-vs-f16"]', {"same_weights": False}),
        *table_lines('[[profiles."f32-vs-f16".measurements]]', {"positions": 3}),
        *table_lines('[[profiles."f32-vs-f16".measurements]]', {"positions": 4}),
    ]
    assert lines[:3] == ['[profiles."f32-vs-f16"]', "same_weights = false", ""]
    data = tomllib.loads("\n".join(lines))
    profile = data["profiles"]["f32-vs-f16"]
    assert profile["same_weights"] is False
    assert [m["positions"] for m in profile["measurements"]] == [3, 4]


@pytest.mark.parametrize(
    "value",
    [None, {"a": 1}, [1, None], b"bytes", {1, 2}, datetime.date(2026, 1, 1), 1 + 2j, object()],
    ids=["none", "dict", "list-with-none", "bytes", "set", "date", "complex", "object"],
)
def test_values_it_cannot_write_are_refused(value: Any) -> None:
    with pytest.raises(TypeError, match=r"cannot write \w+ to TOML"):
        toml_value(value)
    with pytest.raises(TypeError):
        table_lines("[t]", {"v": value})


def test_leading_comments_keep_the_opening_comment_block_only() -> None:
    text = "# one\n#\n\n# two\nschema_version = 1\n# not kept\n"
    assert leading_comments(text) == "# one\n#\n\n# two"
    assert leading_comments("# only\n\n\n") == "# only"
    assert leading_comments("schema_version = 1\n# late\n") == ""
    assert leading_comments("") == ""
