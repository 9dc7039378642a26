"""Good citizen: a real third-party project's own test suite runs the same with pytest-minerva installed.

The plugin is a ``pytest11`` entry point, so it loads into every pytest run of an environment it
is installed in, including runs that have nothing to do with it. This module installs a
non-editable wheel of this repository (core dependencies, no extras) into a fresh virtual
environment together with a small pure-Python project from the package registry, then runs that
project's own test suite from its sdist with the plugin (the default) and with
``-p no:minerva``, and checks that every test has the same outcome. It also prints, without
asserting anything about them (timings flake on a busy machine), the paired start-up difference
of ``pytest --collect-only``, the ``minerva:`` report-header lines of a plain run and the markers
the plugin registers.

A third variant, "bare", also turns off the pytest plugins that installing pytest-minerva brought
in with its dependencies (``-p no:minerva`` leaves them loaded): the run as if pytest-minerva were
not installed at all. Its outcomes must match too, and its start-up time is printed as well.

The project is six 1.17.0: one module whose sdist ships its whole suite (``test_six.py``: 200
tests, two of which skip on this platform), needs nothing but pytest and runs in under a second,
so the figures measure pytest start-up rather than the project's tests.

Needs the package registry (or pip's cache) for pytest, six and the plugin's dependencies: skips,
saying so, when it cannot be reached. A wheel of this repository that cannot be built fails.

Run with ``pytest -m slow -s tests/test_good_citizen.py`` (the figures are printed either way).
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from wheelhouse import (
    PIP_NETWORK,
    CommandTimeout,
    build_wheels,
    clean_env,
    describe,
    from_registry,
    must,
    run,
    tail,
)

pytestmark = pytest.mark.slow

PROJECT = "six"
PROJECT_VERSION = "1.17.0"
# The project's tests, relative to its unpacked sdist (where they run from).
PROJECT_TESTS = ("test_six.py",)
MIN_TESTS = 10
TIMING_ROUNDS = 10
DISABLE = ("-p", "no:minerva")

TIMEOUT_VENV = 180
TIMEOUT_PIP = 600
TIMEOUT_SUITE = 300
TIMEOUT_PYTEST = 120


# --------------------------------------------------------------------------- the environment


@dataclass(frozen=True)
class Citizen:
    python: Path  # the temporary venv's interpreter
    venv: Path
    project_dir: Path  # the unpacked sdist: the project's suite runs from here
    work: Path  # junit files and the like
    wheel: Path  # the pytest-minerva wheel that was installed
    env: dict[str, str]
    # pytest11 entry points that installing pytest-minerva added besides its own (its
    # dependencies' plugins: they load into every run too, and -p no:minerva leaves them on).
    dependency_plugins: tuple[str, ...]

    def pytest(self, *args: str) -> list[str]:
        return [str(self.python), "-m", "pytest", "-p", "no:cacheprovider", *args]

    @property
    def bare(self) -> tuple[str, ...]:
        """Options that leave out everything installing pytest-minerva added: as if it were not installed."""
        return (*DISABLE, *(arg for name in self.dependency_plugins for arg in ("-p", f"no:{name}")))


def _pytest11_names(python: Path, cwd: Path, env: dict[str, str]) -> set[str]:
    probe = "import importlib.metadata as md\nfor ep in md.entry_points(group='pytest11'): print(ep.name)\n"
    proc = must([python, "-c", probe], what="listing pytest11 entry points", timeout=60, env=env, cwd=cwd)
    return set(proc.stdout.split())


def _unpack_sdist(python: Path, work: Path, env: dict[str, str]) -> Path:
    downloads = work / "sdist"
    cmd: list[str | Path] = [
        python,
        "-m",
        "pip",
        "download",
        *PIP_NETWORK,
        "--no-binary",
        ":all:",
        "--no-deps",
        "-d",
        downloads,
        f"{PROJECT}=={PROJECT_VERSION}",
    ]
    from_registry(
        cmd,
        what=f"downloading the {PROJECT} {PROJECT_VERSION} sdist",
        env=env,
        timeout=TIMEOUT_PIP,
        skip_not_found=True,
    )
    archives = sorted(downloads.iterdir())
    assert len(archives) == 1, f"expected one sdist in {downloads}, found {archives}"
    archive = archives[0]
    unpacked = work / "project"
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(unpacked)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(unpacked, filter="data")
    tops = [p for p in unpacked.iterdir() if p.is_dir()]
    assert len(tops) == 1, f"expected one top-level directory in {archive.name}, found {tops}"
    project_dir = tops[0]
    missing = [t for t in PROJECT_TESTS if not (project_dir / t).exists()]
    assert not missing, f"the {archive.name} sdist has no {missing}: {sorted(p.name for p in project_dir.iterdir())}"
    return project_dir


@pytest.fixture(scope="session")
def citizen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Citizen]:
    """A fresh venv with pytest, the project and a non-editable pytest-minerva wheel; the project's sdist."""
    work = tmp_path_factory.mktemp("good_citizen")
    env = clean_env()

    # First, and regardless of the network: a wheel of this repository that cannot be built fails.
    wheel = build_wheels(work, env)["pytest_minerva"]

    venv_dir = work / "venv"
    must([sys.executable, "-m", "venv", venv_dir], what="creating the venv", timeout=TIMEOUT_VENV, env=env)
    python = venv_dir / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")
    try:
        pip: list[str | Path] = [python, "-m", "pip", "install", *PIP_NETWORK]
        from_registry(
            [*pip, f"pytest=={pytest.__version__}", f"{PROJECT}=={PROJECT_VERSION}"],
            what=f"installing pytest {pytest.__version__} and {PROJECT} {PROJECT_VERSION}",
            env=env,
            timeout=TIMEOUT_PIP,
            skip_not_found=True,
        )
        plugins_before = _pytest11_names(python, work, env)
        from_registry(
            [*pip, wheel],
            what=f"installing {wheel.name} and its core dependencies",
            env=env,
            timeout=TIMEOUT_PIP,
        )
        added_plugins = _pytest11_names(python, work, env) - plugins_before
        project_dir = _unpack_sdist(python, work, env)

        # The plugin the venv loads is the wheel's copy, not this working tree.
        probe = (
            "import importlib.metadata as md, pytest_minerva\n"
            "print(pytest_minerva.__file__)\n"
            "print(sorted(ep.value for ep in md.entry_points(group='pytest11') if ep.name == 'minerva'))\n"
        )
        out = must([python, "-c", probe], what="importing pytest_minerva in the venv", timeout=60, env=env, cwd=work)
        location, entry_points = out.stdout.splitlines()[:2]
        assert Path(location).resolve().is_relative_to(venv_dir.resolve()), (
            f"pytest_minerva imports from {location}, not from the venv {venv_dir}"
        )
        assert entry_points == "['pytest_minerva.plugin']", f"pytest11 entry points named minerva: {entry_points}"

        yield Citizen(
            python=python,
            venv=venv_dir,
            project_dir=project_dir,
            work=work,
            wheel=wheel,
            env=env,
            dependency_plugins=tuple(sorted(added_plugins - {"minerva"})),
        )
    finally:
        shutil.rmtree(venv_dir, ignore_errors=True)  # ~200 MB; the sdist and junit files stay


