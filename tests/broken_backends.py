"""Backends broken on purpose, loaded with ``-p broken_backends``: the suite must fail on each.

Each wraps the real transformers adapter on the real SafeTensors and breaks one thing a real
engine bug breaks. They exist only to prove that the regression suite cannot be passed by a
backend that does not compute the model (tests/test_suite_catches_breakage.py); no figure is
ever reported from them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pytest_minerva.backends import BackendSpec
from pytest_minerva.backends.transformers import TransformersBackend

KINDS = ("wrong_weights", "wrong_config", "shuffled_vocab", "fake_logits")


class _Broken:
    """Delegates to a real transformers backend; subclasses break one part."""

    def __init__(self, artifact: Any, options: Any) -> None:
        self._inner = TransformersBackend(artifact, options)
        self.name = type(self).NAME  # type: ignore[attr-defined]
        self.device = self._inner.device

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class WrongWeights(_Broken):
    """Layer 1 runs layer 2's weights, as after a tensor-name mix-up in a converter."""

    NAME = "wrong_weights"

    def __init__(self, artifact: Any, options: Any) -> None:
        super().__init__(artifact, options)
        layers = self._inner._model.model.layers
        layers[1].load_state_dict(layers[2].state_dict())


class WrongConfig(_Broken):
    """A derived config.json with one wrong value: RoPE theta off by 10x (1e5 -> 1e4)."""

    NAME = "wrong_config"

    def __init__(self, artifact: Any, options: Any) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="minerva-wrong-config-"))
        target = self._tmp / "model"
        shutil.copytree(artifact.path, target)
        config = json.loads((target / "config.json").read_text())
        if "rope_parameters" in config:
            config["rope_parameters"]["rope_theta"] = config["rope_parameters"]["rope_theta"] / 10
        config["rope_theta"] = config.get("rope_theta", 100000.0) / 10
        (target / "config.json").write_text(json.dumps(config))
        super().__init__(dataclasses.replace(artifact, path=target), options)

    def close(self) -> None:
        self._inner.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


class ShuffledVocab(_Broken):
    """Token ids 100..1099 mapped through a permutation, as with a vocabulary read in the wrong order."""

    NAME = "shuffled_vocab"

    def __init__(self, artifact: Any, options: Any) -> None:
        super().__init__(artifact, options)
        self._perm = np.arange(self._inner.vocab_size)
        self._perm[100:1100] = np.random.default_rng(0).permutation(np.arange(100, 1100))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        out = self._inner.logits([int(self._perm[i]) for i in ids])
        return out[:, self._perm]


class FakeLogits(_Broken):
    """Plausible logits without running the model: a Zipf prior over token ids plus seeded noise."""

    NAME = "fake_logits"

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        vocab = self._inner.vocab_size
        prior = -np.log1p(np.arange(vocab, dtype=np.float32))
        rng = np.random.default_rng(sum(ids))
        rows = prior[None, :] * 2.0 + rng.normal(0.0, 1.5, size=(len(ids), vocab)).astype(np.float32)
        return rows.astype(np.float32)


def pytest_minerva_register_backends(registry: Any) -> None:
    for cls in (WrongWeights, WrongConfig, ShuffledVocab, FakeLogits):
        registry.add(
            BackendSpec(
                cls.NAME,
                formats=("safetensors",),
                target=f"{__name__}:{cls.__name__}",
                requires=("torch", "transformers"),
                description=cls.__doc__ or "",
            )
        )
