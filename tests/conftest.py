from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# pytester points HOME at a temporary directory; keep derived artifacts in the real
# user cache so inline runs reuse them instead of converting models again.
if "MINERVA_CACHE_DIR" not in os.environ:
    from pytest_minerva.derive.cache import default_cache_dir

    os.environ["MINERVA_CACHE_DIR"] = str(default_cache_dir())