# --------------------------------------------------------------------------- helpers on results


def _outcomes(junit: Path) -> dict[str, str]:
    """{classname::name: outcome} from a junit XML file (passed, failed, error, skipped, xfailed)."""
    results: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        kinds = []
        for child in case:
            if child.tag in ("failure", "error"):
                kinds.append("failed" if child.tag == "failure" else "error")
            elif child.tag == "skipped":
                kinds.append("xfailed" if child.get("type") == "pytest.xfail" else "skipped")
        outcome = "+".join(sorted(kinds)) or "passed"
        unique, n = key, 1
        while unique in results:
            n += 1
            unique = f"{key}#{n}"
        results[unique] = outcome
    return results


def _summary_line(stdout: str) -> str:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def _run_suite(
    citizen: Citizen, label: str, extra: Sequence[str]
) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    junit = citizen.work / f"junit-{label}.xml"
    cmd = citizen.pytest(f"--junitxml={junit}", *extra, *PROJECT_TESTS)
    try:
        proc = run(cmd, timeout=TIMEOUT_SUITE, env=citizen.env, cwd=citizen.project_dir)
    except CommandTimeout as exc:
        pytest.fail(f"{PROJECT}'s suite ({label}) timed out {exc.message}", pytrace=False)
    # 0: all passed, 1: some failed. Anything else (internal error, usage error, nothing collected)
    # means the run itself broke.
    if proc.returncode not in (0, 1) or not junit.exists():
        pytest.fail(
            f"{PROJECT}'s suite ({label}) did not run to the end:\n" + describe(cmd, proc),
            pytrace=False,
        )
    return _outcomes(junit), proc


