"""The structure issue 13 set out, checked by reading the source (``ast``; nothing is imported).

- the import graph of ``pytest_minerva`` has no cycle;
- no module imports another first-party module's private (``_name``) names;
- only ``pytest_minerva/backends/`` compares a backend's name with a built-in backend's name;
- one function, ``session.build_session``, builds sessions;
- every hookspec is called by the package and implemented by ``tests/test_newhooks.py``;
- no module of the package grows past :data:`MAX_MODULE_LINES` lines;
- the README's layout table names every path that exists, and only those.

Each test collects every offence and prints them all (``file:line``), so one run shows the
whole list to fix.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "pytest_minerva"
PACKAGE_DIR = REPO / PACKAGE
#: First-party top-level packages besides the plugin: the asv suite and the maintenance scripts.
OTHER_ROOTS = ("benchmarks", "tools")
BUILTIN_BACKENDS = frozenset({"llama_cpp", "transformers", "mlx_lm", "openai_http"})
MAX_MODULE_LINES = 650
NEWHOOKS_TESTS = REPO / "tests" / "test_newhooks.py"
SESSION_MODULE = PACKAGE_DIR / "session.py"
SESSION_BUILDER = "build_session"


# -- reading the source -----------------------------------------------------------------------


def python_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts and ".asv" not in p.parts)


def package_files() -> list[Path]:
    return python_files(PACKAGE_DIR)


def first_party_files() -> list[Path]:
    """``pytest_minerva``, ``benchmarks`` and ``tools``."""
    return [*package_files(), *(f for root in OTHER_ROOTS for f in python_files(REPO / root))]


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


@cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_name(path: Path) -> str:
    """``pytest_minerva/a/b.py`` -> ``pytest_minerva.a.b``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import at any depth (functions, classes, try blocks) except those under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))  # the else branch does run
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))  # in source order


def absolute_from(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` in ``path`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if not is_package(path):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*base, node.module] if node.module else base)


@cache
def module_files() -> dict[str, Path]:
    """Every first-party module by dotted name."""
    return {module_name(p): p for p in first_party_files()}


# -- 1. no import cycle -----------------------------------------------------------------------


def import_targets(path: Path, tree: ast.AST | None = None) -> list[tuple[str, int]]:
    """The package modules ``path`` imports at run time, with the line of each import.

    ``import a.b.c`` is an edge to ``a.b.c``; ``from a.b import c`` is an edge to the submodule
    ``a.b.c`` when it is one (a file or package exists), else to ``a.b`` (its ``__init__``).
    """
    modules = module_files()
    found: list[tuple[str, int]] = []
    for node in runtime_imports(tree or parse(path)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names if alias.name in modules)
            continue
        source = absolute_from(path, node)
        for alias in node.names:
            submodule = f"{source}.{alias.name}" if source else alias.name
            if submodule in modules:
                found.append((submodule, node.lineno))
            elif source in modules:
                found.append((source, node.lineno))
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported package module: first line}; only ``pytest_minerva`` modules."""
    graph: dict[str, dict[str, int]] = {}
    for path in package_files():
        name = module_name(path)
        edges = graph.setdefault(name, {})
        for target, line in import_targets(path):
            if target != name and (target == PACKAGE or target.startswith(PACKAGE + ".")):
                edges.setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), those of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph.get(root, {}))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def shortest_cycle(graph: dict[str, dict[str, int]], component: list[str], start: str | None = None) -> list[str]:
    """A shortest cycle through ``start`` (default: the component's first module), as ``[a, b, ..., a]``."""
    members = set(component)
    start = start or component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, {})):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, node, start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [*component, component[0]]


