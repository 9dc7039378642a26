from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_minerva import hypothesis_profiles

pytest_plugins = ["pytester"]

# Derandomized unless HYPOTHESIS_PROFILE or --hypothesis-profile says otherwise (see the module).
hypothesis_profiles.load()

# pytester points HOME at a temporary directory; keep derived artifacts in the real
# user cache so inline runs reuse them instead of converting models again.
if "MINERVA_CACHE_DIR" not in os.environ:
    from pytest_minerva.derive.cache import default_cache_dir

    os.environ["MINERVA_CACHE_DIR"] = str(default_cache_dir())


#: Markers whose tests run only when the ``-m`` expression names them (long runs).
OPT_IN_MARKERS = ("fuzz", "asv")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """This repository's convention for its own tests: ``fuzz`` and ``asv`` tests run only when
    ``-m`` names them. (The plugin takes neither name from other projects.)"""
    markexpr = str(config.getoption("markexpr", "") or "")
    for item in items:
        for name in OPT_IN_MARKERS:
            if item.get_closest_marker(name) is not None and name not in markexpr:
                item.add_marker(pytest.mark.skip(reason=f"'{name}' tests run only when selected: add -m {name}"))


@pytest.fixture(scope="session")
def tiny_gguf() -> Path:
    """The seeded tiny-random-llama F32 GGUF (generated on first use), for tests that run llama.cpp."""
    from pytest_minerva.options import Settings
    from pytest_minerva.session import build_session

    session = build_session(Settings(models=["tiny-random-llama"], backends=["llama_cpp"]))
    case = next(c for c in session.cases(formats=["gguf"]) if c.artifact.quant == "F32")
    reason = session.check_runnable(case)
    if reason:
        pytest.skip(reason)
    return Path(session.resolve(case).path)
