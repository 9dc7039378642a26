"""The regression suite's conftest: what the suite needs wherever it runs.

``python -m pytest --pyargs pytest_minerva.suites --model NAME`` runs the installed suite from any
directory, where this repository's ``[tool.pytest.ini_options]`` does not apply. So everything the
suite relies on is set here or in the tests themselves, not in an ini file: the Hypothesis
profile (derandomized ``ci`` by default), the warnings filters, and strict xfails (each known
divergence is marked ``xfail(strict=True)`` by :mod:`pytest_minerva.suites.support`). The matrix
fixtures and markers come from the plugin.
"""

from __future__ import annotations

import importlib.util

import pytest

#: The deprecation chatter of transformers, which the suite cannot act on (the repository's
#: ini file filters the same warnings for its own runs).
WARNING_FILTERS = (
    "ignore::DeprecationWarning:transformers.*",
    "ignore::FutureWarning:transformers.*",
)

# The same profile as tests/conftest.py: derandomized unless HYPOTHESIS_PROFILE or
# --hypothesis-profile says otherwise. Hypothesis is optional (pytest-minerva[suite]).
if importlib.util.find_spec("hypothesis") is not None:
    from pytest_minerva import hypothesis_profiles

    hypothesis_profiles.load()


def pytest_configure(config: pytest.Config) -> None:
    present = set(config.getini("filterwarnings"))
    for line in WARNING_FILTERS:
        if line not in present:
            config.addinivalue_line("filterwarnings", line)
