"""``minerva models list`` and ``minerva models fetch``: what the catalog holds, what is on
this machine, and fetching the rest from the Hugging Face Hub."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from pytest_minerva.errors import MinervaError, printable
from pytest_minerva.models.catalog import ArtifactSpec, ModelSpec
from pytest_minerva.option_types import endpoint_url, plain_text, writable_directory
from pytest_minerva.options import Settings, add_location_options
from pytest_minerva.session import MinervaSession, build_session


@dataclass(frozen=True)
class ArtifactStatus:
    variant: str
    state: str  # present | generated | derived | derivable | missing
    where: str
    manifest: dict[str, Any] | None = None


def artifact_status(session: MinervaSession, model: ModelSpec, spec: ArtifactSpec) -> ArtifactStatus:
    """Where an artifact is, or how it would be made or fetched; builds nothing."""
    resolver = session.resolver
    try:
        found = resolver.locate(model, spec)
    except MinervaError as exc:
        return ArtifactStatus(spec.variant, "missing", str(exc))
    if found is not None:
        path, source = found
        return ArtifactStatus(spec.variant, "present", f"{source}: {path}")
    if spec.generator or (model.generator and not spec.derive_from):
        return ArtifactStatus(spec.variant, "generated", "built from the seed on first use (seconds), then cached")
    if spec.derive_from:
        cached = resolver.cached_derivation(model, spec)
        if cached is not None:
            return ArtifactStatus(spec.variant, "derived", f"cached: {cached.path}", cached.manifest)
        sources = [s.variant for s in model.variants(spec.derive_from) if _is_obtainable(session, model, s)]
        if sources:
            return ArtifactStatus(spec.variant, "derivable", f"converted from {sources[0]} on first use, then cached")
        missing = resolver.how_to_get(model, spec) if spec.hf_repo else f"needs {spec.derive_from} first"
        return ArtifactStatus(spec.variant, "missing", missing)
    return ArtifactStatus(spec.variant, "missing", resolver.how_to_get(model, spec))


def _is_obtainable(session: MinervaSession, model: ModelSpec, spec: ArtifactSpec) -> bool:
    return artifact_status(session, model, spec).state in ("present", "generated", "derived", "derivable")


def tokenizer_summary(manifest: dict[str, Any]) -> str | None:
    """One line on the tokenizer checks a derived artifact's manifest records, or None if it records none."""
    entry = manifest.get("tokenizer")
    if not isinstance(entry, dict):
        return None
    corpus = entry.get("corpus") or {}
    rule = str(entry.get("rule", "")).split(":", 1)[0]
    parts = [f"rule {rule}"] if rule else []
    if entry.get("verified"):
        parts.append(f"{corpus.get('identical')}/{corpus.get('texts')} corpus texts as {entry.get('reference')}")
    else:
        parts.append(f"UNVERIFIED ({entry.get('unverified', 'not compared')})")
    engine = entry.get("transformers_gguf_loader")
    if isinstance(engine, dict) and engine.get("identical") != engine.get("texts"):
        differing = int(engine.get("texts", 0)) - int(engine.get("identical", 0))
        first = engine.get("first_difference")
        parts.append(f"transformers' own GGUF tokenizer differs on {differing} (first {first})")
    return "tokenizer: " + "; ".join(parts)


def models_table(session: MinervaSession, names: list[str] | None = None) -> str:
    """What ``minerva models list`` prints; every name, path and message in it is one escaped line."""
    lines = []
    models = [session.catalog.get(n) for n in names] if names else list(session.catalog)
    for model in models:
        default = " (default)" if model.default else ""
        lines.append(printable(f"{model.name}{default}: {model.architecture}; {model.description}"))
        for spec in model.artifacts:
            status = artifact_status(session, model, spec)
            lines.append(printable(f"  {status.variant:<22} {status.state:<10} {status.where}"))
            summary = tokenizer_summary(status.manifest) if status.manifest else None
            if summary:
                lines.append(printable(f"  {'':<22} {'':<10} {summary}"))
    return "\n".join(lines) + "\n"


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``models list`` and ``models fetch``."""
    models = subparsers.add_parser("models", help="list or fetch catalog models")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = models_sub.add_parser("list", help="every model, which formats are here, and how to get the rest")
    listing.add_argument("names", nargs="*", type=plain_text, metavar="NAME", help="only these models")
    add_location_options(listing, "models")
    listing.set_defaults(func=cmd_models_list)

    fetch = models_sub.add_parser("fetch", help="download a catalog model from the Hugging Face Hub")
    fetch.add_argument("name", type=plain_text, metavar="NAME")
    fetch.add_argument(
        "--format",
        action="append",
        choices=["gguf", "safetensors", "mlx"],
        help="formats to fetch (default: every format with a Hub repo)",
    )
    fetch.add_argument(
        "--quant", type=plain_text, metavar="QUANT", help="GGUF quantization, e.g. Q4_K_M (default: all listed)"
    )
    fetch.add_argument(
        "--hf-cache",
        type=writable_directory,
        metavar="DIR",
        help="Hugging Face cache to download into (default: the standard one)",
    )
    fetch.add_argument(
        "--local-dir",
        type=writable_directory,
        metavar="DIR",
        help="download into DIR/<model>/ instead of the Hugging Face cache",
    )
    fetch.add_argument(
        "--endpoint", type=endpoint_url, metavar="URL", help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)"
    )
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_location_options(fetch, "models")
    fetch.set_defaults(func=cmd_models_fetch)


def cmd_models_list(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    session = build_session(Settings.from_args(args, models=[]))
    out.write(models_table(session, names=args.names or None))
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from pytest_minerva.models.fetch import fetch_model

    session = build_session(Settings.from_args(args, models=[]))
    model = session.catalog.get(args.name)
    paths = fetch_model(
        model,
        formats=args.format or None,
        quant=args.quant,
        catalog=list(session.catalog),
        cache_dir=args.hf_cache,
        local_dir=args.local_dir,
        endpoint=args.endpoint,
        progress=not args.no_progress,
    )
    for path in paths:
        print(printable(path))
    return 0
