"""Import the code a ``"module:attribute"`` target string names.

Format converters and model generators (:data:`pytest_minerva.models.resolve.DERIVATIONS`,
:data:`pytest_minerva.models.resolve.GENERATORS`), assemblers named by the catalog and
backend entry points are all named this way, so nothing is imported before it is needed.
"""

from __future__ import annotations

import importlib
from typing import Any


def load_target(target: str) -> Any:
    """Import ``"module:attribute"`` (or a module when there is no colon)."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module
