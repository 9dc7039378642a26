"""Command-line options and ini settings, and the parsed settings object.

Every option has an ini twin so a project can configure the plugin in
``pyproject.toml`` under ``[tool.pytest.ini_options]``; the command line wins.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_minerva.hardware import DEVICES


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in str(value).split(",") if v.strip())
    return out


def model_name(value: str) -> str:
    """``--model`` accepts a catalog name, an alias, or a path to a file or directory."""
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("--model needs a catalog name or a path, got an empty string")
    return value


def backend_name(value: str) -> str:
    import re

    for part in value.split(","):
        if part.strip() and not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", part.strip()):
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a backend name (lower-case letters, digits, '.', '_', '-')"
            )
    return value


def device_name(value: str) -> str:
    for part in value.split(","):
        part = part.strip()
        if part and part not in (*DEVICES, "auto"):
            raise argparse.ArgumentTypeError(f"unknown device {part!r}; choose from auto, {', '.join(DEVICES)}")
    return value


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be greater than 0")
    return number


def directory(value: str) -> str:
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value}: exists and is not a directory")
    return str(path)


def register(parser: pytest.Parser) -> None:
    group = parser.getgroup("minerva", "pytest-minerva: LLM backend correctness and speed")
    group.addoption(
        "--model",
        action="append",
        dest="minerva_models",
        type=model_name,
        metavar="NAME",
        help="model to test: a catalog name (see `minerva models list`), an alias, or a path to a .gguf "
        "file or model directory; repeatable or comma-separated (default: the catalog's default models, "
        "ini: minerva_models)",
    )
    group.addoption(
        "--backend",
        action="append",
        dest="minerva_backends",
        type=backend_name,
        metavar="NAME",
        help="backend to run: llama_cpp, transformers, mlx_lm, openai_http or one a plugin registers; "
        "repeatable (default: every registered backend but the opt-in openai_http, ini: minerva_backends)",
    )
    group.addoption(
        "--device",
        action="append",
        dest="minerva_devices",
        type=device_name,
        metavar="DEVICE",
        help="device to run on: cpu, cuda, metal or auto (every device found here); repeatable "
        "(default: auto, ini: minerva_devices)",
    )
    group.addoption(
        "--minerva-cache-dir",
        dest="minerva_cache_dir",
        type=directory,
        metavar="DIR",
        help="where derived and generated artifacts are cached (default: $MINERVA_CACHE_DIR or the user "
        "cache dir, ini: minerva_cache_dir)",
    )
    group.addoption(
        "--minerva-model-dir",
        dest="minerva_model_dir",
        type=directory,
        metavar="DIR",
        help="directory holding local model files as DIR/<model>/<file> (default: $MINERVA_MODEL_DIR, "
        "ini: minerva_model_dir)",
    )
    group.addoption(
        "--minerva-threads",
        dest="minerva_threads",
        type=positive_int,
        metavar="N",
        help="CPU threads per backend (default: the number of physical cores, ini: minerva_threads)",
    )
    group.addoption(
        "--minerva-no-derive",
        dest="minerva_no_derive",
        action="store_true",
        default=None,
        help="skip formats that would have to be derived from another format instead of converting "
        "(default: derive, ini: minerva_no_derive)",
    )
    group.addoption(
        "--minerva-update-golden",
        dest="minerva_update_golden",
        action="store_true",
        default=False,
        help="rewrite the golden numerics under fixtures/golden/ from this run and show the diff "
        "(default: compare against them)",
    )
    group.addoption(
        "--minerva-isolate",
        dest="minerva_isolate",
        action="store_true",
        default=None,
        help="run every backend, pure-Python ones too, in a worker process (default: engines that run native "
        "code do, so a segfault fails the tests that touched it and the session goes on; ini: minerva_isolate)",
    )
    group.addoption(
        "--minerva-no-isolate",
        dest="minerva_isolate",
        action="store_false",
        help="run every backend in this process: faster loads, but a segfault in an engine ends the session "
        "(ini: minerva_isolate = false)",
    )
    group.addoption(
        "--minerva-timeout",
        dest="minerva_timeout",
        type=positive_float,
        metavar="SECONDS",
        help="time limit in seconds for one backend load or generation (default: scaled to the model's size, "
        "ini: minerva_timeout)",
    )
    group.addoption(
        "--minerva-endpoint",
        dest="minerva_endpoint",
        metavar="URL",
        help="base URL of an OpenAI-compatible server for the openai_http backend, e.g. "
        "http://127.0.0.1:8080 (default: start llama_cpp.server on loopback, ini: minerva_endpoint)",
    )
    group.addoption(
        "--minerva-api-key-env",
        dest="minerva_api_key_env",
        metavar="VAR",
        help="environment variable holding the API key for --minerva-endpoint; the key is never printed "
        "(ini: minerva_api_key_env)",
    )

    parser.addini("minerva_models", "models to test (names, aliases or paths)", type="args")
    parser.addini("minerva_backends", "backends to run", type="args")
    parser.addini("minerva_devices", "devices to run on (cpu, cuda, metal, auto)", type="args")
    parser.addini("minerva_cache_dir", "cache for derived and generated artifacts")
    parser.addini("minerva_model_dir", "directory of local model files")
    parser.addini("minerva_threads", "CPU threads per backend")
    parser.addini("minerva_no_derive", "skip formats that would be derived", type="bool", default=False)
    parser.addini(
        "minerva_isolate",
        "which backends run in a worker process: auto (engines with native code), true (all), false (none)",
        default="auto",
    )
    parser.addini("minerva_timeout", "time limit in seconds for one backend load or generation")
    parser.addini("minerva_endpoint", "base URL of an OpenAI-compatible server (openai_http backend)")
    parser.addini("minerva_api_key_env", "environment variable holding the endpoint's API key")


def isolate_mode(value: str) -> bool | None:
    """The ``minerva_isolate`` ini value: ``auto`` -> None, true/false -> bool."""
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise pytest.UsageError(f"ini option minerva_isolate: {value!r} is not auto, true or false")


@dataclass
class Settings:
    """The parsed options, command line over ini over defaults."""

    models: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=lambda: ["auto"])
    cache_dir: Path | None = None
    model_dir: Path | None = None
    threads: int | None = None
    derive: bool = True
    update_golden: bool = False
    #: Which backends run in a worker process: None = those whose spec says they run native
    #: code (the default), True = every backend, False = none.
    isolate: bool | None = None
    timeout_s: float | None = None  # None: scaled to the artifact size (isolation.Limits.for_size)
    endpoint: str | None = None
    api_key_env: str | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        def pick(option: str, ini: str) -> object:
            value = config.getoption(option, default=None)
            return value if value not in (None, []) else config.getini(ini)

        def ini_or_error(ini: str, convert: type | object) -> object:
            raw = config.getini(ini)
            if raw in (None, "", []):
                return None
            try:
                return convert(str(raw))  # type: ignore[operator]
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option {ini}: {exc}") from None

        cache = config.getoption("minerva_cache_dir") or config.getini("minerva_cache_dir") or None
        model_dir = (
            config.getoption("minerva_model_dir")
            or config.getini("minerva_model_dir")
            or os.environ.get("MINERVA_MODEL_DIR")
            or None
        )
        threads = config.getoption("minerva_threads") or ini_or_error("minerva_threads", positive_int)
        timeout = config.getoption("minerva_timeout") or ini_or_error("minerva_timeout", positive_float)
        no_derive = config.getoption("minerva_no_derive")
        isolate = config.getoption("minerva_isolate")
        devices = _split(pick("minerva_devices", "minerva_devices"))  # type: ignore[arg-type]
        for device in devices:
            try:
                device_name(device)
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"minerva_devices: {exc}") from None
        return cls(
            models=_split(pick("minerva_models", "minerva_models")),  # type: ignore[arg-type]
            backends=_split(pick("minerva_backends", "minerva_backends")),  # type: ignore[arg-type]
            devices=devices or ["auto"],
            cache_dir=Path(str(cache)).expanduser() if cache else None,
            model_dir=Path(str(model_dir)).expanduser() if model_dir else None,
            threads=int(str(threads)) if threads else None,
            derive=not (no_derive if no_derive is not None else config.getini("minerva_no_derive")),
            update_golden=bool(config.getoption("minerva_update_golden")),
            isolate=isolate if isolate is not None else isolate_mode(str(config.getini("minerva_isolate"))),
            timeout_s=float(timeout) if timeout else None,  # type: ignore[arg-type]
            endpoint=str(pick("minerva_endpoint", "minerva_endpoint") or "") or None,
            api_key_env=str(pick("minerva_api_key_env", "minerva_api_key_env") or "") or None,
        )
