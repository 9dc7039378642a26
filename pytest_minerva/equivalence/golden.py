"""Golden numerics: reference top-k logits per matrix case, to catch drift across engine upgrades.

A golden file holds, for a few fixed prompts, the prompt's token ids, the top-k token ids and
logits at the last positions, and a short greedy continuation, as one backend computed them.
Comparing a later run against it catches what cross-backend checks cannot: every engine
drifting together after ``pip install -U llama-cpp-python torch mlx``, or a tokenizer change.

Files live in ``fixtures/golden/numerics/<case id>.json``. ``--minerva-update-golden``
rewrites them on purpose and prints a unified diff of what changed.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pytest_minerva.backends.base import Backend
from pytest_minerva.errors import FormatError

SCHEMA_VERSION = 1
PROMPTS = ("short.txt", "code.txt")
PROMPT_TOKENS = 24
POSITIONS = 4
TOPK = 8
GREEDY_TOKENS = 8
#: Largest accepted change of a recorded logit. Rebuilding llama.cpp or torch with the same
#: kernels reproduces logits exactly here; a changed kernel moves them by 1e-3 or more.
LOGIT_ATOL = 2e-3


def golden_dir(root: Path | None = None) -> Path:
    """``root`` (``--minerva-golden-dir``), else the golden numerics shipped in the package."""
    if root is not None:
        return Path(root)
    from pytest_minerva.models.catalog import fixtures_dir

    return fixtures_dir() / "golden" / "numerics"


def golden_path(case_id: str, root: Path | None = None) -> Path:
    return golden_dir(root) / f"{case_id}.json"


def record(backend: Backend, versions: Mapping[str, str]) -> dict[str, Any]:
    """The golden document for ``backend`` as it computes now."""
    from pytest_minerva.equivalence.runner import greedy, prompts

    entries = []
    for prompt in prompts(backend, PROMPTS, PROMPT_TOKENS):
        logits = np.asarray(backend.logits(prompt.ids), dtype=np.float32)
        rows = []
        for position in range(max(0, len(prompt.ids) - POSITIONS), len(prompt.ids)):
            row = logits[position]
            top = np.argsort(-row, kind="stable")[:TOPK]
            rows.append(
                {"position": position, "ids": [int(i) for i in top], "logits": [round(float(row[i]), 5) for i in top]}
            )
        entries.append(
            {
                "prompt": prompt.name,
                "ids": list(prompt.ids),
                "top": rows,
                "greedy": greedy(backend, prompt.ids, GREEDY_TOKENS),
            }
        )
    return {"schema_version": SCHEMA_VERSION, "versions": dict(sorted(versions.items())), "prompts": entries}


def load(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise FormatError(path, f"not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema_version") != SCHEMA_VERSION:
        raise FormatError(path, f"not a golden numerics file of schema {SCHEMA_VERSION}")
    return document


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


@dataclass
class Drift:
    problems: list[str]

    def __bool__(self) -> bool:
        return bool(self.problems)


def compare(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> Drift:
    """What changed between a golden document and a fresh one, one line per problem."""
    problems: list[str] = []
    want = {p["prompt"]: p for p in expected.get("prompts", [])}
    got = {p["prompt"]: p for p in actual.get("prompts", [])}
    for name in sorted(set(want) | set(got)):
        if name not in got or name not in want:
            problems.append(f"prompt {name}: present in only one of golden and this run")
            continue
        w, g = want[name], got[name]
        if w["ids"] != g["ids"]:
            first = next((i for i, (a, b) in enumerate(zip(w["ids"], g["ids"], strict=False)) if a != b), None)
            problems.append(f"prompt {name}: tokenization changed (first difference at token {first})")
            continue
        for w_row, g_row in zip(w["top"], g["top"], strict=False):
            pos = w_row["position"]
            if w_row["ids"][0] != g_row["ids"][0]:
                problems.append(f"prompt {name} position {pos}: top-1 token {w_row['ids'][0]} became {g_row['ids'][0]}")
            got_logit = dict(zip(g_row["ids"], g_row["logits"], strict=False))
            worst = 0.0
            for token, logit in zip(w_row["ids"], w_row["logits"], strict=False):
                if token in got_logit:
                    worst = max(worst, abs(got_logit[token] - logit))
            shared = len(set(w_row["ids"]) & set(got_logit))
            if worst > LOGIT_ATOL or not math.isfinite(worst):
                problems.append(
                    f"prompt {name} position {pos}: top-{TOPK} logits moved by up to {worst:.3g} (> {LOGIT_ATOL})"
                )
            if shared < TOPK - 1:
                problems.append(f"prompt {name} position {pos}: only {shared} of the top-{TOPK} tokens are still there")
        if w["greedy"] != g["greedy"]:
            problems.append(f"prompt {name}: greedy continuation {w['greedy']} became {g['greedy']}")
    return Drift(problems)


def diff(old_text: str, new_text: str, name: str) -> str:
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True), f"{name} (golden)", f"{name} (this run)"
    )
    return "".join(lines)
