"""A third-party backend registered by entry point appears everywhere: ``minerva bench``, asv, pytest.

``examples/minerva_example_engine`` is a real little package: its ``pytest_minerva`` entry
point registers the ``example_llama`` backend (llama.cpp through llama-cpp-python, by subclassing
pytest-minerva's own adapter), adds a machine fact and edits every results document. It is
installed with pip into a temporary directory, and everything runs in subprocesses with that
directory on ``PYTHONPATH``, the way a user's environment would hold it. Every figure checked
here comes from llama.cpp running the seeded tiny-random-llama model. ``test_engine_team_path.py``
runs the same package the way an engine team's CI would: wheels, a fresh venv, no checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_SOURCE = REPO / "examples" / "minerva_example_engine"
DISTRIBUTION = "minerva-example-engine"
BACKEND = "example_llama"
MODEL = "tiny-random-llama"
#: Variables of the asv suite that would narrow or redirect what it discovers.
ASV_VARIABLES = ("MINERVA_ASV_MODELS", "MINERVA_ASV_BACKENDS", "MINERVA_ASV_SCENARIOS", "MINERVA_ASV_RUNS")

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package, pip-installed (offline, no dependencies) into a directory of its own."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("the example engine adapts llama-cpp-python (import name llama_cpp), which is not installed")
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("installing the example package offline builds it with this environment's setuptools: none here")
    root = tmp_path_factory.mktemp("example-engine")
    # Build from a copy: setuptools builds in the source tree and would leave build/ and *.egg-info there.
    source = root / "source"
    shutil.copytree(PACKAGE_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--quiet",
        "--target",
        str(site),
        str(source),
    ]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert ran.returncode == 0, f"pip install of {PACKAGE_SOURCE} failed:\n{ran.stdout}\n{ran.stderr}"
    return site


def environment(site: Path, **extra: str) -> dict[str, str]:
    """This process's environment with the example package (and the repository, for ``benchmarks``) importable."""
    env = {k: v for k, v in os.environ.items() if k not in ASV_VARIABLES and k != "MINERVA_MODEL_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


def run(site: Path, args: list[str], cwd: Path, timeout: float = 300, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=environment(site, **extra), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def run_python(site: Path, code: str, cwd: Path, **extra: str) -> Any:
    """Run ``code`` in a fresh interpreter; it prints one JSON document on its last stdout line."""
    ran = run(site, [sys.executable, "-c", textwrap.dedent(code)], cwd, **extra)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return json.loads(ran.stdout.strip().splitlines()[-1])


# -- the package itself --------------------------------------------------------------------------


def test_the_entry_point_registers_example_llama(example_site: Path, tmp_path: Path) -> None:
    found = run_python(
        example_site,
        """
        import importlib.metadata, json
        from pytest_minerva.backends import builtin_registry
        from pytest_minerva.hookspecs import ENTRY_POINT_GROUP, hook_relay

        registry = builtin_registry()
        hook_relay().pytest_minerva_register_backends(registry=registry)
        spec = registry.get("example_llama")
        points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
        print(json.dumps({"points": points, "target": spec.target, "formats": spec.formats,
                          "available": spec.available(), "versions": spec.versions()}))
        """,
        tmp_path,
    )
    assert found["points"].get("example_engine") == "minerva_example_engine.hooks"
    assert found["target"] == "minerva_example_engine.engine:ExampleBackend"
    assert found["formats"] == ["gguf"]
    assert found["available"] is True
    assert found["versions"] == {DISTRIBUTION: "0.1.0"}


def test_example_backend_computes_what_llama_cpp_computes(example_site: Path, tiny_gguf: Path, tmp_path: Path) -> None:
    """The adapter really runs llama.cpp: its logits and greedy tokens are llama_cpp's, bit for bit."""
    found = run_python(
        example_site,
        f"""
        import json
        import numpy as np
        from minerva_example_engine.engine import ExampleBackend
        from pytest_minerva.backends.base import GenerationRequest, LoadOptions
        from pytest_minerva.backends.llama_cpp import LlamaCppBackend
        from pytest_minerva.models.resolve import ResolvedArtifact

        artifact = ResolvedArtifact("tiny", "gguf", "F32", {str(tiny_gguf)!r}, "test", "llama")
        outputs = {{}}
        for cls in (ExampleBackend, LlamaCppBackend):
            backend = cls(artifact, LoadOptions(threads=1, n_ctx=128))
            try:
                ids = backend.tokenize("The quick brown fox jumps over the lazy dog", add_bos=True)
                logits = backend.logits(ids)
                tokens = [e.token for e in backend.stream(GenerationRequest(tuple(ids), max_tokens=8))]
                outputs[cls.__name__] = (ids, logits, tokens, backend.info())
            finally:
                backend.close()
        ex, ref = outputs["ExampleBackend"], outputs["LlamaCppBackend"]
        print(json.dumps({{
            "same_ids": ex[0] == ref[0], "same_logits": bool(np.array_equal(ex[1], ref[1])),
            "finite": bool(np.isfinite(ex[1]).all()), "spread": float(ex[1].max() - ex[1].min()),
            "same_tokens": ex[2] == ref[2], "generated": len(ex[2]), "info": ex[3],
        }}))
        """,
        tmp_path,
    )
    assert found["same_ids"] and found["same_logits"] and found["same_tokens"], found
    assert found["finite"] and found["spread"] > 0
    assert found["generated"] == 8
    assert found["info"]["backend"] == BACKEND
    assert found["info"]["engine"] == "llama.cpp"
    assert found["info"]["adapter"] == "minerva_example_engine"


# -- minerva bench ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_document(example_site: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``minerva bench`` on the tiny GGUF with only the example backend: one short run, the JSON it writes."""
    out_dir = tmp_path_factory.mktemp("example-bench")
    json_path = out_dir / "out.json"
    command = [
        sys.executable,
        "-m",
        "pytest_minerva.commands",
        "bench",
        "--model",
        str(tiny_gguf),
        "--backend",
        BACKEND,
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
        str(json_path),
    ]
    ran = run(example_site, command, out_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"### {BACKEND} " in ran.stdout, ran.stdout
    from pytest_minerva.storage import results

    return results.load(json_path)


@pytest.mark.slow
def test_bench_measures_the_example_backend(bench_document: dict[str, Any]) -> None:
    entries = [b for b in bench_document["backends"] if b["backend"] == BACKEND]
    assert len(entries) == 1, bench_document["backends"]
    entry = entries[0]
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["case_id"].endswith(f"-gguf-{BACKEND}-cpu")
    # The instance that ran is the example's class (its info), in llama.cpp.
    assert entry["info"]["backend"] == BACKEND
    assert entry["info"]["adapter"] == "minerva_example_engine"
    assert entry["info"]["engine"] == "llama.cpp"
    assert entry["load_s"] > 0
    assert entry["kv_cache"]["computed_bytes_per_token"] > 0
    benchmarks = [b for b in bench_document["benchmarks"] if b["backend"] == BACKEND]
    assert [b["scenario"] for b in benchmarks] == ["short"]
    short = benchmarks[0]
    assert short["error"] is None
    assert len(short["runs"]) == 1
    first = short["runs"][0]
    assert first["generated_tokens"] == short["generate_tokens"] > 0
    assert first["ttft_ms"] > 0 and first["tpt_ms"] > 0 and first["decode_tps"] > 0
    assert first["engine"]["n_eval"] > 0  # llama.cpp's own counters saw the decode
    assert bench_document["environment"]["versions"].get(DISTRIBUTION) == "0.1.0"


@pytest.mark.slow
def test_bench_machine_info_has_the_plugins_facts(bench_document: dict[str, Any]) -> None:
    assert bench_document["machine_info"].get("example_engine_probe") == "on", sorted(bench_document["machine_info"])


@pytest.mark.slow
def test_bench_report_is_edited_by_the_plugin(bench_document: dict[str, Any]) -> None:
    assert bench_document.get("example_engine") == "seen", sorted(bench_document)


# -- asv ------------------------------------------------------------------------------------------


def test_asv_parameters_list_example_llama(example_site: Path) -> None:
    found = run_python(
        example_site,
        """
        import json
        from asv_runner.discovery import disc_benchmarks

        from benchmarks import common

        tracked = {b.name: b for b in disc_benchmarks("benchmarks")}
        track = tracked["bench_generation.Generation.track_ttft_ms"]
        print(json.dumps({"backends": list(common.BACKENDS), "param_names": track.param_names,
                          "params": track.params}))
        """,
        REPO,
    )
    assert BACKEND in found["backends"], found["backends"]
    axis = found["params"][found["param_names"].index("backend")]
    assert repr(BACKEND) in axis, axis


@pytest.mark.slow
def test_asv_measures_example_llama(example_site: Path, tiny_gguf: Path) -> None:
    """The suite's own loader and timing path runs the example backend on the tiny model."""
    figures = run_python(
        example_site,
        f"""
        import json
        from benchmarks import common

        print(json.dumps(common.measure({MODEL!r}, {BACKEND!r}, ["short"], 2)))
        """,
        REPO,
        MINERVA_THREADS="1",
    )
    short = figures["short"]
    # The engine runs in the benchmark's process, so its CPU-time twins are tracked too.
    assert set(short) == {"ttft_ms", "tpt_ms", "prefill_tps", "decode_tps", "ttft_cpu_ms", "tpt_cpu_ms"}
    assert all(len(values) == 2 and all(v > 0 for v in values) for values in short.values()), short


# -- the pytest matrix -----------------------------------------------------------------------------

MATRIX_TEST = """
import numpy as np


def test_logits(backend):
    assert backend.name == "example_llama"
    info = backend.info()
    assert info["backend"] == "example_llama" and info["adapter"] == "minerva_example_engine"
    ids = backend.tokenize("The quick brown fox", add_bos=True)
    logits = backend.logits(ids)
    assert logits.shape == (len(ids), backend.vocab_size)
    assert np.isfinite(logits).all() and float(logits.max() - logits.min()) > 0
"""


@pytest.fixture
def matrix_dir(tmp_path: Path) -> Path:
    (tmp_path / "test_example_matrix.py").write_text(MATRIX_TEST, encoding="utf-8")
    return tmp_path


def pytest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--model", MODEL, "--backend", BACKEND, *args]


def test_pytest_matrix_has_example_llama_cases(example_site: Path, matrix_dir: Path) -> None:
    ran = run(example_site, pytest_command("--collect-only", "-q", "--device", "cpu"), matrix_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in ran.stdout.splitlines() if "::test_logits[" in line)
    assert ids == sorted(f"{MODEL}-gguf-{q}-{BACKEND}-cpu" for q in ("f32", "f16", "q8_0", "q4_0", "q4_1")), ran.stdout


@pytest.mark.slow
def test_pytest_runs_a_test_on_example_llama(example_site: Path, matrix_dir: Path) -> None:
    node = f"test_example_matrix.py::test_logits[{MODEL}-gguf-f32-{BACKEND}-cpu]"
    # -m with the backend's name keeps the case only if the case carries that marker, and
    # --strict-markers fails the run unless the plugin registered it, as it does a built-in's.
    args = pytest_command(node, "-rA", "--device", "cpu", "--strict-markers", "-m", BACKEND)
    ran = run(example_site, args, matrix_dir)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed" in ran.stdout, ran.stdout
