"""The test matrix: model x format x backend x device cases, and the pairs compared.

A :class:`Case` is one cell; its id reads like ``smollm2-135m-gguf-llama_cpp-cpu`` (the
quantization joins the format when a model has several variants of it, as in
``tiny-random-llama-gguf-q4_0-llama_cpp-cpu``). Each case carries the format, backend
and hardware markers, so ``-m gguf`` selects exactly the GGUF cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pytest

from pytest_minerva.backends import BackendSpec
from pytest_minerva.models.catalog import FORMATS, ArtifactSpec, ModelSpec

#: The pairs the equivalence suite compares by default.
PAIR_KINDS = ("cross-backend", "quantization")
#: llama.cpp on the model's primary GGUF against every other case of the model: the tokenizer
#: tests' reference is the engine that defines the GGUF format. Only made when asked for.
TOKENIZER_PAIRS = "tokenizer"


@dataclass(frozen=True)
class Case:
    model: ModelSpec
    artifact: ArtifactSpec
    backend: BackendSpec | None = None
    device: str | None = None

    @property
    def format_id(self) -> str:
        many = len(self.model.variants(self.artifact.format)) > 1
        if many and self.artifact.quant:
            return f"{self.artifact.format}-{self.artifact.quant.lower()}"
        return self.artifact.format

    @property
    def id(self) -> str:
        parts = [self.model.name, self.format_id]
        if self.backend is not None:
            parts.append(self.backend.name)
        if self.device is not None:
            parts.append(self.device)
        return "-".join(parts)

    @property
    def precision(self) -> str:
        """The number format the engine computes with for this case, for tolerance lookup."""
        quant = (self.artifact.quant or "f32").lower()
        if self.backend is not None and self.artifact.format in self.backend.computes_in:
            return self.backend.computes_in[self.artifact.format].lower()  # e.g. a GGUF dequantized on load
        return quant

    def marks(self) -> list[pytest.MarkDecorator]:
        names = [self.artifact.format]
        if self.backend is not None:
            names.append(self.backend.name)
        if self.device is not None:
            names.append(self.device)
        return [getattr(pytest.mark, n) for n in names]


@dataclass(frozen=True)
class Pair:
    """Two cases that must compute the same thing, ``reference`` the more precise one."""

    kind: str
    reference: Case
    candidate: Case

    @property
    def id(self) -> str:
        ref, cand = self.reference, self.candidate
        return (
            f"{ref.model.name}-{ref.format_id}-{ref.backend.name if ref.backend else '?'}"
            f"-vs-{cand.format_id}-{cand.backend.name if cand.backend else '?'}-{cand.device}"
        )

    def marks(self) -> list[pytest.MarkDecorator]:
        seen: dict[str, pytest.MarkDecorator] = {}
        for mark in (*self.reference.marks(), *self.candidate.marks()):
            seen.setdefault(mark.name, mark)
        return list(seen.values())


def backend_cases(
    models: Sequence[ModelSpec],
    backends: Sequence[BackendSpec],
    devices_for: dict[str, list[str]],
    formats: Iterable[str] | None = None,
) -> list[Case]:
    """Every (model, variant, backend, device) cell; ``devices_for`` maps backend name to its devices."""
    wanted = set(formats) if formats is not None else None
    cases = []
    for model in models:
        for fmt in FORMATS:
            if wanted is not None and fmt not in wanted:
                continue
            for variant in model.variants(fmt):
                for backend in backends:
                    if fmt not in backend.formats:
                        continue
                    for device in devices_for.get(backend.name, []):
                        cases.append(Case(model, variant, backend, device))
    return cases


def artifact_cases(models: Sequence[ModelSpec], formats: Iterable[str] | None = None) -> list[Case]:
    wanted = set(formats) if formats is not None else None
    return [
        Case(model, variant)
        for model in models
        for variant in model.artifacts
        if wanted is None or variant.format in wanted
    ]


def _reference(
    cases: Sequence[Case], model: ModelSpec, kind: str, device: str, artifact: ArtifactSpec | None
) -> Case | None:
    """The case of the first backend that declares itself the reference for ``kind``
    (``BackendSpec.reference_for``), on ``artifact`` (else that format's primary) and ``device``."""
    for case in cases:
        spec = case.backend
        if spec is None or kind not in spec.reference_for or case.model.name != model.name or case.device != device:
            continue
        fmt = spec.reference_for[kind]
        wanted = artifact if artifact is not None else model.primary(fmt)
        if case.artifact.format == fmt and case.artifact == wanted:
            return case
    return None


def _same_engine(cases: Sequence[Case], like: Case, artifact: ArtifactSpec) -> Case | None:
    """The case that runs ``like``'s backend on ``like``'s device with ``artifact`` instead."""
    for case in cases:
        if (
            case.model.name == like.model.name
            and case.backend == like.backend
            and case.device == like.device
            and case.artifact == artifact
        ):
            return case
    return None


def pairs(cases: Sequence[Case], kinds: Iterable[str] = PAIR_KINDS) -> list[Pair]:
    """The comparisons the equivalence suite runs, drawn from the available cases.

    Each kind's reference is the backend whose spec names that kind in ``reference_for``
    (with the format it is the reference on); the built-ins declare:

    cross-backend: transformers on the primary SafeTensors (reference) against every other
    backend on each format's primary variant of the same model, on the same device: llama.cpp
    on the GGUF, transformers on that GGUF, mlx_lm on MLX, and any backend a plugin registers.
    quantization: llama.cpp on the most precise GGUF variant (reference) vs llama.cpp on every
    other variant. tokenizer (only when ``kinds`` names it): llama.cpp on the primary GGUF
    (reference) vs every other case of the same model on the same device, every variant of
    every format, so each tokenizer a model ships is compared with llama.cpp's.
    """
    wanted = set(kinds)
    out: list[Pair] = []
    models = {c.model.name: c.model for c in cases}
    devices = sorted({c.device for c in cases if c.device})
    for model in models.values():
        for device in devices:
            if "cross-backend" in wanted:
                ref = _reference(cases, model, "cross-backend", device, None)
                if ref is not None:
                    out.extend(
                        Pair("cross-backend", ref, case)
                        for case in cases
                        if case != ref
                        and case.model.name == model.name
                        and case.device == device
                        and case.artifact == model.primary(case.artifact.format)
                    )
            if TOKENIZER_PAIRS in wanted:
                ref = _reference(cases, model, TOKENIZER_PAIRS, device, None)
                if ref is not None:
                    out.extend(
                        Pair(TOKENIZER_PAIRS, ref, case)
                        for case in cases
                        if case != ref and case.model.name == model.name and case.device == device
                    )
            if "quantization" in wanted:
                variants = model.variants("gguf")
                if len(variants) > 1:
                    from pytest_minerva.models.quant import quant_bits

                    best = max(variants, key=lambda s: quant_bits(s.quant))
                    ref = _reference(cases, model, "quantization", device, best)
                    if ref is not None:
                        for variant in variants:
                            if variant == best:
                                continue
                            cand = _same_engine(cases, ref, variant)
                            if cand is not None:
                                out.append(Pair("quantization", ref, cand))
    return out
