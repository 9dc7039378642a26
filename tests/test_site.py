"""The published benchmark history, opened in a real browser.

Real asv results of two commits recorded on this machine (``.asv/results``; with ``-m asv`` the
test records them itself) go through the publish workflow's own ``collect`` steps, run here
by ``tools/run_workflow_steps.py`` against a local bare "origin": two runs, one commit's
results each, as two pushes to main would. The second run starts from the ``asv-results``
branch the first pushed, so the site it builds shows the history of both. Headless Chromium
then opens that site over http on loopback and checks the benchmark list, one graph's points
and the console.

asv's pages load jQuery, flot and bootstrap from public CDNs. Nothing outside loopback is
reachable here (the browser is told so), so the test serves the same libraries, fetched once
from the npm registry, and points the page's ``<script>`` tags at them.

Set ``MINERVA_SITE_SCREENSHOT=docs/asv-site.png`` to refresh the README's screenshot (the numerics
graph's, with a step in it, comes from ``tests/test_numerics_history.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from site_browser import chromium_browser, open_graph, plotted_by_commit, served, wait_for

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tools" / "run_workflow_steps.py"
PUBLISH = REPO / ".github" / "workflows" / "publish.yml"
VENV_BIN = Path(sys.executable).parent
FIGURES = ("track_ttft_ms", "track_tpot_ms", "track_decode_tps", "track_prefill_tps")
#: The numerics benchmarks the list must show beside speed, and the graph the test opens.
NUMERICS = ("track_kl_mean", "track_kl_max", "track_top1_disagreement", "track_max_dlogit")
NUMERICS_GRAPH = "bench_numerics.Numerics.track_kl_max"

pytestmark = pytest.mark.slow


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class Recorded:
    """asv results of two commits from one machine: the files the publish job would download."""

    machine: str
    commits: tuple[str, str]
    files: dict[str, list[Path]]  # commit -> its result files
    machine_json: Path
    benchmarks_json: Path


def find_recorded(results: Path, repo: Path) -> Recorded | None:
    """Two commits of ``repo`` with results from one machine in ``results``, oldest first."""
    if not (results / "benchmarks.json").exists():
        return None
    order = git(repo, "rev-list", "--reverse", "main").split()
    for machine_dir in sorted(p for p in results.iterdir() if (p / "machine.json").exists()):
        by_commit: dict[str, list[Path]] = {}
        for path in sorted(machine_dir.glob("*.json")):
            if path.name == "machine.json":
                continue
            commit = json.loads(path.read_text(encoding="utf-8")).get("commit_hash", "")
            if commit in order:
                by_commit.setdefault(commit, []).append(path)
        if len(by_commit) >= 2:
            first, second = sorted(by_commit, key=order.index)[-2:]
            return Recorded(
                machine_dir.name,
                (first, second),
                {c: by_commit[c] for c in (first, second)},
                machine_dir / "machine.json",
                results / "benchmarks.json",
            )
    return None


def record_two_commits(tmp: Path) -> Recorded:
    """``asv run`` on the last two commits of main with the project's asv configuration (minutes)."""
    config = json.loads((REPO / "asv.conf.json").read_text(encoding="utf-8"))
    config.update(
        repo=str(REPO),
        benchmark_dir=str(REPO / "benchmarks"),
        env_dir=str(REPO / ".asv" / "env"),
        results_dir=str(tmp / "results"),
        html_dir=str(tmp / "html"),
    )
    (tmp / "asv.conf.json").write_text(json.dumps(config), encoding="utf-8")
    env = {**os.environ, "HOME": str(tmp), "MINERVA_ASV_SCENARIOS": "short", "MINERVA_ASV_RUNS": "7"}
    asv = [str(VENV_BIN / "asv"), "--config", str(tmp / "asv.conf.json")]
    subprocess.run([*asv[:1], "machine", *asv[1:], "--machine", "site-test", "--yes"], env=env, check=True)
    subprocess.run([*asv[:1], "run", *asv[1:], "--machine", "site-test", "main~2..main"], env=env, check=True)
    recorded = find_recorded(tmp / "results", REPO)
    assert recorded is not None, f"asv run recorded no results for two commits under {tmp / 'results'}"
    return recorded


