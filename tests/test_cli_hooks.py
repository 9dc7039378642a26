"""The ``minerva`` command sees the hooks pytest sees (issue 16).

A third party writes its hooks module the way the README shows: unmarked
``pytest_minerva_*`` functions, listed under the ``pytest_minerva`` entry-point group. pytest's
plugin manager takes unmarked ``pytest_*`` functions; a plain pluggy manager takes only those
marked ``@pytest.hookimpl``. The relay of :func:`pytest_minerva.hookspecs.hook_relay`, which the
command line, asv and the workers use, must find the same implementations with the same options,
ignore pytest's own hooks, and refuse a misspelt hook in one line.

The package here is built from the README's own snippets (its Python block and its
``pyproject.toml`` entry point), installed as a hand-written ``.dist-info`` on ``PYTHONPATH``;
its backend class runs llama.cpp on the seeded tiny-random-llama GGUF.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path
from typing import Any

import numpy  # noqa: F401  (pytester's runs must not unload numpy: it cannot load twice)
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny-random-llama"
BACKEND = "myengine"
README_SECTION = "## Adding a backend or a model from your own package"

#: The engine's own adapter, which the README's spec names as ``myengine.minerva:MyBackend``:
#: llama.cpp under another name, so every number below is llama.cpp's.
ENGINE_ADAPTER = """
from pytest_minerva.backends.llama_cpp import LlamaCppBackend


class MyBackend(LlamaCppBackend):
    name = "myengine"

    def info(self):
        return {**super().info(), "adapter": "myengine.minerva"}
"""


def readme_snippets() -> tuple[str, str, dict[str, str]]:
    """The README's hooks module (file name, source) and its ``pytest_minerva`` entry points."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.S)
    toml = re.search(r"```toml\n(.*?)```", section, re.S)
    assert python and toml, f"the README's section {README_SECTION!r} lost its Python or TOML example"
    first_line = python.group(1).splitlines()[0]
    assert first_line.startswith("# ") and first_line.endswith(".py"), f"no file name atop the example: {first_line}"
    points = tomllib.loads(toml.group(1))["project"]["entry-points"]["pytest_minerva"]
    return first_line[2:], python.group(1), points


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, str] | None = None) -> None:
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    if entry_points:
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (dist / "entry_points.txt").write_text(f"[pytest_minerva]\n{lines}", encoding="utf-8")


@pytest.fixture(scope="module")
def readme_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's example installed: ``myengine_minerva`` (its entry point) and the engine ``myengine``."""
    pytest.importorskip("llama_cpp", reason="the example backend is llama.cpp through llama-cpp-python")
    site = tmp_path_factory.mktemp("readme-site")
    filename, source, points = readme_snippets()
    assert "@pytest.hookimpl" not in source  # the README's hooks are unmarked, and so must this test's be
    (site / filename).write_text(source, encoding="utf-8")
    write_distribution(site, "myengine-minerva", "0.1", points)
    (site / "myengine").mkdir()
    (site / "myengine" / "__init__.py").write_text("", encoding="utf-8")
    (site / "myengine" / "minerva.py").write_text(ENGINE_ADAPTER, encoding="utf-8")
    write_distribution(site, "myengine", "1.0")
    return site


def subprocess_env(site: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k != "MINERVA_MODEL_DIR" and not k.startswith("MINERVA_ASV")}
    # This process's PYTHONPATH first: a run against another checkout must import that checkout.
    inherited_path = os.environ.get("PYTHONPATH")
    return {
        **inherited,
        "PYTHONPATH": os.pathsep.join(filter(None, [inherited_path, str(site)])),
        "HF_HUB_OFFLINE": "1",
    }


