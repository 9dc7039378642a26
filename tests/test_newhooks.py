"""One test per hookspec of :mod:`pytest_minerva.hookspecs`: implement the hook, observe its effect.

Modelled on pytest-xdist's ``testing/test_newhooks.py``: each test writes a ``conftest.py``
implementing one hook into a pytester directory and runs pytest on a small test file. Every
backend that runs is llama.cpp on a real GGUF (the seeded tiny-random-llama), so nothing here
reports a number a fake computed.

``pytest_minerva_update_report`` edits results documents, and pytest writes none (its
``--minerva-update-golden`` rewrites golden numerics, not a report), so its test installs a
plugin module under the ``pytest_minerva`` entry-point group (a hand-written ``.dist-info`` on
``PYTHONPATH``) and runs ``minerva bench``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy  # noqa: F401  (pytester's in-process runs must not unload numpy: it cannot load twice)
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

MODEL = "tiny-random-llama"
#: The case id of the tiny model's F32 GGUF on llama.cpp on the CPU.
F32_CASE = f"{MODEL}-gguf-f32-llama_cpp-cpu"

#: A test that loads the backend the matrix hands it and takes real logits.
RUNS_BACKEND = """
import numpy as np


def test_runs(backend):
    ids = backend.tokenize("The quick brown fox", add_bos=True)
    logits = backend.logits(ids)
    assert logits.shape == (len(ids), backend.vocab_size)
    assert np.isfinite(logits).all() and float(np.abs(logits).max()) > 0
