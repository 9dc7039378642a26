from __future__ import annotations

import os

from pytest_minerva import hypothesis_profiles

pytest_plugins = ["pytester"]

# Derandomized unless HYPOTHESIS_PROFILE or --hypothesis-profile says otherwise (see the module).
hypothesis_profiles.load()

# pytester points HOME at a temporary directory; keep derived artifacts in the real
# user cache so inline runs reuse them instead of converting models again.
if "MINERVA_CACHE_DIR" not in os.environ:
    from pytest_minerva.derive.cache import default_cache_dir

    os.environ["MINERVA_CACHE_DIR"] = str(default_cache_dir())
