"""The asv suite: what asv discovers, how its samples are recorded, and the regression gate end to end.

The unmarked tests import the suite and check what asv sees (benchmarks, parameters,
units, versions, skips) and how ``asv compare`` judges the samples the suite records.
The ``asv``-marked tests (``pytest -m asv``, a few minutes) build a temporary git
repository with a base commit, a no-op commit and a commit that disables llama.cpp's KV
cache, and check that ``tools/asv_gate.sh`` (``asv continuous``) flags the slowdown
only, that ``asv compare`` calls it significant, and that ``asv publish`` builds a site.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
from asv_repos import clone_with_suite

REPO = Path(__file__).resolve().parents[1]
#: The files the suite consists of, copied over a clone of the last commit.
SUITE_FILES = ("asv.conf.json", "benchmarks", "tools/asv_gate.sh")
TRACKS = {
    "bench_generation.Generation.track_ttft_ms": ("track", "ms"),
    "bench_generation.Generation.track_tpot_ms": ("track", "ms"),
    "bench_generation.Generation.track_ttft_cpu_ms": ("track", "ms"),
    "bench_generation.Generation.track_tpot_cpu_ms": ("track", "ms"),
    "bench_generation.Generation.track_prefill_tps": ("track", "tokens/s"),
    "bench_generation.Generation.track_decode_tps": ("track", "tokens/s"),
    "bench_generation.GenerationMemory.peakmem_generate": ("peakmemory", "bytes"),
}
SERVING_TRACKS = {
    "bench_serving.ServingConcurrency.track_request_ttft_ms": ("track", "ms"),
    "bench_serving.ServingConcurrency.track_request_tpot_ms": ("track", "ms"),
    "bench_serving.ServingConcurrency.track_aggregate_tps": ("track", "tokens/s"),
}
NUMERICS_TRACKS = {
    "bench_numerics.Numerics.track_kl_mean": ("track", "nats"),
    "bench_numerics.Numerics.track_kl_max": ("track", "nats"),
    "bench_numerics.Numerics.track_top1_disagreement": ("track", "fraction"),
    "bench_numerics.Numerics.track_max_dlogit": ("track", "logits"),
}
ASV = [sys.executable, "-m", "asv"]


@pytest.fixture
def suite(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    """``(benchmarks.bench_generation, benchmarks.common)``, imported as asv imports them."""
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import bench_generation, common

    return bench_generation, common


def absent_device() -> str:
    """A device this machine certainly lacks, so a backend asked for it must skip."""
    return "cuda" if sys.platform == "darwin" else "metal"


def test_asv_discovers_four_tracks_and_a_peakmem_over_model_backend_scenario(
    suite: tuple[ModuleType, ModuleType],
) -> None:
    from asv_runner.discovery import disc_benchmarks

    _, common = suite
    everything = {b.name: b for b in disc_benchmarks(str(REPO / "benchmarks"))}
    assert {name: (b.type, b.unit) for name, b in everything.items()} == TRACKS | SERVING_TRACKS | NUMERICS_TRACKS
    found = {name: b for name, b in everything.items() if name in TRACKS}
    expected_params = [[repr(v) for v in values] for values in (common.MODELS, common.BACKENDS, common.SCENARIOS)]
    for bench in found.values():
        assert bench.param_names == ["model", "backend", "scenario"]
        assert bench.params == expected_params
        assert not re.fullmatch(r"[0-9a-f]{64}", bench.version), f"{bench.name} has no explicit version"
    assert len({b.version for b in found.values()}) == len(found)
    # One setup_cache measurement serves all four tracks; peak memory is a process of its own.
    track_keys = {b.setup_cache_key for name, b in found.items() if ".track_" in name}
    assert len(track_keys) == 1 and None not in track_keys
    assert found["bench_generation.GenerationMemory.peakmem_generate"].setup_cache_key is None


def test_asv_discovers_the_serving_sweep_over_model_and_concurrency(suite: tuple[ModuleType, ModuleType]) -> None:
    from asv_runner.discovery import disc_benchmarks

    _, common = suite
    found = {b.name: b for b in disc_benchmarks(str(REPO / "benchmarks")) if b.name in SERVING_TRACKS}
    assert set(found) == set(SERVING_TRACKS)
    for bench in found.values():
        assert bench.param_names == ["model", "concurrency"]
        assert bench.params == [[repr(v) for v in common.MODELS], ["1", "2", "4", "8"]]
        assert not re.fullmatch(r"[0-9a-f]{64}", bench.version), f"{bench.name} has no explicit version"
    # One server start and one sweep serve every level and figure.
    assert len({b.setup_cache_key for b in found.values()}) == 1


def test_asv_discovers_the_numerics_over_model_and_backend_pair(suite: tuple[ModuleType, ModuleType]) -> None:
    from asv_runner.discovery import disc_benchmarks

    _, common = suite
    found = {b.name: b for b in disc_benchmarks(str(REPO / "benchmarks")) if b.name in NUMERICS_TRACKS}
    assert set(found) == set(NUMERICS_TRACKS)
    labels = common.numerics_pair_labels()
    # The suite's own pairs: transformers on SafeTensors is the reference of every other backend.
    assert all(label.startswith("safetensors-transformers vs ") for label in labels), labels
    assert "safetensors-transformers vs gguf-llama_cpp" in labels
    for bench in found.values():
        assert bench.param_names == ["model", "pair"]
        assert bench.params == [[repr(v) for v in common.MODELS], [repr(v) for v in labels]]
        assert not re.fullmatch(r"[0-9a-f]{64}", bench.version), f"{bench.name} has no explicit version"
    assert len({b.version for b in found.values()}) == len(found)
    # One measurement of every pair serves the four figures.
    assert len({b.setup_cache_key for b in found.values()}) == 1


def test_a_numerics_pair_is_measured_only_for_the_chosen_backends_against_any_reference(
    suite: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, common = suite
    monkeypatch.setattr(common, "BACKENDS", ("llama_cpp",))
    pairs = common.numerics_pairs("smollm2-135m")
    assert [common.pair_label(p) for p in pairs] == ["safetensors-transformers vs gguf-llama_cpp"]
    device = absent_device()
    monkeypatch.setattr(common, "DEVICE", device)
    monkeypatch.setattr(common, "MODELS", ("smollm2-135m",))
    outcomes = common.measure_numerics_all()["outcomes"]
    assert list(outcomes) == [("smollm2-135m", "safetensors-transformers vs gguf-llama_cpp")]
    skip = outcomes["smollm2-135m", "safetensors-transformers vs gguf-llama_cpp"]["skip"]
    assert device in skip, skip  # nothing was loaded: the missing device is the reason


def test_a_numerics_skip_or_error_reaches_asv_as_such(suite: tuple[ModuleType, ModuleType]) -> None:
    _, common = suite
    measurement = {
        "outcomes": {
            ("m", "a vs b"): {"figures": {"kl_mean": 0.5}},
            ("m", "a vs c"): {"skip": "c: library not installed"},
            ("m", "a vs d"): {"error": "m-a-vs-d: NonFiniteLogits: prompt 'short': non-finite logits"},
            ("n", "*"): {"error": "KeyError: unknown model"},
        }
    }
    assert common.numerics_figures(measurement, "m", "a vs b") == {"kl_mean": 0.5}
    with pytest.raises(common.Unavailable, match=r"^c: library not installed$"):
        common.numerics_figures(measurement, "m", "a vs c")
    with pytest.raises(RuntimeError, match="non-finite logits"):
        common.numerics_figures(measurement, "m", "a vs d")
    with pytest.raises(RuntimeError, match="unknown model"):
        common.numerics_figures(measurement, "n", "a vs b")
    with pytest.raises(common.Unavailable, match=r"^m has no pair a vs e on "):
        common.numerics_figures(measurement, "m", "a vs e")


def test_suite_settings_come_from_the_environment(
    suite: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, common = suite
    monkeypatch.setenv("MINERVA_ASV_SCENARIOS", " short, long ,,")
    assert common.env_names("MINERVA_ASV_SCENARIOS", ("medium",)) == ("short", "long")
    monkeypatch.setenv("MINERVA_ASV_SCENARIOS", "")
    assert common.env_names("MINERVA_ASV_SCENARIOS", ("medium",)) == ("medium",)
    monkeypatch.setenv("MINERVA_ASV_RUNS", "12")
    assert common.env_positive_int("MINERVA_ASV_RUNS", 8, 100) == 12
    for bad in ("0", "-3", "five", "101", "99999999999999999999"):
        monkeypatch.setenv("MINERVA_ASV_RUNS", bad)
        with pytest.raises(ValueError, match=rf"^MINERVA_ASV_RUNS='{bad}': expected an integer from 1 to 100$"):
            common.env_positive_int("MINERVA_ASV_RUNS", 8, 100)


def test_a_backend_that_cannot_run_here_is_an_asv_skip_naming_the_reason(
    suite: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench_generation, common = suite
    device = absent_device()
    monkeypatch.setattr(common, "DEVICE", device)
    memory = bench_generation.GenerationMemory()
    # asv turns NotImplementedError raised in setup into a skip ("n/a") rather than a failure.
    with pytest.raises(NotImplementedError, match=device):
        memory.setup("smollm2-135m", "llama_cpp", "short")
    memory.teardown("smollm2-135m", "llama_cpp", "short")

    measurement = {
        "outcomes": {
            ("smollm2-135m", "mlx_lm", "short"): {"skip": "backend mlx_lm needs mlx, mlx_lm, which is not installed"},
            ("smollm2-135m", "llama_cpp", "short"): {"error": "RuntimeError: llama_cpp short: run 1 generated 3 of 15"},
        },
        "marker_dir": "unused",
        "runs": 8,
    }
    generation = bench_generation.Generation()
    with pytest.raises(NotImplementedError, match="mlx_lm needs mlx, mlx_lm, which is not installed"):
        generation.setup(measurement, "smollm2-135m", "mlx_lm", "short")
    with pytest.raises(RuntimeError, match="generated 3 of 15") as failed:
        generation.setup(measurement, "smollm2-135m", "llama_cpp", "short")
    assert not isinstance(failed.value, NotImplementedError), "a broken run must fail, not skip"


def test_a_measurement_in_which_no_backend_could_run_fails_instead_of_recording_skips(
    suite: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, common = suite
    monkeypatch.setattr(common, "DEVICE", absent_device())
    monkeypatch.setattr(common, "MODELS", ("smollm2-135m",))
    monkeypatch.setattr(common, "SCENARIOS", ("short",))
    with pytest.raises(RuntimeError, match=rf"^no backend can run smollm2-135m here: .*{absent_device()}"):
        common.measure_all(tmp_path)


def asv_parses(payload: object) -> tuple[list[float] | None, int | None]:
    """``(samples, number)`` as asv's runner reads a benchmark's JSON result (asv/runner.py)."""
    data = json.loads(json.dumps(payload))
    if isinstance(data, dict) and "samples" in data and "number" in data:
        return data["samples"], data["number"]
    return None, None


def test_cached_samples_are_reported_once_and_a_second_round_measures_afresh(
    suite: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    pytest.importorskip("llama_cpp")
    bench_generation, _ = suite
    key = ("smollm2-135m", "llama_cpp", "short")
    cached = {"ttft_ms": [900.0, 901.0, 902.0], "tpt_ms": [90.0, 91.0, 92.0], "prefill_tps": [], "decode_tps": []}
    measurement = {"outcomes": {key: {"figures": cached}}, "marker_dir": str(tmp_path), "runs": 2}
    generation = bench_generation.Generation()
    generation.setup(measurement, *key)

    first = generation.track_ttft_ms(measurement, *key)
    assert asv_parses(first) == (cached["ttft_ms"], 1)
    # The same setup_cache again: asv is running a second round without interleaving.
    samples, number = asv_parses(generation.track_ttft_ms(measurement, *key))
    assert number == 1 and samples is not None and len(samples) == 2
    assert all(0 < s < 900.0 for s in samples), "the fresh samples are a real 20-token prefill, not the cache"
    assert asv_parses(generation.track_tpot_ms(measurement, *key)) == (cached["tpt_ms"], 1)


def git(cwd: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=minerva", "-c", "user.email=minerva@example.invalid", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def write_asv_results(results_dir: Path, commit: str, values: dict[str, object]) -> None:
    """Record ``values`` (a track's return value per benchmark) as asv's runner would, with samples."""
    from asv.results import Results
    from asv.runner import BenchmarkResult

    results = Results({"machine": "demo", "python": "3.11"}, {}, commit, 0, "3.11", "demo-env", {})
    for name, value in values.items():
        samples, number = asv_parses(value)
        result = True if samples is not None else value
        recorded = BenchmarkResult([result], [samples], [number], errcode=0, stderr="", profile=None)
        results.add_result({"name": name, "version": "1", "params": []}, recorded, record_samples=True)
    results.save(str(results_dir))


def compare_rows(output: str) -> dict[str, tuple[str, str]]:
    """``{benchmark: (change mark, ratio)}`` from ``asv compare``'s table."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4].startswith("demo."):
            rows[cells[4]] = (cells[0], cells[3])
    return rows


def test_asv_compare_calls_a_change_significant_only_when_the_samples_separate(
    suite: tuple[ModuleType, ModuleType], tmp_path: Path
) -> None:
    """The same 1.2x change of the median: flagged with tight samples, "~" with overlapping ones.

    The samples are written by hand because this checks asv's statistics on the form the
    suite returns; the ``asv``-marked tests below do the same with real runs.
    """
    _, common = suite
    git(tmp_path, "init", "--quiet", "-b", "main")
    hashes = []
    for n in range(2):
        (tmp_path / "file.txt").write_text(str(n))
        git(tmp_path, "add", "file.txt")
        git(tmp_path, "commit", "--quiet", "-m", f"commit {n}")
        hashes.append(git(tmp_path, "rev-parse", "HEAD"))
    (tmp_path / "asv.conf.json").write_text(
        json.dumps({"version": 1, "project": "demo", "repo": ".", "results_dir": "results"})
    )
    results_dir = tmp_path / "results"
    (results_dir / "demo").mkdir(parents=True)
    (results_dir / "demo" / "machine.json").write_text(json.dumps({"machine": "demo", "version": 1}))
    names = ["demo.Demo.track_steady", "demo.Demo.track_noisy", "demo.Demo.track_plain"]
    benchmarks = {n: {"name": n, "type": "track", "unit": "ms", "params": [], "version": "1"} for n in names}
    (results_dir / "benchmarks.json").write_text(json.dumps({**benchmarks, "version": 2}))

    steady = [10.0, 10.1, 9.9, 10.05, 9.95, 10.02, 9.98, 10.0]
    noisy = [4.0, 7.0, 9.0, 10.0, 10.0, 13.0, 16.0, 25.0]

    def returned(samples: list[float]) -> object:
        figures = {f: samples for f in common.FIGURES}
        marker_dir = tempfile.mkdtemp(dir=tmp_path)
        measurement = {"outcomes": {("m", "b", "s"): {"figures": figures}}, "marker_dir": marker_dir, "runs": 8}
        return common.Measured(measurement, "m", "b", "s").samples("ttft_ms")

    for commit, scale in zip(hashes, (1.0, 1.2), strict=True):
        write_asv_results(
            results_dir,
            commit,
            {
                names[0]: returned([x * scale for x in steady]),
                names[1]: returned([x * scale for x in noisy]),
                names[2]: 10.0 * scale,
            },
        )
    done = subprocess.run(
        [*ASV, "compare", hashes[0], hashes[1], "--machine", "demo", "--config", str(tmp_path / "asv.conf.json")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert compare_rows(done.stdout) == {
        "demo.Demo.track_steady": ("+", "1.20"),
        "demo.Demo.track_noisy": ("", "~1.20"),
        "demo.Demo.track_plain": ("+", "1.20"),
    }


FAKE_ASV = """#!/usr/bin/env bash
# Stands in for the asv command line: prints the canned output and exits with the canned status,
# the numerics run's own (FAKE_ASV_NUMERICS_*) when it is asked for the numerics benchmarks.
[ "$1" = machine ] && exit 0
echo "$*" >> "$FAKE_ASV_ARGS"
case "$*" in
  *bench_numerics*) printf '%b' "$FAKE_ASV_NUMERICS_OUTPUT"; exit "$FAKE_ASV_NUMERICS_STATUS" ;;
esac
printf '%b' "$FAKE_ASV_OUTPUT"
exit "$FAKE_ASV_STATUS"
"""
QUIET = "BENCHMARKS NOT SIGNIFICANTLY CHANGED.\n"
WORSE = "PERFORMANCE DECREASED.\n"


def fake_asv(tmp: Path, output: str, status: int, numerics_output: str, numerics_status: int) -> dict[str, str]:
    """The environment that makes ``tools/asv_gate.sh`` call :data:`FAKE_ASV` with these canned answers."""
    fake = tmp / "asv"
    fake.write_text(FAKE_ASV)
    fake.chmod(0o755)
    return {
        **os.environ,
        "HOME": str(tmp),
        "ASV": str(fake),
        "FAKE_ASV_ARGS": str(tmp / "args"),
        "FAKE_ASV_OUTPUT": output,
        "FAKE_ASV_STATUS": str(status),
        "FAKE_ASV_NUMERICS_OUTPUT": numerics_output,
        "FAKE_ASV_NUMERICS_STATUS": str(numerics_status),
    }


@pytest.mark.parametrize(
    ("asv_output", "asv_status", "numerics_output", "numerics_status", "gate_status", "gate_says"),
    [
        ("| + | 12.0 | 140.0 | 11.67 | track_tpot_ms |\nPERFORMANCE DECREASED.\n", 1, QUIET, 0, 1, ""),
        (QUIET, 0, QUIET, 0, 0, ""),
        ("SOME BENCHMARKS HAVE CHANGED SIGNIFICANTLY.\nPERFORMANCE INCREASED.\n", 0, QUIET, 0, 0, ""),
        ("Unknown commit nosuch\n", 1, QUIET, 0, 3, "asv continuous (timing) failed (exit 1) before it could compare"),
        (
            "[50%] ··· Setting up bench_generation:32      failed\nBENCHMARKS NOT SIGNIFICANTLY CHANGED.\n",
            0,
            QUIET,
            0,
            3,
            "some timing benchmarks failed without HEAD newly failing them",
        ),
        (QUIET, 0, "| + | 0.0236 | 0.0270 | 1.14 | bench_numerics.Numerics.track_kl_max |\n" + WORSE, 1, 1, ""),
        (QUIET, 0, "| + | 0 | 1e-06 | n/a | bench_numerics.Numerics.track_kl_mean |\n" + WORSE, 1, 1, ""),
        (QUIET, 0, "Failure creating environment\n", 1, 3, "asv continuous (numerics) failed (exit 1)"),
        ("| + | 12.0 | 140.0 | 11.67 | track_tpot_ms |\nPERFORMANCE DECREASED.\n", 1, "oops\n", 1, 1, ""),
    ],
    ids=[
        "regression",
        "quiet",
        "faster",
        "asv-error",
        "failed-on-both",
        "numerics-worse",
        "numerics-from-zero",
        "numerics-asv-error",
        "slower-wins-over-error",
    ],
)
def test_the_gate_script_tells_a_regression_from_an_asv_failure(
    tmp_path: Path,
    asv_output: str,
    asv_status: int,
    numerics_output: str,
    numerics_status: int,
    gate_status: int,
    gate_says: str,
) -> None:
    env = fake_asv(tmp_path, asv_output, asv_status, numerics_output, numerics_status)
    env.pop("MINERVA_ASV_NUMERICS", None)
    done = subprocess.run(
        [str(REPO / "tools" / "asv_gate.sh"), "base", "head"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == gate_status, done.stdout + done.stderr
    assert gate_says in done.stderr
    timing, numerics = (line.split() for line in (tmp_path / "args").read_text().splitlines())
    assert timing[0] == "continuous" and timing[-2:] == ["base", "head"]
    assert "--interleave-rounds" in timing and "rounds=6" in timing
    assert timing[timing.index("--bench") + 1] == "track_(ttft|tpot)(_cpu)?_ms|peakmem_"
    # The deterministic numerics: one round per commit, their own factor.
    assert numerics[0] == "continuous" and numerics[-2:] == ["base", "head"]
    assert numerics[numerics.index("--bench") + 1] == "^bench_numerics\\."
    assert "rounds=1" in numerics and numerics[numerics.index("--factor") + 1] == "1.05"


def test_the_gate_script_leaves_the_numerics_out_when_asked(tmp_path: Path) -> None:
    env = {**fake_asv(tmp_path, QUIET, 0, "", 1), "MINERVA_ASV_NUMERICS": "0"}
    done = subprocess.run([str(REPO / "tools" / "asv_gate.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len((tmp_path / "args").read_text().splitlines()) == 1


def test_the_gate_script_rejects_extra_arguments() -> None:
    done = subprocess.run([str(REPO / "tools" / "asv_gate.sh"), "a", "b", "c"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == "usage: tools/asv_gate.sh [BASE [HEAD]]\n"


SLOWDOWN_FILE = "pytest_minerva/backends/llama_cpp.py"
#: Decode without the KV cache: every new token re-runs the whole context from position 0.
SLOWDOWN = (
    "            self._decode([token], pos, all_logits=False)\n",
    "            prompt.append(token)\n"
    "            llama_cpp.llama_memory_clear(self._memory, False)\n"
    "            self._decode(prompt, 0, all_logits=False)\n",
)
GATED_TPOT = "bench_generation.Generation.track_tpot_ms('smollm2-135m', 'llama_cpp', 'short')"


@dataclass
class GateRun:
    base: str
    head: str
    done: subprocess.CompletedProcess[str]
    seconds: float


@dataclass
class GateRepo:
    path: Path
    env: dict[str, str]
    commits: dict[str, str]
    runs: dict[str, GateRun] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=self.path, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def gate(self, base: str, head: str) -> GateRun:
        started = time.monotonic()
        done = self.run("tools/asv_gate.sh", self.commits[base], self.commits[head])
        return GateRun(base, head, done, time.monotonic() - started)


def pip_cache_dir() -> str:
    return subprocess.run(
        [sys.executable, "-m", "pip", "cache", "dir"], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def gate_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GateRepo]:
    """A clone of the last commit plus the suite: base, a no-op commit, then a KV-cache-less decode."""
    root = tmp_path_factory.mktemp("asv-gate")
    path = root / "repo"
    clone_with_suite(path, SUITE_FILES)
    commits = {}
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "--allow-empty", "-m", "base: the asv suite")
    commits["base"] = git(path, "rev-parse", "HEAD")
    readme = path / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\nA sentence that changes nothing.\n", encoding="utf-8")
    git(path, "commit", "--quiet", "-am", "noop: README only")
    commits["noop"] = git(path, "rev-parse", "HEAD")
    source = (path / SLOWDOWN_FILE).read_text(encoding="utf-8")
    assert source.count(SLOWDOWN[0]) == 1, f"the slowdown patch no longer applies to {SLOWDOWN_FILE}: update SLOWDOWN"
    (path / SLOWDOWN_FILE).write_text(source.replace(*SLOWDOWN), encoding="utf-8")
    git(path, "commit", "--quiet", "-am", "slow: decode re-runs the whole context instead of using the KV cache")
    commits["slow"] = git(path, "rev-parse", "HEAD")

    env = {k: v for k, v in os.environ.items() if not k.startswith("MINERVA_ASV_")}
    env.update(
        HOME=str(root / "home"),
        PIP_CACHE_DIR=pip_cache_dir(),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        ASV=" ".join(ASV),
        MINERVA_ASV_BACKENDS="llama_cpp",
        MINERVA_ASV_SCENARIOS="short",
        MINERVA_ASV_RUNS="2",
        MINERVA_ASV_ROUNDS="6",
    )
    (root / "home").mkdir()
    repo = GateRepo(path, env, commits)
    repo.runs["noop"] = repo.gate("base", "noop")
    repo.runs["slow"] = repo.gate("noop", "slow")
    yield repo
    for name, run in repo.runs.items():
        print(f"asv gate {run.base}..{run.head} ({name}): exit {run.done.returncode} in {run.seconds:.0f} s")


def gate_output(run: GateRun) -> str:
    return f"exit {run.done.returncode}\n{run.done.stdout}\n{run.done.stderr}"


@pytest.mark.asv
def test_asv_continuous_stays_quiet_on_a_commit_that_changes_nothing(gate_repo: GateRepo) -> None:
    run = gate_repo.runs["noop"]
    assert run.done.returncode == 0, gate_output(run)
    assert "BENCHMARKS NOT SIGNIFICANTLY CHANGED." in run.done.stdout, gate_output(run)
    assert "Setting up bench_generation" in run.done.stdout and "failed" not in run.done.stdout, gate_output(run)


@pytest.mark.asv
def test_asv_continuous_flags_a_commit_that_disables_the_kv_cache(gate_repo: GateRepo) -> None:
    run = gate_repo.runs["slow"]
    assert run.done.returncode == 1, gate_output(run)
    assert "PERFORMANCE DECREASED." in run.done.stdout, gate_output(run)
    flagged = [line for line in run.done.stdout.splitlines() if GATED_TPOT in line]
    assert flagged and flagged[0].split("|")[1].strip() == "+", gate_output(run)


@pytest.mark.asv
def test_asv_compare_reports_the_real_slowdown_as_significant_from_recorded_samples(gate_repo: GateRepo) -> None:
    done = gate_repo.run(*ASV, "compare", gate_repo.commits["noop"], gate_repo.commits["slow"], "--only-changed")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if GATED_TPOT in line)
    mark, _, _, ratio = (cell.strip() for cell in row.strip().strip("|").split("|")[:4])
    assert mark == "+" and not ratio.startswith("~") and float(ratio) > 2, row

    results = next((gate_repo.path / ".asv" / "results").glob(f"*/{gate_repo.commits['slow'][:8]}-*.json"))
    data = json.loads(results.read_text())
    columns = data["result_columns"]
    tpot = dict(zip(columns, data["results"]["bench_generation.Generation.track_tpot_ms"], strict=False))
    samples = tpot["samples"][0]
    # Six interleaved rounds of two timed runs each, every one a real TpT in milliseconds.
    assert len(samples) == 12 and all(isinstance(s, float) and s > 0 and math.isfinite(s) for s in samples)


@pytest.mark.asv
def test_asv_publish_builds_a_site_from_the_three_commits(gate_repo: GateRepo) -> None:
    done = gate_repo.run(*ASV, "publish")
    assert done.returncode == 0, done.stdout + done.stderr
    html = gate_repo.path / ".asv" / "html"
    assert (html / "index.html").is_file()
    index = json.loads((html / "index.json").read_text())
    assert set(gate_repo.commits.values()) <= set(index["revision_to_hash"].values())
    assert "bench_generation.Generation.track_tpot_ms" in index["benchmarks"]
