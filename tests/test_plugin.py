"""The plugin's behaviour end to end, through pytester: markers, options, ids, skips, header."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_minerva.models.catalog import fixtures_dir

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def literal(pattern: str) -> str:
    """Escape '[' for fnmatch, which reads it as a character class."""
    return pattern.replace("[", "[[]")


BACKEND_TEST = """
def test_uses_backend(backend):
    pass
"""


@pytest.fixture
def isolated(pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A pytester with no local models, an empty Hugging Face cache and no CUDA."""
    monkeypatch.delenv("MINERVA_MODEL_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytester


def test_help_section_is_pinned(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    result = pytester.runpytest("--help")
    lines = result.stdout.lines
    start = lines.index("pytest-minerva: LLM backend correctness and speed:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" "))
    section = "\n".join(lines[start:end]).rstrip() + "\n"
    golden = fixtures_dir() / "golden" / "help.txt"
    assert section == golden.read_text(encoding="utf-8"), "update fixtures/golden/help.txt if this change is intended"


def test_markers_are_registered_once_the_plugin_is_used(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", "--model", "smollm2-135m")
    for name in (
        "minerva",
        "gguf",
        "safetensors",
        "mlx",
        "llama_cpp",
        "transformers",
        "mlx_lm",
        "cpu",
        "cuda",
        "metal",
    ):
        result.stdout.fnmatch_lines([f"@pytest.mark.{name}:*"])
    assert "@pytest.mark.slow:" not in result.stdout.str()  # this repository's own marker, not the plugin's


def test_ids_read_model_format_backend_device(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--collect-only", "-q", "--model", "smollm2-135m", "--device", "cpu")
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if "::test_uses_backend[" in line]
    assert ids == [
        "smollm2-135m-gguf-llama_cpp-cpu",
        "smollm2-135m-gguf-transformers-cpu",
        "smollm2-135m-safetensors-transformers-cpu",
        "smollm2-135m-mlx-mlx_lm-cpu",
    ]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("gguf", ["smollm2-135m-gguf-llama_cpp-cpu", "smollm2-135m-gguf-transformers-cpu"]),
        ("safetensors", ["smollm2-135m-safetensors-transformers-cpu"]),
        ("mlx", ["smollm2-135m-mlx-mlx_lm-cpu"]),
        ("llama_cpp", ["smollm2-135m-gguf-llama_cpp-cpu"]),
        ("gguf and transformers", ["smollm2-135m-gguf-transformers-cpu"]),
    ],
)
def test_marker_expressions_select_exactly_their_cases(
    isolated: pytest.Pytester, expression: str, expected: list[str]
) -> None:
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--collect-only", "-q", "--model", "smollm2-135m", "-m", expression)
    collected = sorted(
        line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if "::test_uses_backend[" in line
    )
    assert collected == sorted(expected)


def test_quantizations_join_the_format_in_ids(isolated: pytest.Pytester) -> None:
    isolated.makepyfile("def test_q(gguf_model):\n    pass\n")
    result = isolated.runpytest("--collect-only", "-q", "--model", "tiny-random-llama")
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in result.stdout.lines if "::test_q[" in line)
    assert ids == [f"tiny-random-llama-gguf-{q}" for q in ("f16", "f32", "q4_0", "q4_1", "q8_0")]


def test_absent_model_skips_every_case_with_instructions(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--model", "tinyllama", "-m", "gguf", "-rs")
    assert result.ret == 0
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED *tinyllama gguf Q4_K_M not found; looked in $MINERVA_MODEL_DIR (not set)*"
            "minerva models fetch tinyllama --format gguf --quant Q4_K_M*",
        ]
    )


def test_absent_device_skips_with_the_probe_result(isolated: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINERVA_HIDE_CUDA", "1")
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--model", "smollm2-135m", "--device", "cuda", "-m", "llama_cpp", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1] test_absent_device*: cuda marker: requires a CUDA device; none found*"])