def describe_cycle(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    files = module_files()
    steps = [f"  {rel(files[a])}:{graph[a][b]} imports {rel(files[b])}" for a, b in itertools.pairwise(cycle)]
    return "\n".join([str([rel(files[m]) for m in cycle]), *steps])


def cycles_through(graph: dict[str, dict[str, int]], component: list[str]) -> list[list[str]]:
    """A shortest cycle through each module of the component, each cycle once."""
    seen: set[frozenset[tuple[str, str]]] = set()
    cycles = []
    for start in component:
        cycle = shortest_cycle(graph, component, start)
        edges = frozenset(itertools.pairwise(cycle))
        if edges not in seen:
            seen.add(edges)
            cycles.append(cycle)
    return cycles


def test_the_package_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 10, "the package's modules were not found"
    files = module_files()
    components = strongly_connected(graph)
    report = "\n".join(
        f"modules that import each other: {[rel(files[m]) for m in component]}\n"
        + "\n".join(describe_cycle(graph, cycle) for cycle in cycles_through(graph, component))
        for component in components
    )
    print(report)
    assert not components, f"{len(components)} import cycle(s) in {PACKAGE} (TYPE_CHECKING imports excluded):\n{report}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would see a cycle: a -> b -> c -> a, with d outside it."""
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    components = strongly_connected(graph)
    assert components == [["a", "b", "c"]]
    assert shortest_cycle(graph, components[0]) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b": 1}, "b": {}}) == []


def test_imports_under_type_checking_are_not_edges_and_others_are() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import pytest_minerva.session\n"
        "if TYPE_CHECKING:\n"
        "    from pytest_minerva.matrix import Case\n"
        "else:\n"
        "    from pytest_minerva.options import Settings\n"
        "def f():\n"
        "    from pytest_minerva.backends import base\n"
    )
    seen = sorted(n.module or "" if isinstance(n, ast.ImportFrom) else n.names[0].name for n in runtime_imports(tree))
    assert seen == ["pytest_minerva.backends", "pytest_minerva.options", "pytest_minerva.session", "typing"]


def test_imports_resolve_to_submodules_or_the_package() -> None:
    tree = ast.parse(
        "from . import base\n"
        "from .base import LoadOptions\n"
        "from .. import errors\n"
        "from pytest_minerva.models import catalog\n"
        "from pytest_minerva.backends import BackendSpec\n"
        "import pytest_minerva.session\n"
        "import numpy\n"
    )
    found = import_targets(PACKAGE_DIR / "backends" / "llama_cpp.py", tree)
    assert found == [
        ("pytest_minerva.backends.base", 1),
        ("pytest_minerva.backends.base", 2),
        ("pytest_minerva.errors", 3),
        ("pytest_minerva.models.catalog", 4),
        ("pytest_minerva.backends", 5),
        ("pytest_minerva.session", 6),
    ]


# -- 2. no private imports across modules -----------------------------------------------------


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def is_first_party(module: str) -> bool:
    top = module.split(".", 1)[0]
    return top == PACKAGE or top in OTHER_ROOTS


def private_imports(path: Path, tree: ast.AST | None = None) -> list[str]:
    """``from <first-party module> import _name`` anywhere in ``path`` (``TYPE_CHECKING`` blocks
    included), where the module is not ``path`` itself."""
    own = module_name(path)
    found = []
    for node in ast.walk(tree or parse(path)):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = absolute_from(path, node)
        if not is_first_party(source) or source == own:
            continue
        found.extend(
            f"{rel(path)}:{node.lineno}: from {source} import {alias.name}"
            for alias in node.names
            if is_private(alias.name)
        )
    return found


def test_the_private_import_check_sees_first_party_private_names_only() -> None:
    tree = ast.parse(
        "from pytest_minerva.session import _version, __all__, build_session\n"
        "from ..errors import _hidden\n"
        "from argparse import _SubParsersAction\n"
        "def f():\n"
        "    from pytest_minerva.backends.llama_cpp import _token_piece\n"
        "    from benchmarks.common import _x\n"
    )
    found = private_imports(PACKAGE_DIR / "commands" / "bench.py", tree)
    assert [line.split(": ", 1)[1] for line in found] == [
        "from pytest_minerva.session import _version",
        "from pytest_minerva.errors import _hidden",
        "from pytest_minerva.backends.llama_cpp import _token_piece",
        "from benchmarks.common import _x",
    ]
    assert private_imports(PACKAGE_DIR / "session.py", ast.parse("from pytest_minerva.session import _version")) == []


def test_no_module_imports_a_private_name_from_another() -> None:
    offences = [line for path in first_party_files() for line in private_imports(path)]
    print("\n".join(offences))
    assert not offences, (
        "private names imported from another module (make them public, or move the code that needs them):\n"
        + "\n".join(offences)
    )


