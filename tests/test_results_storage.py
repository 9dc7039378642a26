"""The benchmark results format, against the committed golden document.

``fixtures/golden/bench_schema_v1.json`` was written by a real ``minerva bench`` run
(tiny-random-llama F32 GGUF on llama.cpp, plus a CUDA case that could not run); its
figures are that run's measurements. It pins the layout of schema version 1.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_minerva.errors import MinervaError
from pytest_minerva.models.catalog import fixtures_dir
from pytest_minerva.storage import results

GOLDEN = fixtures_dir() / "golden" / "bench_schema_v1.json"
REFERENCE_COLUMNS = (
    "backend",
    "scenario",
    "context_tokens",
    "run",
    "total_ms",
    "ttft_ms",
    "tpt_ms",
    "throughput_tps",
    "generated_tokens",
)


@pytest.fixture
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def _write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def test_golden_document_loads_and_has_the_envelope() -> None:
    document = results.load(GOLDEN)
    assert document["schema_version"] == results.SCHEMA_VERSION == 1
    assert document["datetime"].endswith("+00:00")
    assert {"cpu_model", "logical_cores", "python_version", "platform"} <= set(document["machine_info"])
    assert set(document["commit_info"]) == {"id", "branch", "time", "dirty", "project"}
    assert document["environment"]["versions"]["llama-cpp-python"]
    statuses = {b["case_id"]: b["status"] for b in document["backends"]}
    assert statuses == {
        "tiny-random-llama-f32-gguf-llama_cpp-cpu": "ok",
        "tiny-random-llama-f32-gguf-llama_cpp-cuda": "unavailable",
    }
    assert [b["scenario"] for b in document["benchmarks"]] == ["short", "medium"]


def test_golden_runs_are_consistent_with_their_definitions(golden: dict[str, Any]) -> None:
    for bench in golden["benchmarks"]:
        n = bench["generate_tokens"]
        for run in bench["runs"]:
            assert run["generated_tokens"] == n
            assert run["ttft_ms"] < run["total_ms"]
            assert run["tpt_ms"] == pytest.approx((run["total_ms"] - run["ttft_ms"]) / (n - 1))
            assert run["throughput_tps"] == pytest.approx(n / run["total_ms"] * 1e3)
            assert sum(run["itl_ms"]) == pytest.approx(run["total_ms"] - run["ttft_ms"])
            assert run["engine"]["n_eval"] == n - 1


def test_csv_has_one_row_per_run_with_the_reference_columns(golden: dict[str, Any]) -> None:
    text = results.csv_text(golden)
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ())[: len(REFERENCE_COLUMNS)] == REFERENCE_COLUMNS
    assert {"model", "quant", "device"} <= set(reader.fieldnames or ())
    rows = list(reader)
    runs = [(b, r) for b in golden["benchmarks"] for r in b["runs"]]
    assert len(rows) == len(runs) == 4
    for row, (bench, run) in zip(rows, runs, strict=True):
        assert (row["backend"], row["scenario"], row["model"], row["quant"], row["device"]) == (
            "llama_cpp",
            bench["scenario"],
            "tiny-random-llama-f32",
            "F32",
            "cpu",
        )
        assert int(row["context_tokens"]) == bench["prompt_tokens"]
        assert int(row["run"]) == run["run"]
        assert int(row["generated_tokens"]) == run["generated_tokens"]
        assert float(row["ttft_ms"]) == pytest.approx(run["ttft_ms"], abs=1e-4)
        assert float(row["total_ms"]) == pytest.approx(run["total_ms"], abs=1e-4)
        assert float(row["itl_p99_ms"]) <= max(run["itl_ms"]) + 1e-4


def test_csv_leaves_out_failed_benchmarks(golden: dict[str, Any]) -> None:
    golden["benchmarks"][0]["error"] = "run 1 generated 3 of 15 tokens"
    rows = results.csv_rows(golden)
    assert {row["scenario"] for row in rows} == {"medium"}


def test_write_json_round_trips_atomically(tmp_path: Path, golden: dict[str, Any]) -> None:
    path = results.write_json(tmp_path / "sub" / "out.json", golden)
    assert results.load(path) == golden
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_write_json_refuses_an_invalid_document_and_keeps_the_old_file(tmp_path: Path, golden: dict[str, Any]) -> None:
    path = results.write_json(tmp_path / "out.json", golden)
    before = path.read_bytes()
    broken = copy.deepcopy(golden)
    del broken["benchmarks"][0]["runs"][0]["ttft_ms"]
    with pytest.raises(MinervaError, match=r"out\.json: .*benchmarks\[0\]\.runs\[0\] lacks 'ttft_ms'"):
        results.write_json(path, broken)
    assert path.read_bytes() == before


def test_write_csv(tmp_path: Path, golden: dict[str, Any]) -> None:
    path = results.write_csv(tmp_path / "runs.csv", golden)
    assert path.read_text(encoding="utf-8") == results.csv_text(golden)
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(results.CSV_COLUMNS)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d.update(schema_version=2), "schema_version is 2; this pytest-minerva reads version 1"),
        (lambda d: d.pop("schema_version"), "schema_version is null"),
        (lambda d: d.pop("machine_info"), "document lacks 'machine_info'"),
        (lambda d: d.update(benchmarks={}), "document.benchmarks must be a list"),
        (lambda d: d["backends"][0].update(status="fine"), "backends[0].status 'fine' is not one of"),
        (
            lambda d: d["benchmarks"][1]["runs"][1].update(generated_tokens=74),
            "benchmarks[1].runs[1] generated 74 tokens, not 75",
        ),
        (
            lambda d: d["benchmarks"][0]["runs"][0].update(ttft_ms="fast"),
            "benchmarks[0].runs[0].ttft_ms must be a number",
        ),
        (
            lambda d: d["benchmarks"][0]["stats"]["tpt_ms"].pop("iqr"),
            "benchmarks[0].stats.tpt_ms lacks 'iqr'",
        ),
        (
            lambda d: d["benchmarks"][0]["stats"]["ttft_ms"].update(n=3),
            "benchmarks[0].stats.ttft_ms.n is 3 but there are 2 runs",
        ),
        (lambda d: d["benchmarks"][0].update(runs=[]), "benchmarks[0] has no runs and no error"),
    ],
)
def test_load_names_the_file_and_the_problem(tmp_path: Path, golden: dict[str, Any], edit: Any, problem: str) -> None:
    edit(golden)
    path = _write(tmp_path, golden)
    with pytest.raises(MinervaError) as err:
        results.load(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a valid benchmark results file: ")
    assert problem in message
    assert "\n" not in message


def test_a_failed_benchmark_needs_no_stats(tmp_path: Path, golden: dict[str, Any]) -> None:
    bench = golden["benchmarks"][0]
    bench.update(error="run 1 generated 3 of 15 tokens", stats={}, runs=[{"run": 1, "generated_tokens": 3}])
    assert results.load(_write(tmp_path, golden))["benchmarks"][0]["error"].startswith("run 1")


def test_load_rejects_what_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"schema_version": 1,', encoding="utf-8")
    with pytest.raises(
        MinervaError, match=r"results\.json: not a valid benchmark results file: invalid JSON at line 1"
    ):
        results.load(path)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MinervaError, match="not UTF-8 text"):
        results.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(MinervaError, match="expected a JSON object, got list"):
        results.load(path)
    with pytest.raises(MinervaError, match=r"missing\.json: cannot read benchmark results"):
        results.load(tmp_path / "missing.json")


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_commit_info_reads_head_and_the_dirty_flag(tmp_path: Path) -> None:
    assert results.commit_info(tmp_path) is None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q", "-b", "trunk")
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    git("add", "a.txt")
    git("commit", "-q", "-m", "first")
    info = results.commit_info(tmp_path)
    assert info is not None
    assert info["id"] == git("rev-parse", "HEAD")
    assert info["branch"] == "trunk"
    assert info["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n", encoding="utf-8")
    assert results.commit_info(tmp_path)["dirty"] is True  # type: ignore[index]


def test_make_document_validates_and_records_versions() -> None:
    document = results.make_document(
        settings={"model": "m", "runs": 1, "warmup": 0},
        backends=[],
        benchmarks=[],
        versions={"llama-cpp-python": "0.3.36"},
    )
    assert results.validate(document, "<memory>") is document
    assert document["environment"]["versions"] == {"llama-cpp-python": "0.3.36"}
    assert document["machine_info"]["logical_cores"] >= 1
