"""The Hypothesis profiles of this repository's own tests (``tests/``) and of the regression suite.

Both conftests (``tests/conftest.py``, ``pytest_minerva/suites/conftest.py``) call :func:`load`, so
every run picks the same profile, an installed suite run from any directory included:

- ``ci`` (the default): derandomized, no deadline. The main job, ``make test`` and CI draw the
  same examples every run, so a first run does not depend on luck; the hard cases found so far
  are explicit ``@example`` s on the tests.
- ``explore``: random draws and more of them, with the example database on; for hunting new
  cases. Select it with ``--hypothesis-profile=explore`` or ``HYPOTHESIS_PROFILE=explore``.

Only conftests import this module: it imports Hypothesis, which the plugin never does.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEFAULT_PROFILE = "ci"
PROFILE_ENV = "HYPOTHESIS_PROFILE"
EXPLORE_EXAMPLES = 500


def register() -> None:
    settings.register_profile(
        "ci",
        deadline=None,
        derandomize=True,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "explore",
        deadline=None,
        derandomize=False,
        max_examples=EXPLORE_EXAMPLES,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def load() -> str:
    """Register the profiles and load ``$HYPOTHESIS_PROFILE`` (default ``ci``); returns its name.

    ``--hypothesis-profile NAME`` still wins: Hypothesis's pytest plugin loads it after the conftests.
    """
    register()
    name = os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    settings.load_profile(name)
    return name
