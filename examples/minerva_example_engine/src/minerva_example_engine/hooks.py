"""The module listed under the ``pytest_minerva`` entry-point group.

It must stay cheap to import: the backend class is named by a ``"module:Class"`` string and
imported only when a case runs. pytest and the ``minerva`` command both take unmarked
``pytest_minerva_*`` functions; these are marked with ``pytest.hookimpl`` only to show where
options such as ``tryfirst`` would go.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_minerva.backends import BackendRegistry, BackendSpec

BACKEND_NAME = "example_llama"


@pytest.hookimpl
def pytest_minerva_register_backends(registry: BackendRegistry) -> None:
    registry.add(
        BackendSpec(
            BACKEND_NAME,
            formats=("gguf",),
            target="minerva_example_engine.engine:ExampleBackend",
            requires=("llama_cpp",),
            distributions=("minerva-example-engine",),
            install_hint="pip install minerva-example-engine llama-cpp-python",
            description="example third-party adapter: llama.cpp through llama-cpp-python",
        )
    )


@pytest.hookimpl
def pytest_minerva_generate_machine_info(config: Any, session: Any) -> dict[str, Any]:
    return {"example_engine_probe": "on"}


@pytest.hookimpl
def pytest_minerva_update_report(config: Any, session: Any, report: dict[str, Any]) -> None:
    report["example_engine"] = "seen"
