"""An engine team's path, end to end, from wheels only (issue 14).

What a team that ships an inference engine does to check it with pytest-minerva, as its CI
would do it: no checkout of this repository, no editable install, no ``PYTHONPATH``.

1. Wheels: a non-editable wheel of pytest-minerva, built from a temporary copy of this checkout
   (its tracked and untracked-but-not-ignored files, so no ``build/`` lands in the working
   tree), and a wheel of the engine's adapter package, ``examples/minerva_example_engine``
   (backend ``example_llama``, registered through the ``pytest_minerva`` entry-point group),
   both by ``build_wheels`` of ``tests/wheelhouse.py``.
2. A fresh virtual environment (``python -m venv``) holding both wheels with pytest-minerva's
   core dependencies only (no ``[suite]`` extra), the pytest version of this environment, and
   llama-cpp-python from the portable wheel ``tools/install.sh`` built and cached
   (``pytest_minerva.backends.llama_cpp_build``), through ``--find-links``.
3. From an empty directory, with that environment's interpreter:

   a. the shipped regression suite, ``python -m pytest --pyargs pytest_minerva.suites``, on
      ``--minerva-backend example_llama``;
   b. ``minerva bench`` on ``example_llama``;
   c. the asv suite's parameters (asv runs ``benchmarks/`` from a checkout, so only that step has
      the repository's ``benchmarks`` package on ``PYTHONPATH``) and one measurement through it.

The runs start from an empty artifact cache (``MINERVA_CACHE_DIR``), as on a new CI runner. Every
step checks that ``pytest_minerva`` and ``minerva_example_engine`` were imported from the fresh
environment's site-packages. Each stage's wall time is printed (run with ``-s``).

Needs the package registry for the core dependencies (pip's cache serves the files): skips,
saying so, when it cannot be reached. Without a cached llama-cpp-python wheel it builds llama-cpp-python from the
registry's sdist (5-7 minutes on two cores) with the portable flags the install would use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from wheelhouse import PIP_NETWORK, build_wheels, clean_env, from_registry, must

from pytest_minerva.backends import llama_cpp_build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = Path("examples") / "minerva_example_engine"
BACKEND = "example_llama"
MODEL = "tiny-random-llama"
DISTRIBUTIONS = {"pytest_minerva": "pytest-minerva", "minerva_example_engine": "minerva-example-engine"}

#: The formats the engine loads: ``example_llama`` reads GGUF only, so the suite's checks of the
#: model's SafeTensors and MLX artifacts are not its business. (They also need the engines that
#: derive them: without mlx-lm, deriving the MLX artifact in a fresh cache raises
#: ModuleNotFoundError rather than skipping.)
FORMATS = "gguf"
#: The shipped suite's checks that take a backend, and the artifact checks, on the tiny model.
#: The F16 KV-cache case is left out: the suite reads KV-cache bounds by backend name from its
#: own ``kv_cache.toml``, so a third-party engine gets ``[default]`` (1e-3), and llama.cpp's F16
#: one-token path (no flash attention) differs from its batched pass by 0.0064 on this model, as
#: ``llama_cpp`` does under its own, looser bound. An adapter package has no way yet to declare
#: its engine's bounds.
SELECTION = "(artifacts or logits or contract) and not (kv_cache and f16)"
#: Tests of the selection that must pass on ``example_llama`` (case ids ``...-example_llama-cpu``).
MUST_PASS = (
    "test_tokenizer_roundtrip",
    "test_logits_are_finite_and_depend_on_the_input",
    "test_logits_are_deterministic",
    "test_generation_gives_the_exact_count_past_eos",
    "test_greedy_stream_follows_the_logits",
    "test_kv_cache_matches_full_forward",
)

TIMEOUT_VENV = 180
TIMEOUT_PIP = 900
TIMEOUT_LLAMA_BUILD = 1800
TIMEOUT_STAGE = 300

#: Wall time of each stage, in the order they ran; printed as they end and summed up at the end.
STAGE_TIMES: dict[str, float] = {}


@contextmanager
def stage(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        STAGE_TIMES[name] = elapsed
        print(f"\n[engine-team path] {name}: {elapsed:.1f} s", flush=True)


# --------------------------------------------------------------------------- the environment


@dataclass(frozen=True)
class EngineTeam:
    venv: Path
    python: Path
    site_packages: Path
    wheels: tuple[Path, ...]
    env: dict[str, str]  # PATH starts with the venv's bin/, as in an activated venv
    work: Path

    def bin(self, name: str) -> Path:
        return self.python.parent / name

    def empty_dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir()
        return path


def llama_plan() -> llama_cpp_build.Plan:
    """The llama.cpp build ``tools/install.sh`` chooses for this machine (portable on x86-64 Linux)."""
    return llama_cpp_build.plan_build(
        dict(os.environ),
        system=platform.system(),
        machine=platform.machine(),
        flags=llama_cpp_build.cpu_flags(),
        has_nvidia=llama_cpp_build.has_nvidia_gpu(),
    )


def cached_llama_wheel(plan: llama_cpp_build.Plan) -> Path | None:
    """The llama-cpp-python wheel ``tools/install.sh`` built and cached for ``plan``, else any cached one
    of the same version."""
    planned = llama_cpp_build.wheel_dir(plan)
    pattern = f"llama_cpp_python-{llama_cpp_build.LLAMA_VERSION}-*.whl"
    found = sorted(planned.glob(pattern)) or sorted(planned.parent.glob(f"{llama_cpp_build.DISTRIBUTION}-*/{pattern}"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineTeam]:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheels offline (--no-build-isolation) uses this environment's setuptools: none here")
    work = tmp_path_factory.mktemp("engine_team")
    env = clean_env(HF_HUB_OFFLINE="1")  # an engine team's CI shell, offline from the Hub

    with stage("build the two wheels"):
        built = build_wheels(work, env, EXAMPLE)
        assert sorted(built) == ["minerva_example_engine", "pytest_minerva"], built
        wheels = tuple(sorted(built.values()))

    venv = work / "venv"
    with stage("create the venv"):
        must([sys.executable, "-m", "venv", venv], what="creating the venv", env=env, timeout=TIMEOUT_VENV)
    python = venv / "bin" / "python"
    try:
        plan = llama_plan()
        llama_wheel = cached_llama_wheel(plan)
        install: list[str | Path] = [python, "-m", "pip", "install", *PIP_NETWORK, f"pytest=={pytest.__version__}"]
        install_env = dict(env)
        llama_pin = f"{llama_cpp_build.DISTRIBUTION}=={llama_cpp_build.LLAMA_VERSION}"
        if llama_wheel is not None:
            # Pinned, so that pip takes the cached wheel rather than a newer sdist from the index.
            install += ["--find-links", llama_wheel.parent, llama_pin]
            what = f"installing the wheels, their core dependencies and {llama_wheel.name}"
            timeout: float = TIMEOUT_PIP
        else:
            install += [llama_pin]
            install_env["CMAKE_ARGS"] = plan.cmake_args
            what = f"no cached llama-cpp-python wheel: building {llama_pin} from the registry ({plan.kind} build)"
            timeout = TIMEOUT_LLAMA_BUILD
            print(f"\n[engine-team path] {what}", flush=True)
        with stage("install the wheels into the venv"):
            from_registry([*install, *wheels], what=what, env=install_env, timeout=timeout, skip_on_timeout=False)

        site_packages = Path(
            must(
                [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                what="asking the venv for its site-packages",
                env=env,
                cwd=work,
                timeout=TIMEOUT_STAGE,
            ).stdout.strip()
        )
        # An activated venv, and an empty artifact cache as on a new CI runner: the runs generate
        # the tiny model themselves, with what the wheels installed.
        team_env = dict(
            env,
            PATH=os.pathsep.join([str(python.parent), env.get("PATH", "")]),
            VIRTUAL_ENV=str(venv),
            MINERVA_CACHE_DIR=str(work / "artifact-cache"),
        )
        yield EngineTeam(venv, python, site_packages.resolve(), wheels, team_env, work)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~250 MB
        if STAGE_TIMES:
            total = sum(STAGE_TIMES.values())
            lines = "\n".join(f"  {name:<48} {seconds:7.1f} s" for name, seconds in STAGE_TIMES.items())
            print(f"\n[engine-team path] stage times:\n{lines}\n  {'total':<48} {total:7.1f} s", flush=True)


# --------------------------------------------------------------------------- checks


def assert_from_the_venv(team: EngineTeam, files: dict[str, str]) -> None:
    """Every module named in ``files`` (module name -> ``__file__``) lies in the venv's site-packages."""
    for module, file in files.items():
        path = Path(file).resolve()
        assert path.is_relative_to(team.site_packages), f"{module} came from {path}, not {team.site_packages}"
        assert not path.is_relative_to(REPO), f"{module} came from the checkout: {path}"


