#!/usr/bin/env python3
"""Launcher for pytest_minerva/backends/llama_cpp_build.py, which install.sh runs before the
package is installed: the module is loaded by its path, so no package import runs."""

import importlib.util
import sys
from pathlib import Path

path = Path(__file__).resolve().parent.parent / "pytest_minerva" / "backends" / "llama_cpp_build.py"
spec = importlib.util.spec_from_file_location("llama_cpp_build", path)
assert spec is not None and spec.loader is not None
module = importlib.util.module_from_spec(spec)
sys.modules["llama_cpp_build"] = module  # dataclasses look their module up by name
spec.loader.exec_module(module)
raise SystemExit(module.main())