"""


def literal(pattern: str) -> str:
    """Escape '[' for fnmatch, which reads it as a character class."""
    return pattern.replace("[", "[[]")


def case_ids(result: pytest.RunResult, test: str) -> list[str]:
    return sorted(line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if f"::{test}[" in line)


def machine_line(result: pytest.RunResult) -> str:
    lines = [line for line in result.stdout.lines if line.startswith("minerva: machine:")]
    assert len(lines) == 1, "expected one 'minerva: machine:' header line in:\n" + "\n".join(result.stdout.lines[:20])
    return lines[0]


@pytest.fixture
def offline(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A pytester with no local models, an empty Hugging Face cache and no network."""
    monkeypatch.delenv("MINERVA_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytester


# -- pytest_minerva_register_backends -------------------------------------------------------------

ENGINE_MODULE = """
from pytest_minerva.backends.llama_cpp import LlamaCppBackend


class ConftestLlama(LlamaCppBackend):
    \"\"\"llama.cpp under another name, registered by a conftest.\"\"\"

    name = "conftest_llama"
"""

REGISTER_BACKENDS = """
from pytest_minerva.backends import BackendSpec


def pytest_minerva_register_backends(registry):
    registry.add(
        BackendSpec(
            "conftest_llama",
            formats=("gguf",),
            target="newhooks_engine:ConftestLlama",
            requires=("llama_cpp",),
            description="llama.cpp, registered by a conftest",
        )
    )
"""


def test_register_backends_adds_a_backend_to_the_matrix(offline: pytest.Pytester) -> None:
    pytest.importorskip("llama_cpp")
    offline.makepyfile(newhooks_engine=ENGINE_MODULE)
    offline.makeconftest(REGISTER_BACKENDS)
    offline.makepyfile(
        test_registered=RUNS_BACKEND
        + """

def test_name(backend):
    assert backend.name == "conftest_llama"
    assert backend.info()["backend"] == "conftest_llama"  # from the registered class itself
"""
    )
    offline.syspathinsert()
    collected = offline.runpytest("--collect-only", "-q", "--model", MODEL, "--device", "cpu")
    ids = case_ids(collected, "test_runs")
    assert f"{MODEL}-gguf-f32-conftest_llama-cpu" in ids, collected.stdout.str()
    assert f"{MODEL}-gguf-f32-llama_cpp-cpu" in ids  # the built-in backends are still there
    case = f"{MODEL}-gguf-f32-conftest_llama-cpu"
    ran = offline.runpytest(
        f"test_registered.py::test_runs[{case}]",
        f"test_registered.py::test_name[{case}]",
        "--model",
        MODEL,
        "--backend",
        "conftest_llama",
        "--device",
        "cpu",
    )
    ran.assert_outcomes(passed=2)
    # Its name is a marker too: -m selects exactly its cases.
    marked = offline.runpytest("--collect-only", "-q", "--model", MODEL, "-m", "conftest_llama", "--strict-markers")
    assert case_ids(marked, "test_runs") == sorted(i for i in ids if i.endswith("-conftest_llama-cpu"))


# -- pytest_minerva_register_models ---------------------------------------------------------------

REGISTER_MODELS = """
from pytest_minerva.models.catalog import ArtifactSpec, ModelSpec


def pytest_minerva_register_models(catalog):
    catalog.add(
        ModelSpec(
            "conftest-tiny",
            architecture="llama",
            description="the tiny random llama under a conftest's name",
            context_length=512,
            artifacts=(ArtifactSpec("gguf", "F32", files=("conftest-tiny-f32.gguf",), primary=True),),
        )
    )
"""


def test_register_models_makes_a_model_selectable(offline: pytest.Pytester, tiny_gguf: Path) -> None:
    model_dir = offline.path / "models"
    (model_dir / "conftest-tiny").mkdir(parents=True)
    shutil.copyfile(tiny_gguf, model_dir / "conftest-tiny" / "conftest-tiny-f32.gguf")
    offline.makeconftest(REGISTER_MODELS)
    offline.makepyfile(
        test_model=RUNS_BACKEND
        + """

def test_file(gguf_model):
    assert gguf_model.model == "conftest-tiny"
    assert gguf_model.path.name == "conftest-tiny-f32.gguf"
    assert gguf_model.source == "model-dir"
"""
    )
    args = [
        "--model",
        "conftest-tiny",
        "--backend",
        "llama_cpp",
        "--device",
        "cpu",
        "--minerva-model-dir",
        str(model_dir),
    ]
    collected = offline.runpytest("--collect-only", "-q", *args)
    assert case_ids(collected, "test_runs") == ["conftest-tiny-gguf-llama_cpp-cpu"], collected.stdout.str()
    assert case_ids(collected, "test_file") == ["conftest-tiny-gguf"]
    ran = offline.runpytest(*args)
    ran.assert_outcomes(passed=2)
    # Without the conftest the name is unknown: the hook is what made it selectable.
    (offline.path / "conftest.py").unlink()
    unknown = offline.runpytest("--collect-only", "-q", *args)
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*unknown model 'conftest-tiny'*"])


# -- pytest_minerva_make_backend ------------------------------------------------------------------

MAKE_BACKEND = """
from pytest_minerva.backends.llama_cpp import LlamaCppBackend


class MadeByConftest(LlamaCppBackend):
    made_by = "conftest"


def pytest_minerva_make_backend(spec, artifact, options):
    if spec.name != "llama_cpp":
        return None
    built = MadeByConftest(artifact, options)
    built.made_for = (artifact.id, options.device)
    return built
"""


def test_make_backend_builds_the_backend_the_tests_get(offline: pytest.Pytester) -> None:
    pytest.importorskip("llama_cpp")
    offline.makeconftest(MAKE_BACKEND)
    offline.makepyfile(
        test_made=RUNS_BACKEND
        + """

def test_made_by_the_hook(backend):
    assert backend.made_by == "conftest"
    assert backend.made_for == ("tiny-random-llama-gguf-f32", "cpu")
"""
    )
    ran = offline.runpytest(
        f"test_made.py::test_made_by_the_hook[{F32_CASE}]",
        f"test_made.py::test_runs[{F32_CASE}]",
        "--model",
        MODEL,
        "--backend",
        "llama_cpp",
        "--device",
        "cpu",
    )
    ran.assert_outcomes(passed=2)
    # A conftest's hook cannot run in a worker process: the backend is loaded in this one, and the summary says so.
    ran.stdout.fnmatch_lines(
        ["*llama_cpp ran in this process, without crash isolation: a pytest_minerva_make_backend hook in *conftest.py*"]
    )


# -- pytest_minerva_resolve_model -----------------------------------------------------------------

RESOLVE_MODEL = """
from pathlib import Path

from pytest_minerva.models.resolve import ResolvedArtifact

STORE = Path({store!r})


def pytest_minerva_resolve_model(model, spec, resolver):
    if model.name != "tiny-random-llama" or spec.format != "gguf" or spec.quant != "F32":
        return None  # everything else resolves as usual
    return ResolvedArtifact(
        model.name, spec.format, spec.quant, STORE / "private-f32.gguf", "conftest-store", model.architecture
    )
"""


def test_resolve_model_supplies_the_artifact_that_is_used(offline: pytest.Pytester, tiny_gguf: Path) -> None:
    store = offline.path / "store"
    store.mkdir()
    shutil.copyfile(tiny_gguf, store / "private-f32.gguf")
    offline.makeconftest(RESOLVE_MODEL.format(store=str(store)))
    offline.makepyfile(
        test_resolved=RUNS_BACKEND
        + """

def test_file(gguf_model):
    assert gguf_model.source == "conftest-store"
    assert gguf_model.path.name == "private-f32.gguf"
    assert gguf_model.summary is not None  # the hook's artifact is still verified
"""
    )
    ran = offline.runpytest(
        "test_resolved.py::test_file[tiny-random-llama-gguf-f32]",
        f"test_resolved.py::test_runs[{F32_CASE}]",
        "--model",
        MODEL,
        "--backend",
        "llama_cpp",
        "--device",
        "cpu",
    )
    ran.assert_outcomes(passed=2)
    ran.stdout.fnmatch_lines(["*minerva artifacts*", f"tiny-random-llama-gguf-f32 (conftest-store: {store}*"])


# -- pytest_minerva_generate_machine_info / pytest_minerva_update_machine_info --------------------

PLAIN_TEST = "def test_nothing():\n    pass\n"

GENERATE_MACHINE_INFO = """
def pytest_minerva_generate_machine_info(config, session):
    return {"conftest_probe": "alpha-42", "conftest_saw": "config" if config is not None else "none"}
"""

UPDATE_MACHINE_INFO = """
def pytest_minerva_generate_machine_info(config, session):
    return {"conftest_probe": "alpha-42"}


def pytest_minerva_update_machine_info(config, session, machine_info):
    assert machine_info["conftest_probe"] == "alpha-42"  # the generated facts are merged first
    assert "python_version" in machine_info  # into the whole machine info
    machine_info["conftest_probe"] = "omega-7"
"""


def test_generate_machine_info_facts_appear_in_the_header(offline: pytest.Pytester) -> None:
    offline.makeconftest(GENERATE_MACHINE_INFO)
    offline.makepyfile(PLAIN_TEST)
    result = offline.runpytest("--model", MODEL)
    result.assert_outcomes(passed=1)
    line = machine_line(result)
    assert re.search(r"conftest_probe\W+alpha-42", line), line
    assert re.search(r"conftest_saw\W+config", line), line  # under pytest the hook gets pytest's config


def test_update_machine_info_edits_appear_in_the_header(offline: pytest.Pytester) -> None:
    offline.makeconftest(UPDATE_MACHINE_INFO)
    offline.makepyfile(PLAIN_TEST)
    result = offline.runpytest("--model", MODEL)
    result.assert_outcomes(passed=1)
    line = machine_line(result)
    assert re.search(r"conftest_probe\W+omega-7", line), line
    assert "alpha-42" not in line, line


# -- pytest_minerva_update_report -----------------------------------------------------------------

REPORT_PLUGIN = """
import pytest


@pytest.hookimpl
def pytest_minerva_update_report(config, session, report):
    report["newhooks_report"] = {
        "config": None if config is None else "pytest",
        "backends": [entry["backend"] for entry in report["backends"]],
        "has_benchmarks": bool(report["benchmarks"]),
    }
"""


def entry_point_site(root: Path, module: str, source: str) -> Path:
    """A directory that, on ``PYTHONPATH``, installs ``module`` under the ``pytest_minerva`` group."""
    site = root / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(source, encoding="utf-8")
    dist = site / f"{module}-0.0.1.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[pytest_minerva]\n{module} = {module}\n", encoding="utf-8")
    return site


def test_update_report_edits_the_results_document(tmp_path: Path, tiny_gguf: Path) -> None:
    site = entry_point_site(tmp_path, "newhooks_report_plugin", textwrap.dedent(REPORT_PLUGIN))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "pytest_minerva.commands",
        "bench",
        "--model",
        str(tiny_gguf),
        "--backend",
        "llama_cpp",
        "--device",
        "cpu",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--scenario",
        "short",
        "--no-kv-probe",
        "--json",
        str(out),
    ]
    ran = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["newhooks_report"] == {"config": None, "backends": ["llama_cpp"], "has_benchmarks": True}
    from pytest_minerva.storage import results

    results.load(out)  # the edited document is still a valid results document