# -- 3. backend names are compared only by the backends package -------------------------------


def _named_constants(node: ast.expr) -> Iterator[ast.Constant]:
    """Built-in backend names that are ``node`` or an element/key of a literal collection ``node``."""
    if isinstance(node, ast.Constant) and node.value in BUILTIN_BACKENDS:
        yield node
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        for element in node.elts:
            yield from _named_constants(element)
    elif isinstance(node, ast.Dict):
        for key in node.keys:
            if key is not None:
                yield from _named_constants(key)


def backend_name_checks(tree: ast.AST, where: str) -> list[str]:
    """Comparisons (``==``, ``!=``, ``in``, ``not in``, ``is``, ``match``) with a built-in backend's
    name, and dict literals keyed by one. A module lookup such as ``find_spec("llama_cpp")`` is fine."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                found.update((c.lineno, f"{c.value!r} compared") for c in _named_constants(operand))
        elif isinstance(node, ast.Dict):
            found.update(
                (key.lineno, f"{key.value!r} as a dict key")
                for key in node.keys
                if isinstance(key, ast.Constant) and key.value in BUILTIN_BACKENDS
            )
        elif isinstance(node, ast.MatchValue):
            found.update((c.lineno, f"{c.value!r} matched") for c in _named_constants(node.value))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def test_only_the_backends_package_compares_backend_names() -> None:
    backends_dir = PACKAGE_DIR / "backends"
    scanned = [p for p in first_party_files() if backends_dir not in p.parents]
    offences = [line for path in scanned for line in backend_name_checks(parse(path), rel(path))]
    print("\n".join(offences))
    assert not offences, (
        "code outside pytest_minerva/backends/ branches on a built-in backend's name; ask the backend "
        "(its BackendSpec, or a capability Protocol of backends/base.py) instead:\n" + "\n".join(offences)
    )


def test_the_backend_name_check_sees_comparisons_and_keys_only() -> None:
    tree = ast.parse(
        "import importlib.util\n"
        "a = name == 'llama_cpp'\n"
        "b = name in ('mlx_lm', 'other')\n"
        "c = {'transformers': 1}\n"
        "d = importlib.util.find_spec('llama_cpp')\n"
        "e = ('openai_http',)\n"
        "f = call(backend='transformers')\n"
        "match name:\n"
        "    case 'openai_http':\n"
        "        pass\n"
    )
    lines = [int(line.split(":")[1]) for line in backend_name_checks(tree, "sample.py")]
    assert lines == [2, 3, 4, 9]


# -- 4. one function builds sessions ----------------------------------------------------------


@dataclass
class SessionConstruction:
    line: int
    function: str | None
    text: str


def session_constructions(path: Path) -> list[SessionConstruction]:
    """Calls of ``MinervaSession(...)`` (and of ``cls(...)`` inside the class) with their enclosing function."""
    found: list[SessionConstruction] = []

    def visit(node: ast.AST, function: str | None, in_class: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, function, in_class or child.name == "MinervaSession")
                continue
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, function or child.name, in_class)
                continue
            if (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Name)
                and (child.func.id == "MinervaSession" or (in_class and child.func.id == "cls"))
            ):
                found.append(SessionConstruction(child.lineno, function, f"{child.func.id}(...)"))
            visit(child, function, in_class)

    visit(parse(path), None, False)
    return found


def test_one_function_builds_sessions() -> None:
    offences = []
    for path in first_party_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "MinervaSession.create" in line:
                offences.append(f"{rel(path)}:{number}: MinervaSession.create (use session.{SESSION_BUILDER})")
            if path != SESSION_MODULE and "MinervaSession(" in line:
                offences.append(f"{rel(path)}:{number}: MinervaSession( outside {rel(SESSION_MODULE)}")
    built = session_constructions(SESSION_MODULE)
    offences.extend(
        f"{rel(SESSION_MODULE)}:{c.line}: {c.text} in {c.function or 'module level'}, not in {SESSION_BUILDER}()"
        for c in built
        if c.function != SESSION_BUILDER
    )
    builders = {c.function for c in built}
    if SESSION_BUILDER not in builders:
        offences.append(f"{rel(SESSION_MODULE)}: no function {SESSION_BUILDER}() constructs MinervaSession(...)")
    print("\n".join(offences))
    assert not offences, "sessions must be built by session.build_session() alone:\n" + "\n".join(offences)


# -- 5. every hookspec is called and tested ---------------------------------------------------


def hookspecs() -> list[str]:
    """Functions of ``hookspecs.py`` decorated with ``@pytest.hookspec`` (with or without arguments)."""
    names = []
    for node in parse(PACKAGE_DIR / "hookspecs.py").body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            target = decorator.func if isinstance(decorator, ast.Call) else decorator
            if (isinstance(target, ast.Attribute) and target.attr == "hookspec") or (
                isinstance(target, ast.Name) and target.id == "hookspec"
            ):
                names.append(node.name)
    return names


def hook_calls(tree: ast.AST) -> set[str]:
    """Attribute names that are called (``hook.name(...)``) or handed to a callee to call
    (``Resolver(..., hook=hook.name)``)."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute):
            found.add(node.func.attr)
        for value in (*node.args, *(k.value for k in node.keywords)):
            if isinstance(value, ast.Attribute):
                found.add(value.attr)
    return found


