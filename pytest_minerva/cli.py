"""The ``minerva`` command: models list/fetch, verify, and the benchmark tools.

Every sub-command turns expected failures (bad files, missing models, no network)
into one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from pytest_minerva.errors import MinervaError
from pytest_minerva.options import Settings, directory, positive_int

Command = Callable[[argparse.Namespace], int]


def standalone_hook() -> object:
    """A pluggy hook relay with minerva's hookspecs and the ``pytest_minerva`` entry points."""
    import pluggy

    from pytest_minerva import hookspecs

    manager = pluggy.PluginManager("pytest")
    manager.add_hookspecs(hookspecs)
    manager.load_setuptools_entrypoints("pytest_minerva")
    return manager.hook


def build_session(args: argparse.Namespace, models: list[str] | None = None) -> object:
    from pytest_minerva.session import MinervaSession

    settings = Settings(
        models=models if models is not None else list(getattr(args, "model", None) or []),
        backends=list(getattr(args, "backend", None) or []),
        cache_dir=getattr(args, "cache_dir", None),
        model_dir=getattr(args, "model_dir", None),
        threads=getattr(args, "threads", None),
    )
    return MinervaSession.create(settings, hook=standalone_hook())


def cmd_models_list(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from pytest_minerva.models_report import models_table

    session = build_session(args, models=[])
    out.write(models_table(session, names=args.names or None))  # type: ignore[arg-type]
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from pytest_minerva.fetch import fetch_model

    session = build_session(args, models=[])
    model = session.catalog.get(args.name)  # type: ignore[attr-defined]
    paths = fetch_model(
        model,
        formats=args.format or None,
        quant=args.quant,
        cache_dir=args.hf_cache,
        local_dir=args.local_dir,
        endpoint=args.endpoint,
        progress=not args.no_progress,
    )
    for path in paths:
        print(path)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pytest_minerva.formats import verify_command

    return verify_command(args.paths, deep=args.deep, out=sys.stdout)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=directory,
        metavar="DIR",
        help="artifact cache (default: $MINERVA_CACHE_DIR or the user cache dir)",
    )
    parser.add_argument(
        "--model-dir",
        type=directory,
        metavar="DIR",
        help="local model files as DIR/<model>/<file> (default: $MINERVA_MODEL_DIR)",
    )


def make_parser(extra: Sequence[Callable[[argparse._SubParsersAction], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minerva", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="list or fetch catalog models")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_sub.add_parser("list", help="every model, which formats are here, and how to get the rest")
    listing.add_argument("names", nargs="*", metavar="NAME", help="only these models")
    _add_common(listing)
    listing.set_defaults(func=cmd_models_list)

    fetch = models_sub.add_parser("fetch", help="download a catalog model from the Hugging Face Hub")
    fetch.add_argument("name", metavar="NAME")
    fetch.add_argument(
        "--format",
        action="append",
        choices=["gguf", "safetensors", "mlx"],
        help="formats to fetch (default: every format with a Hub repo)",
    )
    fetch.add_argument("--quant", metavar="QUANT", help="GGUF quantization, e.g. Q4_K_M (default: all listed)")
    fetch.add_argument(
        "--hf-cache",
        type=directory,
        metavar="DIR",
        help="Hugging Face cache to download into (default: the standard one)",
    )
    fetch.add_argument(
        "--local-dir",
        type=directory,
        metavar="DIR",
        help="download into DIR/<model>/ instead of the Hugging Face cache",
    )
    fetch.add_argument("--endpoint", metavar="URL", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(fetch)
    fetch.set_defaults(func=cmd_models_fetch)

    verify = sub.add_parser("verify", help="check GGUF / SafeTensors files without loading them")
    verify.add_argument("paths", nargs="+", metavar="PATH")
    verify.add_argument("--deep", action="store_true", help="also scan tensor data for NaN/Inf")
    verify.set_defaults(func=cmd_verify)

    for add in extra:
        add(sub)
    return parser


#: Modules that add sub-commands through an ``add_commands(subparsers)`` function.
EXTRA_COMMAND_MODULES = (
    "pytest_minerva.timing.cli",
    "pytest_minerva.equivalence.cli",
    "pytest_minerva.regression",
    "pytest_minerva.serving.cli",
    "pytest_minerva.doctor",
)


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands that live in their own modules (benchmarks, comparisons, calibration)."""
    import importlib

    found = []
    for module_name in EXTRA_COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise  # the module exists but something it imports is missing
            continue
        found.append(module.add_commands)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(_extra_commands())
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        positive_int(str(args.threads))
    try:
        return int(args.func(args))
    except MinervaError as exc:
        print(f"minerva: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("minerva: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