def test_hardware_marker_skips_only_the_tests_the_plugin_serves(
    isolated: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MINERVA_HIDE_CUDA", "1")
    isolated.makepyfile(
        "import pytest\n@pytest.mark.cuda\ndef test_users_own_gpu_test():\n    pass\n"
        "@pytest.mark.cuda\ndef test_on_the_plugins_session(minerva_session):\n"
        "    raise AssertionError('must not run')\n"
    )
    result = isolated.runpytest("-rs", "--model", "smollm2-135m")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED *cuda marker: requires a CUDA device; none found*"])


def test_unknown_model_is_a_usage_error(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--model", "gpt-9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown model 'gpt-9': not a path and not in the catalog (*smollm2-135m*)*"])


def test_bad_option_values_are_rejected_by_their_validator(isolated: pytest.Pytester) -> None:
    result = isolated.runpytest("--device", "tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*argument --device: unknown device 'tpu'; choose from auto, cpu, cuda, metal*"])
    result = isolated.runpytest("--minerva-threads", "0")
    result.stderr.fnmatch_lines(["*argument --minerva-threads: '0' must be at least 1*"])


def test_ini_settings_configure_the_matrix(isolated: pytest.Pytester) -> None:
    isolated.makeini("[pytest]\nminerva_models = smollm2-135m\nminerva_backends = llama_cpp\n")
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([literal("*test_uses_backend[smollm2-135m-gguf-llama_cpp-cpu]")])
    assert "transformers" not in result.stdout.str()


def test_command_line_overrides_ini(isolated: pytest.Pytester) -> None:
    isolated.makeini("[pytest]\nminerva_models = smollm2-135m\n")
    isolated.makepyfile(BACKEND_TEST)
    result = isolated.runpytest("--collect-only", "-q", "--model", "tinyllama", "--backend", "llama_cpp")
    result.stdout.fnmatch_lines([literal("*test_uses_backend[tinyllama-gguf-q4_k_m-llama_cpp-cpu]")])
    assert "smollm2" not in result.stdout.str()


def test_header_shows_hardware_backends_and_models(isolated: pytest.Pytester) -> None:
    isolated.makepyfile("def test_nothing():\n    pass\n")
    result = isolated.runpytest("--model", "smollm2-135m")
    result.stdout.fnmatch_lines(
        [
            "minerva: hardware: * logical cores, * RAM*",
            "minerva: models: smollm2-135m; cache: *",
            "minerva: backends: llama_cpp (llama-cpp-python *; cpu); transformers (*); mlx_lm (*)",
        ]
    )


def test_minerva_marker_restricts_the_matrix(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(
        "import pytest\n@pytest.mark.minerva(backends=['llama_cpp'])\ndef test_one(backend):\n    pass\n"
    )
    result = isolated.runpytest("--collect-only", "-q", "--model", "smollm2-135m")
    result.stdout.fnmatch_lines([literal("*test_one[smollm2-135m-gguf-llama_cpp-cpu]"), "1 test collected*"])


def test_empty_matrix_skips_with_a_reason(isolated: pytest.Pytester) -> None:
    isolated.makepyfile("import pytest\n@pytest.mark.minerva(formats=['mlx'])\ndef test_one(backend):\n    pass\n")
    result = isolated.runpytest("--model", "smollm2-135m", "--backend", "llama_cpp", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [literal("SKIPPED *no backend to run for models [smollm2-135m] and backends [llama_cpp]*")]
    )


def test_importing_the_plugin_imports_no_engine() -> None:
    code = (
        "import sys, pytest_minerva.plugin, pytest_minerva.fixtures, pytest_minerva.session;"
        "heavy = [m for m in ('torch', 'mlx', 'llama_cpp', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_plugin_is_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    found = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert found.get("minerva") == "pytest_minerva.plugin"
    assert Path(fixtures_dir() / "models.toml").is_file()


def test_a_served_backend_is_opt_in(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(BACKEND_TEST)
    default = isolated.runpytest("--collect-only", "-q", "--model", "smollm2-135m", "--device", "cpu")
    assert not [line for line in default.stdout.lines if "openai_http" in line]
    named = isolated.runpytest(
        "--collect-only", "-q", "--model", "smollm2-135m", "--device", "cpu", "--backend", "openai_http"
    )
    named.stdout.fnmatch_lines([literal("*::test_uses_backend[smollm2-135m-gguf-openai_http-cpu]")])


def test_a_backend_without_logits_skips_the_test_with_its_reason(isolated: pytest.Pytester) -> None:
    isolated.makepyfile(
        """
        from pytest_minerva.errors import LogitsUnavailable

        def test_needs_logits():
            raise LogitsUnavailable("openai_http: a server returns only the top-k log-probabilities")

        def test_other_errors_still_fail():
            raise ValueError("not a skip")
        """
    )
    result = isolated.runpytest("-rs")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*SKIPPED*openai_http: a server returns only the top-k log-probabilities*"])
