"""The regression suite fails, and says why, when a backend does not compute the model.

Four backends broken on purpose (tests/broken_backends.py: wrong weights, a wrong config value,
a shuffled vocabulary, fake logits) run through the real suite on the real SmolLM2 weights,
beside the correct transformers backend. A correct third-party backend registered the same way
passes. These are the checks that prove the suite's checks can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SUITE_TESTS = [
    str(REPO / "pytest_minerva" / "suites" / "test_equivalence.py") + "::test_logits_agree",
    str(REPO / "pytest_minerva" / "suites" / "test_knowledge.py"),
]
BROKEN = {
    # backend: does the knowledge check fail too? (RoPE theta off by 10x still answers " Paris":
    # only the comparison with the reference sees it)
    "wrong_weights": True,
    "wrong_config": False,
    "shuffled_vocab": True,
    "fake_logits": True,
}


@pytest.fixture(autouse=True)
def importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses import ``broken_backends`` (tests/); the suite is ``pytest_minerva.suites``."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(REPO)]))


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One run of the suite with all four broken backends beside the correct transformers one."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)])}
    args = ["-p", "broken_backends", "--model", "smollm2-135m", "--backend", "transformers"]
    for name in BROKEN:
        args += ["--backend", name]
    command = [sys.executable, "-m", "pytest", *SUITE_TESTS, *args, "-k", " or ".join(BROKEN)]
    command += ["-p", "no:cacheprovider", "-rA", "--tb=short"]
    done = subprocess.run(
        command, cwd=tmp_path_factory.mktemp("broken"), env=env, capture_output=True, text=True, timeout=1800
    )
    return done.stdout + done.stderr


def _outcome(output: str, test: str, case_id: str) -> str:
    for line in output.splitlines():
        if line.startswith(("PASSED", "FAILED", "ERROR", "SKIPPED")) and test in line and f"[{case_id}]" in line:
            return line.split()[0]
    raise AssertionError(f"no result line for {test}[{case_id}] in:\n{output[-3000:]}")


@pytest.mark.parametrize("broken", list(BROKEN))
def test_suite_fails_a_broken_backend(broken_run: str, broken: str) -> None:
    pair = f"smollm2-135m-safetensors-transformers-vs-safetensors-{broken}-cpu"
    assert _outcome(broken_run, "test_logits_agree", pair) == "FAILED"
    # The failure names the pair, a violated metric with its bound and the evidence behind it.
    section = broken_run.split(f"test_logits_agree[{pair}] _", 1)[1][:8000]
    assert "bound" in section
    assert "worst position" in section
    knowledge = _outcome(broken_run, "test_model_completes_known_facts", f"smollm2-135m-safetensors-{broken}-cpu")
    assert knowledge == ("FAILED" if BROKEN[broken] else "PASSED")
    if BROKEN[broken]:
        assert f"{broken} does not compute smollm2-135m correctly" in broken_run


def test_a_correct_third_party_backend_passes(pytester: pytest.Pytester) -> None:
    """A backend added from a conftest runs through the same tests and passes when it is right."""
    pytester.makeconftest(
        """
        from pytest_minerva.backends import BackendSpec

        def pytest_minerva_register_backends(registry):
            registry.add(BackendSpec(
                "my_engine", formats=("safetensors",),
                target="pytest_minerva.backends.transformers:TransformersBackend",
                requires=("torch", "transformers"),
            ))
        """
    )
    pytester.makepyfile(
        test_mine="""
        from pytest_minerva.suites.test_equivalence import test_logits_agree
        from pytest_minerva.suites.test_knowledge import test_model_completes_known_facts
        """
    )
    result = pytester.runpytest_subprocess(
        "--model",
        "smollm2-135m",
        "--backend",
        "transformers",
        "--backend",
        "my_engine",
        "-k",
        "my_engine",
        "-p",
        "no:cacheprovider",
        "-rA",
    )
    text = result.stdout.str()
    assert "vs-safetensors-my_engine-cpu" in text
    result.assert_outcomes(passed=2)