def minerva(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest_minerva.commands", *args]
    return subprocess.run(
        command, env=subprocess_env(site), cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


# -- the README's package, end to end -------------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(readme_site: Path, tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any]:
    out = tmp_path_factory.mktemp("readme-bench")
    args = ["bench", "--model", str(tiny_gguf), "--backend", BACKEND, "--device", "cpu", "--scenario", "short"]
    ran = minerva(readme_site, out, *args, "--runs", "1", "--warmup", "0", "--threads", "1", "--json", "out.json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout, json.loads((out / "out.json").read_text(encoding="utf-8"))


def test_minerva_bench_measures_the_readme_backend(bench_run: tuple[str, Any]) -> None:
    stdout, document = bench_run
    assert f"### {BACKEND} " in stdout, stdout
    [entry] = [b for b in document["backends"] if b["backend"] == BACKEND]
    assert entry["status"] == "ok", entry.get("reason")
    assert entry["info"]["backend"] == BACKEND and entry["info"]["adapter"] == "myengine.minerva"
    assert entry["info"]["engine"] == "llama.cpp"
    [short] = [b for b in document["benchmarks"] if b["backend"] == BACKEND]
    assert short["scenario"] == "short" and short["error"] is None
    [run] = short["runs"]
    assert run["generated_tokens"] == short["generate_tokens"] > 0
    assert run["ttft_ms"] > 0 and run["tpt_ms"] > 0 and run["decode_tps"] > 0
    assert document["environment"]["versions"].get("myengine") == "1.0"


def test_pytest_runs_the_readme_backend(
    readme_site: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same installed module, unchanged, under pytest: ``--backend myengine`` parametrizes the matrix."""
    monkeypatch.setenv("PYTHONPATH", subprocess_env(readme_site)["PYTHONPATH"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MINERVA_MODEL_DIR", raising=False)
    pytester.makepyfile(
        """
        import numpy as np


        def test_logits(backend):
            assert backend.name == "myengine" and backend.info()["adapter"] == "myengine.minerva"
            logits = backend.logits(backend.tokenize("The quick brown fox", add_bos=True))
            assert np.isfinite(logits).all() and float(logits.max() - logits.min()) > 0
        """
    )
    args = ("--model", MODEL, "--backend", BACKEND, "--device", "cpu", "--minerva-threads", "1", "-v", "-k", "f32")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, deselected=4)
    result.stdout.fnmatch_lines([f"*::test_logits[[]{MODEL}-gguf-f32-{BACKEND}-cpu] PASSED*"])


# -- hook_relay, in this process ------------------------------------------------------------------


def install(monkeypatch: pytest.MonkeyPatch, root: Path, modules: dict[str, str]) -> None:
    """Each of ``modules`` (name: source) installed under the ``pytest_minerva`` group, in that order."""
    for index, (name, source) in enumerate(modules.items()):
        site = root / f"site{index}"
        site.mkdir()
        (site / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        write_distribution(site, name.replace("_", "-"), "0.1", {name: name})
        monkeypatch.delitem(sys.modules, name, raising=False)  # and forgotten after the test
        monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()


def relay(monkeypatch: pytest.MonkeyPatch, root: Path, modules: dict[str, str]) -> Any:
    install(monkeypatch, root, modules)
    from pytest_minerva.hookspecs import hook_relay

    return hook_relay()


UNMARKED = """
from pytest_minerva.backends import BackendSpec

def pytest_minerva_register_backends(registry):
    registry.add(BackendSpec("unmarked_engine", formats=("gguf",), target="nowhere:Backend"))
"""


def test_relay_takes_an_unmarked_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_minerva.backends import builtin_registry

    hook = relay(monkeypatch, tmp_path, {"relay_unmarked": UNMARKED})
    registry = builtin_registry()
    hook.pytest_minerva_register_backends(registry=registry)
    assert registry.get("unmarked_engine").target == "nowhere:Backend"
    [impl] = hook.pytest_minerva_register_backends.get_hookimpls()
    assert (impl.plugin_name, impl.tryfirst, impl.wrapper, impl.optionalhook) == ("relay_unmarked", False, False, False)


def test_relay_keeps_the_options_of_a_marked_hook(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Registered first, so pluggy would call it last (it calls the latest first) but for tryfirst.
    first = """
    import pytest

    @pytest.hookimpl(tryfirst=True)
    def pytest_minerva_update_report(config, session, report):
        report["order"].append("tryfirst")
    """
    plain = """
    def pytest_minerva_update_report(config, session, report):
        report["order"].append("unmarked")
    """
    wrapper = """
    import pytest

    @pytest.hookimpl(wrapper=True)
    def pytest_minerva_update_report(config, session, report):
        report["order"].append("wrapper before")
        yield
        report["order"].append("wrapper after")
    """
    hook = relay(monkeypatch, tmp_path, {"relay_first": first, "relay_plain": plain, "relay_wrapper": wrapper})
    report: dict[str, list[str]] = {"order": []}
    hook.pytest_minerva_update_report(config=None, session=None, report=report)
    assert report["order"] == ["wrapper before", "tryfirst", "unmarked", "wrapper after"]


def test_relay_ignores_pytests_own_hooks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A hooks module may also implement pytest's hooks (and hold non-callable names): they are not minerva's."""
    module = """
    import pytest

    CALLED = []
    pytest_minerva_not_a_function = 3

    def pytest_configure(config):
        CALLED.append("pytest_configure")

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(session, config, items):
        CALLED.append("pytest_collection_modifyitems")

    def pytest_minerva_generate_machine_info(config, session):
        return {"relay_probe": "on"}
    """
    hook = relay(monkeypatch, tmp_path, {"relay_mixed": module})
    names = {name for name in vars(hook) if not name.startswith("_")}
    assert names == {
        "pytest_minerva_register_backends",
        "pytest_minerva_register_models",
        "pytest_minerva_make_backend",
        "pytest_minerva_resolve_model",
        "pytest_minerva_generate_machine_info",
        "pytest_minerva_update_machine_info",
        "pytest_minerva_update_report",
    }
    assert hook.pytest_minerva_generate_machine_info(config=None, session=None) == [{"relay_probe": "on"}]
    assert sys.modules["relay_mixed"].CALLED == []


def test_a_misspelt_hook_is_one_line_naming_the_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_minerva.errors import MinervaError

    typo = UNMARKED.replace("pytest_minerva_register_backends", "pytest_minerva_register_backendz")
    with pytest.raises(MinervaError) as raised:
        relay(monkeypatch, tmp_path, {"relay_typo": typo})
    assert str(raised.value) == (
        "pytest_minerva entry point 'relay_typo' (relay_typo): pytest_minerva_register_backendz() is not a "
        "pytest-minerva hook; did you mean pytest_minerva_register_backends?"
    )


def test_a_hook_with_arguments_it_lacks_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pytest_minerva.errors import MinervaError

    module = """
    def pytest_minerva_register_models(catalog, device):
        pass
    """
    with pytest.raises(MinervaError) as raised:
        relay(monkeypatch, tmp_path, {"relay_args": module})
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("pytest_minerva entry point 'relay_args' (relay_args): ")
    assert "pytest_minerva_register_models(catalog, device)" in message and "{'device'}" in message


def test_an_optional_unknown_hook_is_accepted_as_pytest_accepts_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = """
    import pytest

    @pytest.hookimpl(optionalhook=True)
    def pytest_minerva_from_a_later_release(registry):
        pass
    """
    hook = relay(monkeypatch, tmp_path, {"relay_optional": module})
    assert not hook.pytest_minerva_from_a_later_release.has_spec()


def test_minerva_bench_refuses_a_misspelt_hook_in_one_line(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _, source, _ = readme_snippets()
    (site / "myengine_typo.py").write_text(source.replace("register_backends", "register_backend"), encoding="utf-8")
    write_distribution(site, "myengine-typo", "0.1", {"myengine": "myengine_typo"})
    # A misspelt hook stops the command even where it would change nothing (this backend is built in).
    args = ["--backend", "llama_cpp", "--scenario", "short", "--runs", "1", "--warmup", "0", "--no-kv-probe"]
    ran = minerva(site, tmp_path, "bench", "--model", MODEL, *args)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert ran.stderr == (
        "minerva: pytest_minerva entry point 'myengine' (myengine_typo): pytest_minerva_register_backend() is not a "
        "pytest-minerva hook; did you mean pytest_minerva_register_backends?\n"
    )


# -- the relay and pytest's manager agree ---------------------------------------------------------

EVERY_KIND = """
import pytest

def pytest_minerva_register_backends(registry):
    pass

@pytest.hookimpl(tryfirst=True)
def pytest_minerva_register_models(catalog):
    pass

@pytest.hookimpl(trylast=True)
def pytest_minerva_generate_machine_info(config, session):
    pass

@pytest.hookimpl(wrapper=True)
def pytest_minerva_update_report(config, session, report):
    return (yield)

@pytest.hookimpl(hookwrapper=True)
def pytest_minerva_update_machine_info(config, session, machine_info):
    yield

@pytest.hookimpl(specname="pytest_minerva_resolve_model")
def pytest_minerva_find_model(model, spec, resolver):
    pass

@pytest.hookimpl(optionalhook=True)
def pytest_minerva_not_yet_specified():
    pass

pytest_minerva_constant = 3
"""


def registered_hooks(manager: Any) -> dict[str, list[tuple[object, ...]]]:
    """The minerva hooks ``manager`` holds for the plugin named ``every_kind``, with their options."""
    found = {}
    for name in vars(manager.hook):
        if not name.startswith("pytest_minerva_"):
            continue
        impls = [i for i in getattr(manager.hook, name).get_hookimpls() if i.plugin_name == "every_kind"]
        options = ("tryfirst", "trylast", "wrapper", "hookwrapper", "optionalhook")
        found[name] = [(i.function.__name__, *(getattr(i, option) for option in options)) for i in impls]
    return found


def test_the_relay_finds_what_pytests_plugin_manager_finds() -> None:
    from pytest_minerva import hookspecs
    from pytest_minerva.hookspecs import RelayManager

    module = types.ModuleType("every_kind")
    exec(compile(EVERY_KIND, "every_kind.py", "exec"), module.__dict__)
    pytests = pytest.PytestPluginManager()
    ours = RelayManager()
    for manager in (pytests, ours):
        manager.add_hookspecs(hookspecs)
        manager.register(module, "every_kind")
    assert registered_hooks(ours) == registered_hooks(pytests)
    assert registered_hooks(ours)["pytest_minerva_register_backends"] == [
        ("pytest_minerva_register_backends", False, False, False, False, False)
    ]
    assert registered_hooks(ours)["pytest_minerva_resolve_model"][0][0] == "pytest_minerva_find_model"
    assert "pytest_minerva_constant" not in vars(ours.hook)