@pytest.fixture(scope="module")
def recorded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    if shutil.which("asv", path=str(VENV_BIN)) is None or not (REPO / "asv.conf.json").exists():
        pytest.skip("asv or asv.conf.json is missing")
    found = find_recorded(REPO / ".asv" / "results", REPO)
    if found is not None:
        return found
    if "asv" not in (request.config.getoption("markexpr") or ""):
        pytest.skip(
            "no asv results of two commits of main in .asv/results: run the benchmarks for two commits "
            "(README, asv) or add -m asv to record them here"
        )
    return record_two_commits(tmp_path_factory.mktemp("recorded"))


def run_collect(clone: Path, temp: Path, commit: str) -> dict[str, Any]:
    """The publish workflow's ``collect`` job, its ``run:`` steps, in ``clone``."""
    report = temp.parent / f"{temp.name}-report.json"
    command = [sys.executable, str(RUNNER), str(PUBLISH), "--job", "collect", "--workdir", str(clone)]
    command += ["--temp", str(temp), "--report", str(report), "--context", f"github.sha={commit}"]
    command += ["--skip", "Install asv"]  # the test environment has it; pip must not change its version
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PATH": path}, check=False)
    assert done.returncode == 0, f"collect job failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    return json.loads(report.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Published:
    html: Path
    origin: Path
    reports: tuple[dict[str, Any], dict[str, Any]]