def _loaded_plugins(citizen: Citizen, extra: Sequence[str]) -> str:
    proc = must(
        citizen.pytest("--version", "--version", *extra),
        what="pytest --version --version",
        timeout=TIMEOUT_PYTEST,
        env=citizen.env,
        cwd=citizen.project_dir,
    )
    return proc.stdout + proc.stderr


def _marker_names(citizen: Citizen, extra: Sequence[str]) -> set[str]:
    proc = must(
        citizen.pytest("--markers", *extra),
        what="pytest --markers",
        timeout=TIMEOUT_PYTEST,
        env=citizen.env,
        cwd=citizen.project_dir,
    )
    return set(re.findall(r"^@pytest\.mark\.([\w.]+)", proc.stdout, flags=re.MULTILINE))


def _collect(citizen: Citizen, extra: Sequence[str]) -> tuple[float, list[str]]:
    """Wall time (s) of ``pytest --collect-only -q`` on the project's tests, and the node ids it printed."""
    cmd = citizen.pytest("--collect-only", "-q", *extra, *PROJECT_TESTS)
    start = time.perf_counter()
    try:
        proc = run(cmd, timeout=TIMEOUT_PYTEST, env=citizen.env, cwd=citizen.project_dir)
    except CommandTimeout as exc:
        pytest.fail(f"collecting {PROJECT}'s tests timed out {exc.message}", pytrace=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        pytest.fail(
            f"collecting {PROJECT}'s tests failed:\n" + describe(cmd, proc),
            pytrace=False,
        )
    return elapsed, [ln for ln in proc.stdout.splitlines() if "::" in ln]


# --------------------------------------------------------------------------- tests


def _difference(name: str, outcomes: dict[str, str], baseline: dict[str, str]) -> str:
    """What differs between two {test: outcome} maps (empty when they are equal)."""
    if outcomes == baseline:
        return ""
    only_here = sorted(outcomes.keys() - baseline.keys())
    only_there = sorted(baseline.keys() - outcomes.keys())
    changed = sorted(
        f"{k}: {baseline[k]} -> {outcomes[k]}" for k in outcomes.keys() & baseline.keys() if outcomes[k] != baseline[k]
    )
    return (
        f"with pytest-minerva vs {name}:\n"
        f"  changed ({len(changed)}): {changed[:30]}\n"
        f"  only with pytest-minerva ({len(only_here)}): {only_here[:30]}\n"
        f"  only {name} ({len(only_there)}): {only_there[:30]}\n"
    )


def test_project_suite_has_identical_outcomes(citizen: Citizen, capsys: pytest.CaptureFixture[str]) -> None:
    with_plugin = _loaded_plugins(citizen, ())
    without_plugin = _loaded_plugins(citizen, DISABLE)
    assert "pytest-minerva" in with_plugin, f"the venv's pytest does not load pytest-minerva:\n{with_plugin}"
    assert "pytest-minerva" not in without_plugin, f"-p no:minerva leaves pytest-minerva loaded:\n{without_plugin}"

    runs = {
        "with pytest-minerva": _run_suite(citizen, "with", ()),
        "-p no:minerva": _run_suite(citizen, "without", DISABLE),
        "bare": _run_suite(citizen, "bare", citizen.bare),
    }
    outcomes_with, proc_with = runs["with pytest-minerva"]

    with capsys.disabled():
        print(f"\n[good citizen] {PROJECT} {PROJECT_VERSION} ({', '.join(PROJECT_TESTS)}), plugin {citizen.wheel.name}")
        print(
            "  bare = -p no:minerva and no plugins of its dependencies: "
            + (" ".join(citizen.bare[len(DISABLE) :]) or "(it brought in none)")
        )
        for label, (outcomes, proc) in runs.items():
            counts = dict(sorted(Counter(outcomes.values()).items()))
            plugins = next((ln for ln in proc.stdout.splitlines() if ln.startswith("plugins:")), "plugins: (none)")
            print(
                f"  {label:>19}: {len(outcomes)} tests {counts}; exit {proc.returncode}; {_summary_line(proc.stdout)}"
            )
            print(f"  {'':>19}  {plugins}")
        header = [ln for ln in proc_with.stdout.splitlines() if ln.startswith("minerva:")]
        print("  'minerva:' header lines of a plain run:" + ("" if header else " none"))
        for line in header:
            print(f"    {line}")

    assert len(outcomes_with) > MIN_TESTS, f"only {len(outcomes_with)} tests ran:\n{tail(proc_with.stdout)}"
    differences = "".join(
        _difference(label, outcomes_with, outcomes)
        for label, (outcomes, _) in runs.items()
        if outcomes is not outcomes_with
    )
    if differences:
        tails = "".join(
            f"--- {label} (tail) ---\n{tail(proc.stdout)}\n{tail(proc.stderr, 10)}\n"
            for label, (_, proc) in runs.items()
        )
        pytest.fail(
            f"{PROJECT}'s suite has different outcomes with pytest-minerva installed:\n{differences}{tails}",
            pytrace=False,
        )
    assert {proc.returncode for _, proc in runs.values()} == {proc_with.returncode}


def test_startup_difference_and_registered_markers(citizen: Citizen, capsys: pytest.CaptureFixture[str]) -> None:
    """Printed for the record, not asserted: timings on a shared machine are noise-prone."""
    variants: dict[str, tuple[str, ...]] = {"with": (), "without": DISABLE, "bare": citizen.bare}

    # Warm-up (bytecode caches, page cache), which also checks that all collect the same tests.
    collected = {label: _collect(citizen, extra)[1] for label, extra in variants.items()}
    assert collected["with"] == collected["without"] == collected["bare"], "the plugin changes what is collected"
    assert len(collected["with"]) > MIN_TESTS

    # Rounds of one run each, the order rotating so that no variant always goes first.
    labels = list(variants)
    ms: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(TIMING_ROUNDS):
        for label in labels[i % 3 :] + labels[: i % 3]:
            ms[label].append(_collect(citizen, variants[label])[0] * 1000)

    markers_with = _marker_names(citizen, variants["with"])
    markers_without = _marker_names(citizen, variants["without"])

    def spread(values: list[float], sign: str = "") -> str:
        low, mid, high = min(values), statistics.median(values), max(values)
        return f"median {mid:{sign}7.1f} ms (min {low:{sign}.1f}, max {high:{sign}.1f})"

    def paired(baseline: str) -> list[float]:
        return [w - b for w, b in zip(ms["with"], ms[baseline], strict=True)]

    with capsys.disabled():
        print(
            f"\n[good citizen] start-up: `pytest --collect-only -q -p no:cacheprovider {' '.join(PROJECT_TESTS)}` "
            f"({len(collected['with'])} tests) in {PROJECT} {PROJECT_VERSION}'s sdist, {TIMING_ROUNDS} rounds "
            "(rotating order), wall time per run"
        )
        print(f"  with pytest-minerva:    {spread(ms['with'])}")
        print(f"  with -p no:minerva:     {spread(ms['without'])}")
        print(f"  bare:                   {spread(ms['bare'])}")
        print(f"  paired, with - without: {spread(paired('without'), '+')}")
        print(f"  paired, with - bare:    {spread(paired('bare'), '+')}")
        print(f"  markers pytest-minerva adds: {sorted(markers_with - markers_without) or 'none'}")
        if markers_without - markers_with:
            print(f"  markers missing with the plugin: {sorted(markers_without - markers_with)}")
