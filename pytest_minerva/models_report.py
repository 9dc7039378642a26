"""``minerva models list``: what the catalog holds and what is on this machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_minerva.catalog import ArtifactSpec, ModelSpec
from pytest_minerva.errors import MinervaError
from pytest_minerva.session import MinervaSession


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
    lines = []
    models = [session.catalog.get(n) for n in names] if names else list(session.catalog)
    for model in models:
        default = " (default)" if model.default else ""
        lines.append(f"{model.name}{default}: {model.architecture}; {model.description}")
        for spec in model.artifacts:
            status = artifact_status(session, model, spec)
            lines.append(f"  {status.variant:<22} {status.state:<10} {status.where}")
            summary = tokenizer_summary(status.manifest) if status.manifest else None
            if summary:
                lines.append(f"  {'':<22} {'':<10} {summary}")
    return "\n".join(lines) + "\n"
