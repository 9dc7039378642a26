"""The plugin takes no name from a project that does not use it.

pytest-minerva loads into every pytest run of the environment it is installed in. Each test
here is a small project that owns a name the plugin also uses (a marker, a fixture, an
option) and checks that the project gets exactly the behaviour it gets with
``-p no:minerva``, and, where both are used in one run, that ours stays reachable.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def outcomes(pytester: pytest.Pytester, *args: str) -> tuple[dict[str, int], dict[str, int]]:
    """(with the plugin, without it): the outcome counts of one run each."""
    with_plugin = pytester.runpytest(*args).parseoutcomes()
    without = pytester.runpytest("-p", "no:minerva", *args).parseoutcomes()
    return with_plugin, without


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("MINERVA_HIDE_CUDA", "1")  # a machine without a GPU
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return pytester


def test_a_projects_fuzz_asv_and_cuda_marked_tests_run_as_without_the_plugin(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest

        @pytest.mark.fuzz
        def test_fuzz():
            pass

        @pytest.mark.asv
        def test_asv():
            pass

        @pytest.mark.cuda
        def test_cuda():
            pass

        @pytest.mark.slow
        def test_slow():
            pass
        """
    )
    with_plugin, without = outcomes(project, "-W", "ignore::pytest.PytestUnknownMarkWarning")
    assert with_plugin == without == {"passed": 4}


@pytest.mark.parametrize("mark", ["slow", "cuda", "gguf", "llama_cpp"])
def test_strict_markers_still_reject_a_projects_unregistered_marker(project: pytest.Pytester, mark: str) -> None:
    project.makepyfile(f"import pytest\n\n@pytest.mark.{mark}\ndef test_marked():\n    pass\n")
    # in a subprocess: pytest remembers registered marker names per process, so an inline run
    # would see this repository's own `slow`
    result = project.runpytest_subprocess("--strict-markers")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error, as without the plugin
    result.stdout.fnmatch_lines([f"*'{mark}' not found in `markers` configuration option*"])
    assert project.runpytest_subprocess("--strict-markers", "-p", "no:minerva").ret == result.ret


def test_a_projects_parametrized_backend_fixture_is_its_own(project: pytest.Pytester) -> None:
    project.makeconftest(
        """
        import pytest

        @pytest.fixture(params=["sqlite", "postgres"])
        def backend(request):
            return request.param
        """
    )
    project.makepyfile("def test_store(backend):\n    assert backend in ('sqlite', 'postgres')\n")
    with_plugin, without = outcomes(project)
    assert with_plugin == without == {"passed": 2}


def test_a_projects_plain_backend_fixture_is_not_multiplied_by_the_matrix(project: pytest.Pytester) -> None:
    project.makeconftest("import pytest\n\n@pytest.fixture\ndef backend():\n    return 'memory'\n")
    project.makepyfile("def test_store(backend):\n    assert backend == 'memory'\n")
    result = project.runpytest("--collect-only", "-q")
    assert [line for line in result.stdout.lines if "::" in line] == [
        "test_a_projects_plain_backend_fixture_is_not_multiplied_by_the_matrix.py::test_store"
    ]
    with_plugin, without = outcomes(project)
    assert with_plugin == without == {"passed": 1}


@pytest.mark.parametrize("option", ["--device", "--model", "--backend"])
def test_a_conftest_option_with_our_short_name_wins_and_ours_stays_reachable(
    project: pytest.Pytester, option: str
) -> None:
    dest = option.lstrip("-")
    project.makeconftest(
        f"""
        import pytest

        def pytest_addoption(parser):
            parser.addoption("{option}", default="theirs", help="the project's own option")

        @pytest.fixture
        def chosen(request):
            return request.config.getoption("{dest}")
        """
    )
    project.makepyfile("def test_option(chosen):\n    assert chosen == 'mine'\n")
    result = project.runpytest(option, "mine")
    result.assert_outcomes(passed=1)
    assert project.runpytest("-p", "no:minerva", option, "mine").parseoutcomes() == {"passed": 1}
    # ours under its long name, with a one-line note in the header once the plugin is used
    project.makepyfile(test_ours="def test_ours(minerva_session):\n    assert minerva_session.models\n")
    long_value = {"--device": "cpu", "--model": "smollm2-135m", "--backend": "llama_cpp"}[option]
    ours = project.runpytest(f"--minerva-{dest}", long_value, option, "mine")
    ours.assert_outcomes(passed=2)
    ours.stdout.fnmatch_lines(
        [f"minerva: {option} is defined by your conftest or another plugin; ours is --minerva-{dest}"]
    )


def test_an_unrelated_run_stays_quiet_and_dormant(project: pytest.Pytester) -> None:
    project.makepyfile("def test_plain():\n    pass\n")
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if line.startswith("minerva:")]
    # no marker names taken, no session built: only the plugin's own namespace marker is registered
    markers = project.runpytest("--markers").stdout.str()
    assert "@pytest.mark.minerva(" in markers or "@pytest.mark.minerva:" in markers
    for name in ("gguf", "cuda", "slow", "llama_cpp", "fuzz"):
        assert f"@pytest.mark.{name}:" not in markers
