"""A derived tokenizer broken on purpose, loaded with ``-p broken_tokenizer``: the tokenizer tests must fail on it.

``digits_removed`` is the real transformers backend on the real derived SmolLM2 SafeTensors,
except that ``tokenizer.json`` has the digit rule taken out of its pre-tokenizer: the tokenizer
the GGUF -> SafeTensors converter wrote before issue 12 was fixed. It exists only to prove that
the corpus test is not vacuous (tests/test_derive_tokenizer.py); no figure is reported from it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_minerva.backends import BackendSpec
from pytest_minerva.backends.transformers import TransformersBackend

NAME = "digits_removed"


def without_digit_rule(pre_tokenizer: dict[str, Any]) -> dict[str, Any]:
    """The pre-tokenizer with every ``Digits`` step removed (a Sequence of one step becomes that step)."""
    if pre_tokenizer.get("type") != "Sequence":
        return pre_tokenizer
    kept = [step for step in pre_tokenizer["pretokenizers"] if step.get("type") != "Digits"]
    if len(kept) == len(pre_tokenizer["pretokenizers"]):
        raise ValueError(f"no Digits step to remove in {pre_tokenizer}")
    return kept[0] if len(kept) == 1 else {**pre_tokenizer, "pretokenizers": kept}


class DigitsRemoved:
    """The derived SafeTensors directory, linked file by file, with the digit rule removed from tokenizer.json."""

    def __init__(self, artifact: Any, options: Any) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="minerva-digits-removed-"))
        target = self._tmp / "model"
        target.mkdir()
        for entry in Path(artifact.path).iterdir():
            if entry.name != "tokenizer.json":
                (target / entry.name).symlink_to(entry)
        data = json.loads((Path(artifact.path) / "tokenizer.json").read_text(encoding="utf-8"))
        data["pre_tokenizer"] = without_digit_rule(data["pre_tokenizer"])
        (target / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        self._inner = TransformersBackend(dataclasses.replace(artifact, path=target), options)
        self.name = NAME
        self.device = self._inner.device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def close(self) -> None:
        self._inner.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def pytest_minerva_register_backends(registry: Any) -> None:
    registry.add(
        BackendSpec(
            NAME,
            formats=("safetensors",),
            target=f"{__name__}:DigitsRemoved",
            requires=("torch", "transformers"),
            description=DigitsRemoved.__doc__ or "",
        )
    )
