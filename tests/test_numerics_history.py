"""The numerics history sees what the equivalence gate tolerates, end to end with asv (``-m asv``).

A clone of the last commit plus the working tree's asv suite is the base; a commit that only edits
the README follows, then one that starts llama.cpp with its RoPE base (``rope_freq_base``) 1%
above the model's. asv records the numerics benchmarks of the three commits on the embedded model
(transformers on the float32 SafeTensors as the reference, llama.cpp on the Q4_1 GGUF), then:

- ``minerva gate asv`` stays quiet on the README commit (the same KL to the digit), and finds a
  numerics regression (``kind: numerics``) at the numerics factor on the RoPE commit,
- ``asv compare`` shows the step in the tracked KL, and
- the equivalence suite, run on the perturbed commit's own code, still passes, and
- the site ``asv publish`` builds from the two commits draws the step in headless Chromium
  (``MINERVA_SITE_NUMERICS_SCREENSHOT=docs/asv-numerics.png`` keeps its screenshot).

About five minutes on two cores, most of it asv building the two commits; the asv environment
(with torch) is shared with ``tests/test_site.py`` under ``.asv/env``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asv_repos import clone_with_suite
from site_browser import chromium_browser, open_graph, plotted_by_commit, served

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SUITE_FILES = ("asv.conf.json", "benchmarks")
PERTURBED_FILE = "pytest_minerva/backends/llama_cpp.py"
#: Start llama.cpp with the model's RoPE base times 1.01 (the GGUF's own value, else llama's 10000).
PERTURBATION = (
    "            self._llm = llama_cpp.Llama(\n                str(artifact.path),\n",
    "            from pytest_minerva.derive.gguf_header import read_gguf_header\n\n"
    "            header = read_gguf_header(artifact.path)\n"
    '            rope_base = 1.01 * float(header.fields.get(header.key("rope.freq_base"), 10000.0))\n'
    "            self._llm = llama_cpp.Llama(\n"
    "                str(artifact.path),\n"
    "                rope_freq_base=rope_base,\n",
)
PAIR = "safetensors-transformers vs gguf-llama_cpp"
KL_MAX = f"bench_numerics.Numerics.track_kl_max('smollm2-135m', '{PAIR}')"

pytestmark = [pytest.mark.asv, pytest.mark.slow]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class History:
    clone: Path
    base: str
    noop: str
    head: str
    env: dict[str, str]
    config: Path
    quiet: dict[str, Any]
    finding: dict[str, Any]
    compare: str


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    if shutil.which("asv", path=str(VENV_BIN)) is None:
        pytest.skip("asv is not installed (the test extra)")
    root = tmp_path_factory.mktemp("numerics-history")
    clone = root / "repo"
    clone_with_suite(clone, SUITE_FILES)
    git(clone, "add", "-A")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "base", "--allow-empty")
    base = git(clone, "rev-parse", "HEAD")
    readme = clone / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\nA sentence that changes nothing.\n", encoding="utf-8")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "README only")
    noop = git(clone, "rev-parse", "HEAD")
    source = (clone / PERTURBED_FILE).read_text(encoding="utf-8")
    assert source.count(PERTURBATION[0]) == 1, f"the RoPE patch no longer applies to {PERTURBED_FILE}"
    (clone / PERTURBED_FILE).write_text(source.replace(*PERTURBATION), encoding="utf-8")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qam", "llama.cpp: RoPE base +1%")
    head = git(clone, "rev-parse", "HEAD")

    config = json.loads((REPO / "asv.conf.json").read_text(encoding="utf-8"))
    config.update(
        repo=str(clone),
        benchmark_dir=str(clone / "benchmarks"),
        env_dir=str(REPO / ".asv" / "env"),  # the environment tests/test_site.py builds (torch included)
        results_dir=str(root / "results"),
        html_dir=str(root / "html"),
    )
    config_path = root / "asv.conf.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINERVA_ASV_")}
    env.update(
        HOME=str(root / "home"),
        PATH=os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
        MINERVA_ASV_BACKENDS="llama_cpp",
    )
    (root / "home").mkdir()
    asv = str(VENV_BIN / "asv")
    subprocess.run([asv, "machine", "--config", str(config_path), "--yes"], env=env, check=True, capture_output=True)

    def gate(before: str, after: str) -> dict[str, Any]:
        out = root / "gate" / f"{after[:8]}.json"
        command = [str(VENV_BIN / "minerva"), "gate", "asv", "--config", str(config_path), "--base", before]
        command += ["--head", after, "--no-merge-base", "--out", str(out), "--asv", asv, "--numerics-factor", "1.05"]
        command += ["--", "--bench", r"^bench_numerics\.", "--attribute", "rounds=1"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3000, check=False)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        finding: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return finding

    quiet = gate(base, noop)
    finding = gate(noop, head)
    compared = subprocess.run(
        [asv, "compare", "--config", str(config_path), "--factor", "1.05", noop, head],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return History(clone, base, noop, head, env, config_path, quiet, finding, compared.stdout)


def test_the_gate_stays_quiet_on_a_commit_that_changes_nothing(history: History) -> None:
    quiet = history.quiet
    assert (quiet["status"], quiet["kind"]) == ("ok", "no-regression"), quiet["reason"]
    kl = next(row for row in quiet["rows"] if row["benchmark"] == KL_MAX)
    assert kl["before"] == kl["after"] and kl["mark"] == ""  # deterministic: the same KL, to the digit


def test_the_gate_calls_the_step_a_numerics_regression(history: History) -> None:
    finding = history.finding
    assert (finding["status"], finding["kind"]) == ("regression", "numerics"), finding["reason"]
    changed = {row["benchmark"] for row in finding["rows"] if row["mark"] == "+"}
    assert KL_MAX in changed, finding["rows"]
    assert all(row["benchmark"].startswith("bench_numerics.") for row in finding["rows"])


def test_asv_compare_shows_the_step_in_the_tracked_kl(history: History) -> None:
    row = next(line for line in history.compare.splitlines() if KL_MAX in line)
    mark, before, after, ratio = (cell.strip() for cell in row.strip().strip("|").split("|")[:4])
    assert mark == "+" and float(ratio) > 1.05, row
    assert before != after


def test_the_equivalence_suite_still_passes_on_the_perturbed_commit(history: History) -> None:
    assert git(history.clone, "rev-parse", "HEAD") == history.head
    env = {**history.env, "PYTHONPATH": str(history.clone)}  # the perturbed commit's own code
    suite = ["pytest_minerva/suites/test_equivalence.py", "--model", "smollm2-135m", "-m", "llama_cpp"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *suite, "-p", "no:cacheprovider", "-q"],
        cwd=history.clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout, done.stdout[-2000:]
    check = subprocess.run(
        [sys.executable, "-c", "import pytest_minerva.backends.llama_cpp as m; print(m.__file__)"],
        cwd=history.clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert check.stdout.strip() == str(history.clone / PERTURBED_FILE)


def test_the_published_site_draws_the_step(history: History, tmp_path: Path) -> None:
    html = Path(json.loads(history.config.read_text(encoding="utf-8"))["html_dir"])
    subprocess.run(
        [str(VENV_BIN / "asv"), "publish", "--config", str(history.config)],
        env=history.env,
        capture_output=True,
        text=True,
        check=True,
    )
    with served(html, tmp_path / "site") as url, chromium_browser() as browser:
        graph = open_graph(browser, url, "bench_numerics.Numerics.track_kl_max")
    plotted = plotted_by_commit(graph["series"], html)
    assert set(plotted) == {history.base, history.noop, history.head}, plotted
    assert plotted[history.noop] == plotted[history.base]  # flat where nothing changed
    assert max(plotted[history.head]) > max(plotted[history.noop]) * 1.05  # then the step, up: a larger KL
    assert graph["painted"] > 1000
    target = os.environ.get("MINERVA_SITE_NUMERICS_SCREENSHOT")
    if target:
        (REPO / target).parent.mkdir(parents=True, exist_ok=True)
        (REPO / target).write_bytes(graph["png"])
