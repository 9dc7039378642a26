"""What a backend spec and the option table declare, and that every consumer reads it there.

The matrix takes an engine's precision and the reference of each kind of comparison from
its :class:`~pytest_minerva.backends.BackendSpec`, never from its name, so a third-party
engine is held to the tolerances of what it computes in. The ``minerva`` subcommands, the
pytest plugin and the asv suite take each shared option from :mod:`pytest_minerva.options`.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_minerva import options
from pytest_minerva.backends import BackendSpec, builtin_registry
from pytest_minerva.commands import make_parser
from pytest_minerva.matrix import TOKENIZER_PAIRS, backend_cases, pairs
from pytest_minerva.models.catalog import Catalog

REPO = Path(__file__).resolve().parents[1]


def third_party(name: str, **fields: object) -> BackendSpec:
    return BackendSpec(name, formats=("gguf",), target="thirdparty.engine:Backend", **fields)  # type: ignore[arg-type]


def tiny_cases(*specs: BackendSpec) -> list:
    model = Catalog.load().get("tiny-random-llama")
    return backend_cases([model], specs, {spec.name: ["cpu"] for spec in specs})


def test_a_gguf_engine_computes_in_the_stored_quantization_unless_its_spec_says_otherwise() -> None:
    native = {c.artifact.quant: c.precision for c in tiny_cases(third_party("blocks"))}
    assert native["Q4_0"] == "q4_0" and native["Q8_0"] == "q8_0" and native["F16"] == "f16"
    dequantizing = {c.artifact.quant: c.precision for c in tiny_cases(third_party("deq", computes_in={"gguf": "f32"}))}
    assert set(dequantizing.values()) == {"f32"}
    # the built-ins declare the same facts: llama.cpp runs the blocks, transformers dequantizes
    registry = builtin_registry()
    by_backend = {(c.backend.name, c.artifact.quant): c.precision for c in tiny_cases(*registry.for_format("gguf"))}
    assert by_backend["llama_cpp", "Q4_1"] == "q4_1"
    assert by_backend["transformers", "Q4_1"] == "f32"


def test_the_reference_of_each_comparison_is_the_engine_whose_spec_claims_it() -> None:
    registry = builtin_registry()
    llama = registry.get("llama_cpp")
    # a third-party engine that declares itself the GGUF reference, with llama.cpp's role taken away
    mine = third_party("mine", reference_for={"quantization": "gguf", TOKENIZER_PAIRS: "gguf"})
    plain_llama = dataclasses.replace(llama, reference_for={})
    cases = tiny_cases(plain_llama, mine)
    quantization = pairs(cases, ["quantization"])
    assert quantization, "the tiny model has several GGUF variants, so there are quantization pairs"
    assert {p.reference.backend.name for p in quantization} == {"mine"}
    assert {p.candidate.backend.name for p in quantization} == {"mine"}  # same engine, other variants
    assert {p.reference.artifact.quant for p in quantization} == {"F32"}
    tokenizer = pairs(cases, [TOKENIZER_PAIRS])
    assert {p.reference.id for p in tokenizer} == {"tiny-random-llama-gguf-f32-mine-cpu"}
    # nobody claims cross-backend here, so there is no such pair rather than a guessed one
    assert pairs(cases, ["cross-backend"]) == []


def subcommand(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


COMMANDS = {
    "bench": ("bench",),
    "compare": ("compare",),
    "serve-bench": ("serve-bench",),
    "calibrate": ("calibrate",),
    "doctor": ("doctor",),
    "models": ("models", "list"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_takes_shared_options_from_the_one_table(command: str) -> None:
    parser = subcommand(make_parser(), *COMMANDS[command])
    by_flag = {opt: action for action in parser._actions for opt in action.option_strings}
    shared = [declared for declared in options.ALL_OPTIONS if f"--{declared.flag}" in by_flag]
    assert shared, f"{command} has none of the shared options"
    for declared in shared:
        action = by_flag[f"--{declared.flag}"]
        assert action.type is declared.kwargs.get("type"), f"{command} --{declared.flag} validates differently"
        expected = declared.default_for(command)
        expected = list(expected) if isinstance(expected, tuple) else expected
        if declared is not options.ISOLATE:
            assert action.default == expected, f"{command} --{declared.flag} default drifted"
        assert action.help == declared.help_for(command)


def test_runs_defaults_are_declared_side_by_side_and_asv_reads_its_own() -> None:
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import common
    finally:
        sys.path.remove(str(REPO))
    assert common.DEFAULT_RUNS == options.default_for("runs", "asv") == 8
    assert (options.default_for("runs", "bench"), options.default_for("runs", "compare")) == (5, 3)


def test_a_bad_option_value_is_a_usage_error_not_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_minerva.commands", "calibrate", "--threads", "0", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "argument --threads: '0' must be at least 1" in done.stderr