def test_every_hookspec_is_called_by_the_package_and_implemented_by_the_hook_tests() -> None:
    specs = hookspecs()
    assert len(specs) >= 7, f"hookspecs.py declares only {specs}"
    called = set().union(*(hook_calls(parse(p)) for p in package_files() if p.name != "hookspecs.py"))
    tests_text = NEWHOOKS_TESTS.read_text(encoding="utf-8") if NEWHOOKS_TESTS.is_file() else ""
    offences = []
    for name in specs:
        if name not in called:
            offences.append(f"{name}: never called in {PACKAGE}/ (no '.{name}(...)', nor '.{name}' handed to a call)")
        if not re.search(rf"\bdef\s+{name}\s*\(", tests_text):
            offences.append(f"{name}: not implemented in {rel(NEWHOOKS_TESTS)}")
    print("\n".join(offences))
    assert not offences, "\n".join(offences)


# -- 6. module size ---------------------------------------------------------------------------


def test_no_package_module_is_too_long() -> None:
    sizes = {rel(p): len(p.read_text(encoding="utf-8").splitlines()) for p in package_files()}
    offences = [f"{name}: {lines} lines" for name, lines in sorted(sizes.items()) if lines > MAX_MODULE_LINES]
    print("\n".join(offences))
    assert not offences, f"modules over {MAX_MODULE_LINES} lines (split them by job):\n" + "\n".join(offences)


# -- the README's layout table ------------------------------------------------------------------


def layout_paths(readme: str) -> list[str]:
    """The paths in the first column of the README's ``## Layout`` table. A bare name after a
    full path in the same cell (``pytest_minerva/plugin.py``, ``fixtures.py``) is that path's sibling."""
    section = readme.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    found: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        parent = ""
        for name in re.findall(r"`([^`]+)`", cell):
            if "/" in name.rstrip("/"):
                parent = name.rstrip("/").rsplit("/", 1)[0] + "/"
                found.append(name)
            else:
                found.append(name if name.endswith("/") or "." in name.split("/")[0][:1] else parent + name)
    return found


def test_the_layout_parser_reads_siblings_and_folders() -> None:
    table = "\n## Layout\n\n| path | what |\n|---|---|\n| `a/b.py`, `c.py` | x |\n| `d/`, `.e/` | y |\n\n## Next\n"
    assert layout_paths(table) == ["a/b.py", "a/c.py", "d/", ".e/"]


def test_the_readme_layout_table_matches_the_tree() -> None:
    named = layout_paths((REPO / "README.md").read_text(encoding="utf-8"))
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, f"the README's layout table names paths that do not exist: {missing}"
    covered = {path.rstrip("/") for path in named}
    entries = [
        f"{PACKAGE}/{child.name}"
        for child in sorted(PACKAGE_DIR.iterdir())
        if child.name not in ("__init__.py", "__pycache__", "py.typed") and not child.name.endswith(".egg-info")
    ]
    unnamed = [entry for entry in entries if entry not in covered]
    assert not unnamed, f"the README's layout table does not say what these are: {unnamed}"
