"""``minerva bench`` end to end on the seeded tiny-random-llama GGUF with llama.cpp."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from command_line import Ran, run_cli

from pytest_minerva.models.catalog import fixtures_dir
from pytest_minerva.storage import results
from pytest_minerva.timing import report

TABLE_HEADER = (
    "| Scenario | Prompt | TTFT ms | TpT ms | ITL p90/p99 ms | Throughput t/s | Prefill t/s | Decode t/s "
    "| Generated | Runs |"
)


@pytest.fixture(scope="module")
def bench_run(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Ran, Path, Path]:
    out_dir = tmp_path_factory.mktemp("bench")
    json_path, csv_path = out_dir / "r.json", out_dir / "r.csv"
    ran = run_cli(
        "bench",
        "--model",
        str(tiny_gguf),
        "--backend",
        "llama_cpp",
        "--device",
        "cpu",
        "--device",
        "cuda",
        "--scenario",
        "short",
        "--scenario",
        "code",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--json",
        str(json_path),
        "--csv",
        str(csv_path),
    )
    return ran, json_path, csv_path


def test_bench_prints_the_table_for_each_scenario(bench_run: tuple[Ran, Path, Path]) -> None:
    ran, _, _ = bench_run
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert any(
        line.startswith("### llama_cpp ") and ": tiny-random-llama-f32 gguf F32 on cpu" in line for line in lines
    )
    assert TABLE_HEADER in lines
    rows = [line for line in lines if line.startswith(("| short |", "| code |"))]
    assert len(rows) == 2
    assert rows[0].startswith("| short | 20 |")
    assert rows[0].endswith("| 15 | 2 |")
    assert rows[1].startswith("| code | 150 |")
    assert rows[1].endswith("| 112 | 2 |")
    assert any(line.startswith("Roofline: ") and line.endswith("% of it.") for line in lines)
    assert any(line.startswith("llama.cpp fidelity over 4 timed runs: decode ") for line in lines)
    assert any(line.startswith("KV cache: 512 B/token computed from GGUF metadata") for line in lines)


def test_unavailable_backends_are_listed_with_the_reason(bench_run: tuple[Ran, Path, Path]) -> None:
    ran, _, _ = bench_run
    lines = ran.out.splitlines()
    assert "Not run:" in lines
    listed = lines[lines.index("Not run:") + 1]
    assert listed.startswith("- tiny-random-llama-f32-gguf-llama_cpp-cuda: requires a CUDA device; none found")
    assert "Traceback" not in ran.out + ran.err


def test_no_progress_bar_when_stdout_is_not_a_terminal(bench_run: tuple[Ran, Path, Path]) -> None:
    ran, _, _ = bench_run
    assert "run/s" not in ran.err
    assert "%|" not in ran.err


def test_json_validates_and_prints_the_same_tables(bench_run: tuple[Ran, Path, Path]) -> None:
    ran, json_path, _ = bench_run
    document = results.load(json_path)
    assert [b["scenario"] for b in document["benchmarks"]] == ["short", "code"]
    assert all(len(b["runs"]) == 2 and b["warmup"] == 1 for b in document["benchmarks"])
    assert document["settings"]["runs"] == 2
    assert document["settings"]["model_context"] == 512
    assert document["bandwidth"]["gb_per_s"] > 0
    assert ran.out.startswith(report.markdown(document))
    short = document["benchmarks"][0]
    ttft = short["stats"]["ttft_ms"]
    cell = f"{report.number(ttft['median'])} [{report.number(ttft['iqr'])}]"
    assert f"| short | 20 | {cell} |" in ran.out


def test_csv_has_a_row_per_run(bench_run: tuple[Ran, Path, Path]) -> None:
    _, json_path, csv_path = bench_run
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert tuple(rows[0]) == results.CSV_COLUMNS
    assert [(r["scenario"], r["run"], r["generated_tokens"]) for r in rows] == [
        ("short", "1", "15"),
        ("short", "2", "15"),
        ("code", "1", "112"),
        ("code", "2", "112"),
    ]
    runs = [run for b in results.load(json_path)["benchmarks"] for run in b["runs"]]
    assert [float(r["tpt_ms"]) for r in rows] == pytest.approx([r["tpt_ms"] for r in runs], abs=1e-4)
    assert {r["device"] for r in rows} == {"cpu"}
    assert {r["quant"] for r in rows} == {"F32"}


def _shape(value: Any) -> Any:
    """Key structure of a document: dicts by key, lists by their first element."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items() if k not in ("info", "metadata")}
    if isinstance(value, list):
        return [_shape(value[0])] if value and isinstance(value[0], dict | list) else []
    return None