@pytest.fixture(scope="module")
def published(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Published:
    """Two runs of the collect job, one commit's results each, pushing to a local bare origin."""
    root = tmp_path_factory.mktemp("publish")
    origin = root / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(origin)], check=True)
    reports = []
    for run, commit in enumerate(recorded.commits, start=1):
        clone = root / f"run{run}" / "checkout"
        subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
        shutil.copy2(REPO / "asv.conf.json", clone / "asv.conf.json")  # the working tree's, committed or not
        shutil.rmtree(clone / "benchmarks", ignore_errors=True)
        shutil.copytree(REPO / "benchmarks", clone / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
        temp = root / f"run{run}" / "runner-temp"
        artifact = temp / "new-results" / f"asv-results-{recorded.machine}"
        (artifact / recorded.machine).mkdir(parents=True)
        shutil.copy2(recorded.benchmarks_json, artifact / "benchmarks.json")
        shutil.copy2(recorded.machine_json, artifact / recorded.machine / "machine.json")
        for path in recorded.files[commit]:
            shutil.copy2(path, artifact / recorded.machine / path.name)
        reports.append(run_collect(clone, temp, commit))
    return Published(root / "run2" / "checkout" / ".asv" / "html", origin, (reports[0], reports[1]))


def test_collect_runs_its_steps_and_keeps_history_on_the_results_branch(
    published: Published, recorded: Recorded
) -> None:
    for report in published.reports:
        ran = {s["name"]: s["status"] for s in report["steps"]}
        assert ran["Check out the stored results"] == "success"
        assert ran["Merge this run's results"] == "success"
        assert ran["asv publish"] == "success"
        assert ran["Store the results (push the asv-results branch)"] == "success"
        assert ran["Install asv"] == "skipped"
    log = git(published.origin, "log", "asv-results", "--format=%s").splitlines()
    assert log == [f"asv results for {c}" for c in reversed(recorded.commits)]
    stored = git(published.origin, "ls-tree", "-r", "--name-only", "asv-results").splitlines()
    assert "benchmarks.json" in stored
    assert f"{recorded.machine}/machine.json" in stored
    for commit in recorded.commits:
        assert any(name.startswith(f"{recorded.machine}/{commit[:8]}-") for name in stored), commit
    index = json.loads((published.html / "index.json").read_text(encoding="utf-8"))
    assert set(recorded.commits) <= set(index["revision_to_hash"].values())


@pytest.fixture(scope="module")
def site_url(published: Published, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(published.html, tmp_path_factory.mktemp("site") / "html") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium_browser() as driver:
        yield driver


@pytest.fixture(scope="module")
def visits(browser: Any, site_url: str) -> dict[str, Any]:
    """Open the benchmark list, the TTFT graph and the numerics (KL) graph; keep what a person would
    see, and the console."""
    browser.get(site_url + "#/summarylist")
    listed = wait_for(browser, "$('#summarylist-body tbody tr').length > 0 && $('#summarylist-body').text()")
    numerics = open_graph(browser, site_url, NUMERICS_GRAPH)
    ttft = open_graph(browser, site_url, "bench_generation.Generation.track_ttft_ms")
    return {"listed": listed or "", **ttft, "numerics": numerics, "log": browser.get_log("browser")}


def recorded_values(recorded: Recorded, commit: str, key: str) -> set[float]:
    """Every value asv recorded for benchmark ``key`` at ``commit`` (all parameter combinations)."""
    from asv.results import Results

    values: set[float] = set()
    for path in recorded.files[commit]:
        result = Results.load(str(path), recorded.machine)
        try:
            found = result.get_result_value(key, result.get_result_params(key))
        except KeyError:
            continue
        values |= {round(v, 6) for v in found if v is not None and v == v}
    return values


def test_the_benchmark_list_shows_ttft_tpot_and_throughput(visits: dict[str, Any]) -> None:
    listed = visits["listed"]
    assert "failed to load" not in listed
    for figure in FIGURES:
        assert figure in listed


def test_the_benchmark_list_shows_the_numerics_beside_speed(visits: dict[str, Any]) -> None:
    for figure in NUMERICS:
        assert f"Numerics.{figure}" in visits["listed"]


def test_the_ttft_graph_plots_the_recorded_values_of_both_commits(
    visits: dict[str, Any], published: Published, recorded: Recorded
) -> None:
    plotted = plotted_by_commit(visits["series"], published.html)
    assert set(plotted) == set(recorded.commits)
    for commit in recorded.commits:
        values = recorded_values(recorded, commit, "bench_generation.Generation.track_ttft_ms")
        assert plotted[commit] <= values, f"{commit[:8]}: the page plots {plotted[commit]}, asv recorded {values}"
    assert visits["painted"] > 1000  # the canvas has a drawn graph, not just an empty frame
    assert "bench_generation.Generation.track_ttft_ms" in visits["text"]


def test_the_numerics_graph_plots_the_recorded_kl_of_both_commits(
    visits: dict[str, Any], published: Published, recorded: Recorded
) -> None:
    graph = visits["numerics"]
    plotted = plotted_by_commit(graph["series"], published.html)
    assert set(plotted) == set(recorded.commits), f"the KL graph has points for {sorted(plotted)}"
    for commit in recorded.commits:
        values = recorded_values(recorded, commit, NUMERICS_GRAPH)
        assert values, f"{commit[:8]}: asv recorded no {NUMERICS_GRAPH}"
        assert plotted[commit] <= values, f"{commit[:8]}: the page plots {plotted[commit]}, asv recorded {values}"
    # At least one pair differs from its reference (llama.cpp's Q4_1 against float32): a real, nonzero KL.
    assert any(v > 0 for values in plotted.values() for v in values)
    assert graph["painted"] > 1000
    assert NUMERICS_GRAPH in graph["text"]


def test_the_site_raises_no_javascript_errors(visits: dict[str, Any]) -> None:
    assert [entry for entry in visits["log"] if entry["level"] == "SEVERE"] == []


def test_the_screenshot_is_a_png_of_the_graph(visits: dict[str, Any], tmp_path: Path) -> None:
    png = visits["png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    target = (
        REPO / os.environ["MINERVA_SITE_SCREENSHOT"]
        if os.environ.get("MINERVA_SITE_SCREENSHOT")
        else tmp_path / "s.png"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(png)
    assert target.stat().st_size > 10_000