def probe_modules(team: EngineTeam, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """``pytest_minerva.__file__`` and ``minerva_example_engine.__file__`` as the venv's python sees them there."""
    code = (
        "import json, pytest_minerva, minerva_example_engine as m\n"
        "print(json.dumps({'pytest_minerva': pytest_minerva.__file__, 'minerva_example_engine': m.__file__}))"
    )
    proc = must(
        [team.python, "-c", code], what="importing both packages in the venv", env=env, cwd=cwd, timeout=TIMEOUT_STAGE
    )
    files: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert_from_the_venv(team, files)
    return files


def test_both_packages_are_installed_from_wheels(team: EngineTeam) -> None:
    """pip recorded a wheel file as the origin of each, not an editable source tree."""
    for module, distribution in DISTRIBUTIONS.items():
        infos = list(team.site_packages.glob(f"{module}-*.dist-info"))
        assert len(infos) == 1, f"{distribution}: {infos}"
        direct = json.loads((infos[0] / "direct_url.json").read_text(encoding="utf-8"))
        assert direct["url"].endswith(".whl"), direct
        assert not direct.get("dir_info", {}).get("editable"), direct
        assert (team.site_packages / module / "__init__.py").is_file()
    leaks = [p.name for p in team.site_packages.glob("*.pth") if str(REPO) in p.read_text(encoding="utf-8")]
    assert not leaks, f".pth files pointing at the checkout: {leaks}"
    assert not list(team.site_packages.glob("__editable__*")), "an editable finder is installed"


def test_the_shipped_suite_runs_on_the_engine(team: EngineTeam) -> None:
    """(a) ``python -m pytest --pyargs pytest_minerva.suites`` from an empty directory, on ``example_llama``."""
    empty = team.empty_dir("suite-run")
    cmd: list[str | Path] = [
        team.python,
        "-m",
        "pytest",
        "--pyargs",
        "pytest_minerva.suites",
        "--minerva-model",
        MODEL,
        "--minerva-backend",
        BACKEND,
        "-p",
        "no:cacheprovider",
        "-q",
        "--minerva-threads",
        "1",  # steady on a busy two-core runner
        "-m",
        FORMATS,
        "-k",
        SELECTION,
        "-rA",
        "--trace-config",  # names the file of every plugin module pytest registered
    ]
    with stage("(a) pytest --pyargs pytest_minerva.suites"):
        proc = must(cmd, what="the shipped suite", env=team.env, cwd=empty, timeout=TIMEOUT_STAGE, lines=120)
    out = proc.stdout + proc.stderr
    assert not any(empty.iterdir()), f"the run left files in its working directory: {list(empty.iterdir())}"

    # In the run itself: the plugin, the suite's conftest and the engine's hooks, each from the venv.
    registered = dict(re.findall(r"PLUGIN registered: <module '([\w.]+)' from '([^']+)'>", out))
    for module in ("pytest_minerva.plugin", "pytest_minerva.suites.conftest", "minerva_example_engine.hooks"):
        assert module in registered, f"{module} was not registered:\n{out[:4000]}"
    assert_from_the_venv(team, {m: f for m, f in registered.items() if m.split(".")[0] in DISTRIBUTIONS})
    probe_modules(team, empty, team.env)

    passed = [line.split()[1] for line in out.splitlines() if line.startswith("PASSED ")]
    on_engine = [nodeid for nodeid in passed if nodeid.endswith(f"-{BACKEND}-cpu]")]
    for test in MUST_PASS:
        assert any(f"::{test}[" in nodeid for nodeid in on_engine), f"{test} did not pass on {BACKEND}:\n{out[-4000:]}"
    assert any("::test_artifact_verifies[" in nodeid for nodeid in passed), out[-4000:]
    print(f"[engine-team path] (a) {len(passed)} passed, {len(on_engine)} of them on {BACKEND}-cpu")


def test_minerva_bench_measures_the_engine(team: EngineTeam) -> None:
    """(b) ``minerva bench`` (the venv's console script) from an empty directory, ``example_llama`` only."""
    empty = team.empty_dir("bench-run")
    minerva = team.bin("minerva")
    shebang = minerva.read_text(encoding="utf-8").splitlines()[0]
    assert Path(shebang.removeprefix("#!").strip()).parent == team.python.parent, shebang
    cmd: list[str | Path] = [
        minerva,
        "bench",
        "--model",
        MODEL,
        "--backend",
        BACKEND,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--scenario",
        "short",
        "--no-kv-probe",
        "--threads",
        "1",  # steady on a busy two-core runner
        "--json",
        "out.json",
    ]
    with stage("(b) minerva bench"):
        proc = must(cmd, what="minerva bench", env=team.env, cwd=empty, timeout=TIMEOUT_STAGE, lines=60)
    assert f"### {BACKEND} " in proc.stdout, proc.stdout[-3000:]
    probe_modules(team, empty, team.env)

    document = json.loads((empty / "out.json").read_text(encoding="utf-8"))
    entries = document["backends"]
    assert entries and {e["backend"] for e in entries} == {BACKEND}, entries
    for entry in entries:
        assert entry["status"] == "ok", (entry["case_id"], entry.get("reason"))
        assert entry["case_id"].endswith(f"-gguf-{entry['quant'].lower()}-{BACKEND}-cpu"), entry["case_id"]
        assert entry["info"]["adapter"] == "minerva_example_engine" and entry["info"]["engine"] == "llama.cpp"
        assert entry["load_s"] > 0 and entry["kv_cache"]["computed_bytes_per_token"] > 0
    assert len(document["benchmarks"]) == len(entries)
    for measured in document["benchmarks"]:
        assert measured["backend"] == BACKEND and measured["scenario"] == "short" and measured["error"] is None
        (first,) = measured["runs"]
        assert first["generated_tokens"] == measured["generate_tokens"] > 0
        assert first["ttft_ms"] > 0 and first["tpt_ms"] > 0 and first["decode_tps"] > 0
        assert first["engine"]["n_eval"] > 0  # llama.cpp's own counters saw the decode
    versions = document["environment"]["versions"]
    assert versions.get("minerva-example-engine") == "0.1.0" and "pytest-minerva" in versions, versions
    assert document.get("example_engine") == "seen"  # the package's report hook ran
    short = document["benchmarks"][0]["runs"][0]
    print(
        f"[engine-team path] (b) {len(entries)} artifacts measured; {entries[0]['case_id']}: "
        f"TTFT {short['ttft_ms']:.1f} ms, decode {short['decode_tps']:.1f} t/s"
    )


ASV_PROBE = f"""
import json, sys
import pytest_minerva, minerva_example_engine
from benchmarks import bench_generation, common

params = {{
    cls.__name__: cls.params[cls.param_names.index("backend")]
    for cls in (bench_generation.Generation, bench_generation.GenerationMemory)
}}
figures = common.measure({MODEL!r}, {BACKEND!r}, ["short"], 1)
print(json.dumps({{
    "files": {{
        "pytest_minerva": pytest_minerva.__file__,
        "minerva_example_engine": minerva_example_engine.__file__,
    }},
    # Loaded in this process unless the backend runs in a worker process.
    "engine": getattr(sys.modules.get("minerva_example_engine.engine"), "__file__", None),
    "benchmarks": common.__file__,
    "backends": list(common.BACKENDS),
    "params": params,
    "figures": figures,
}}))
"""


def test_the_asv_suite_lists_and_measures_the_engine(team: EngineTeam) -> None:
    """(c) the asv suite, run from a checkout: ``example_llama`` is a ``backend`` parameter and measures."""
    empty = team.empty_dir("asv-run")
    # asv imports ``benchmarks`` from the checkout; the checkout's root on PYTHONPATH would also put
    # its ``pytest_minerva`` before the venv's, so the path holds a link to ``benchmarks/`` alone.
    checkout = team.work / "asv-checkout"
    checkout.mkdir()
    try:
        (checkout / "benchmarks").symlink_to(REPO / "benchmarks", target_is_directory=True)
    except OSError:
        shutil.copytree(REPO / "benchmarks", checkout / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(team.env, PYTHONPATH=str(checkout), MINERVA_THREADS="1")
    cmd: list[str | Path] = [team.python, "-c", ASV_PROBE]
    with stage("(c) asv suite: parameters and one measurement"):
        proc = must(cmd, what="the asv suite's probe", env=env, cwd=empty, timeout=TIMEOUT_STAGE, lines=60)
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert_from_the_venv(team, found["files"])
    if found["engine"] is not None:
        assert_from_the_venv(team, {"minerva_example_engine.engine": found["engine"]})
    assert Path(found["benchmarks"]).parent.name == "benchmarks"
    assert BACKEND in found["backends"], found["backends"]
    for cls, backends in found["params"].items():
        assert BACKEND in backends, f"{cls}.params has no {BACKEND}: {backends}"
    short = found["figures"]["short"]
    # The engine runs in the benchmark's process, so its CPU-time twins are tracked too.
    assert set(short) == {"ttft_ms", "tpt_ms", "prefill_tps", "decode_tps", "ttft_cpu_ms", "tpt_cpu_ms"}, short
    assert all(len(values) == 1 and values[0] > 0 for values in short.values()), short
    print(f"[engine-team path] (c) asv backends {found['backends']}; short on {BACKEND}: {short}")