def test_document_layout_matches_the_golden_schema(bench_run: tuple[Ran, Path, Path]) -> None:
    _, json_path, _ = bench_run
    fresh = json.loads(json_path.read_text(encoding="utf-8"))
    golden = json.loads((fixtures_dir() / "golden" / "bench_schema_v1.json").read_text(encoding="utf-8"))
    for key in ("backends", "benchmarks"):
        assert _shape(fresh[key]) == _shape(golden[key]), f"{key} changed layout: bump SCHEMA_VERSION"
    assert set(fresh) == set(golden)
    assert _shape(fresh["settings"]) == _shape(golden["settings"])


def test_sweep_is_capped_at_the_model_context(tiny_gguf: Path) -> None:
    ran = run_cli(
        "bench",
        "--model",
        str(tiny_gguf),
        "--backend",
        "llama_cpp",
        "--scenario",
        "short",
        "--sweep",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-kv-probe",
    )
    assert ran.code == 0, ran.err
    assert "Context-length sweep:" in ran.out
    contexts = [line.split("|")[1].strip() for line in ran.out.splitlines() if line.startswith("| ")]
    assert [c for c in contexts if c.isdigit()] == ["32", "64", "128", "256"]  # 512 - 16 generated leaves 496


def test_a_scenario_longer_than_the_context_is_refused(tiny_gguf: Path) -> None:
    ran = run_cli("bench", "--model", str(tiny_gguf), "--backend", "llama_cpp", "--scenario", "sweep-600")
    assert ran.code == 1
    assert ran.err == "minerva: tiny-random-llama-f32: scenarios sweep-600 exceed its context of 512\n"


def test_only_missing_models_exit_1_and_say_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty Hugging Face cache and model directory, so tinyllama is missing even where it was fetched.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("MINERVA_MODEL_DIR", raising=False)
    ran = run_cli("bench", "--model", "tinyllama", "--backend", "llama_cpp", "--format", "gguf")
    assert ran.code == 1
    lines = ran.out.splitlines()
    listed = lines[lines.index("Not run:") + 1 :]
    assert [line.split(":")[0] for line in listed] == [
        "- tinyllama-gguf-q4_k_m-llama_cpp-cpu",
        "- tinyllama-gguf-q4_0-llama_cpp-cpu",
    ]
    assert all("minerva models fetch tinyllama" in line for line in listed)
    assert ran.err.endswith("minerva: bench: no backend could run this model here (see 'Not run' above)\n")
    assert "Traceback" not in ran.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0"], "argument --runs: '0' must be at least 1"),
        (["--warmup", "-1"], "argument --warmup: '-1' must be 0 or more"),
        (["--scenario", "huge"], "argument --scenario: unknown scenario 'huge'"),
        (["--threads", "two"], "argument --threads: 'two' is not an integer"),
    ],
)
def test_bad_options_are_usage_errors(argv: list[str], message: str) -> None:
    ran = run_cli("bench", "--model", "smollm2-135m", *argv)
    assert ran.code == 2
    assert message in ran.err


def test_unknown_backend_is_one_line() -> None:
    ran = run_cli("bench", "--model", "smollm2-135m", "--backend", "nope")
    assert ran.code == 1
    assert ran.err.startswith("minerva: unknown backend 'nope'; registered: llama_cpp, transformers, mlx_lm")


def test_report_shows_a_failed_scenario_as_an_error_row() -> None:
    document = results.load(fixtures_dir() / "golden" / "bench_schema_v1.json")
    document["benchmarks"][0].update(error="run 1 generated 3 of 15 tokens", stats={}, itl_ms=None, breakdown=[])
    text = report.markdown(document)
    assert "| short | 20 | error: run 1 generated 3 of 15 tokens | - | - | - | - | - | - | - |" in text.splitlines()
    assert "| medium | 100 | " in text


@pytest.fixture(scope="module")
def numerics_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ran, dict[str, Any]]:
    """The embedded model timed on llama.cpp and transformers, one short run each: then its numerics."""
    out = tmp_path_factory.mktemp("numerics") / "bench.json"
    argv = ["--model", "smollm2-135m", "--backend", "llama_cpp", "--backend", "transformers"]
    argv += ["--scenario", "short", "--runs", "1", "--warmup", "0", "--no-kv-probe", "--threads", "1"]
    ran = run_cli("bench", *argv, "--json", str(out))
    assert ran.code == 0, ran.err
    return ran, results.load(out)


def test_bench_measures_each_timed_backend_against_its_reference(numerics_run: tuple[Ran, dict[str, Any]]) -> None:
    ran, document = numerics_run
    by_candidate = {n["candidate"]: n for n in document["numerics"]}
    assert set(by_candidate) == {"smollm2-135m-gguf-llama_cpp-cpu", "smollm2-135m-gguf-transformers-cpu"}
    llama = by_candidate["smollm2-135m-gguf-llama_cpp-cpu"]
    assert llama["status"] == "ok" and llama["reference"] == "smollm2-135m-safetensors-transformers-cpu"
    assert llama["profile"] == "same-weights-q4_1" and llama["positions"] > 100
    figures = llama["figures"]
    # llama.cpp quantizes activations to 8 bits: a real, small, nonzero divergence inside the profile.
    assert 0 < figures["kl_mean"] <= figures["kl_max"] <= llama["bounds"]["kl_max"]
    assert llama["bounds"]["top1_agreement"] <= figures["top1_agreement"] <= 1
    assert set(llama["per_prompt"]) == {"short", "medium", "code"}
    # transformers on the GGUF dequantizes to the very numbers of the float32 SafeTensors: exactly 0.
    same = by_candidate["smollm2-135m-gguf-transformers-cpu"]["figures"]
    assert same == {"kl_mean": 0.0, "kl_max": 0.0, "top1_agreement": 1.0, "max_dlogit": 0.0}
    # The markdown report carries the same figures.
    row = next(line for line in ran.out.splitlines() if line.startswith("| smollm2-135m-gguf-llama_cpp-cpu | "))
    assert f"{figures['kl_mean']:.3g} (<= {llama['bounds']['kl_mean']:.3g})" in row
    assert f"{figures['top1_agreement']:.3f}" in row and "same-weights-q4_1" in row


def test_bench_without_numerics_leaves_them_out(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--model", str(tiny_gguf), "--backend", "llama_cpp", "--scenario", "short", "--runs", "1"]
    ran = run_cli("bench", *argv, "--warmup", "0", "--no-kv-probe", "--no-numerics", "--json", str(out))
    assert ran.code == 0, ran.err
    document = results.load(out)
    assert document["numerics"] == [] and document["settings"]["numerics"] is False
    assert "Numerics:" not in ran.out


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"pair_id": "p", "reference": "r", "candidate": "c", "status": "ok", "figures": {}},
            "figures lacks 'kl_mean'",
        ),
        ({"pair_id": "p", "reference": "r", "candidate": "c", "status": "maybe", "figures": {}}, "is not one of"),
        ({"pair_id": "p", "reference": "r", "candidate": "c", "status": "ok"}, "numerics[0] lacks 'figures'"),
    ],
)
def test_a_bad_numerics_entry_is_refused_naming_the_file(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    document = results.load(fixtures_dir() / "golden" / "bench_schema_v1.json")
    document["numerics"] = [entry]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(results.MinervaError, match=str(path).replace(".", r"\.")) as caught:
        results.load(path)
    assert message in str(caught.value)
