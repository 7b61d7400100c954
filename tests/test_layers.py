"""The one-way dependency rule of `docs/architecture.md` ("Dependencies"), read from the
source: the catalog and the log's plain types are leaves, the projections build on them
alone, the domain (`core/`) on the log port and the projections alone, the log adapters never
reach up into the application or its operator tools (`ops/`), and the library never imports
the benchmark or the tests. Imports under `if TYPE_CHECKING:` are annotations, not dependencies, and are left
out of those rules; the import graph checked for circles has every import, those and the ones
inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Modules that import nothing of this project.
LEAVES = ["csaf_events/core/events.py", "csaf_events/core/errors.py", "csaf_events/core/dtos.py",
          "csaf_events/core/clock.py", "csaf_events/core/partitioning.py", "csaf_events/log/entries.py",
          "csaf_events/core/group_commit.py", "csaf_events/core/tally.py", "csaf_events/log/status.py",
          "csaf_events/core/observe.py"]
#: What the projections may import of `csaf_events`.
PROJECTIONS_MAY_IMPORT = {"csaf_events.core.events", "csaf_events.log.entries", "csaf_events.core.errors"}
#: What the domain (`csaf_events/core/`) may import besides itself: the log port and its plain
#: types, and the projections.
CORE_MAY_IMPORT = ("csaf_events.core", "csaf_events.log", "projections")
#: The application and its tools: what the log adapters (`embedded/`, `kafka/`) must never import.
APPLICATION = ("csaf_events.store", "csaf_events.factory", "csaf_events.ops", "csaf_events.matssocket",
               "csaf_events.maintenance", "csaf_events.async_store")


def _imports(path: Path) -> set[str]:
    """The project modules `path` imports at run time."""
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                 for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in ("csaf_events", "projections", "bench", "tests")}


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _project_modules() -> set[str]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for folder in ("csaf_events", "projections") for p in _modules(folder)}


def _real(imports: set[str]) -> set[str]:
    """Imports that name a module (not a class or function taken from one)."""
    modules = _project_modules()
    return {m for m in imports if m in modules}


@pytest.mark.parametrize("leaf", LEAVES)
def test_a_leaf_imports_nothing_of_the_project(leaf: str) -> None:
    assert _imports(ROOT / leaf) == set()


@pytest.mark.parametrize("path", _modules("projections"), ids=lambda p: p.name)
def test_the_projections_build_on_the_catalog_and_the_logs_plain_types_alone(path: Path) -> None:
    outside = {m for m in _real(_imports(path)) if not m.startswith("projections")} - PROJECTIONS_MAY_IMPORT
    assert outside == set(), f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", _modules("csaf_events/core"), ids=lambda p: p.name)
def test_the_domain_builds_on_the_log_port_and_the_projections_alone(path: Path) -> None:
    outside = {m for m in _real(_imports(path)) if not m.startswith(CORE_MAY_IMPORT)} - {"csaf_events"}
    assert outside == set(), f"core/{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", [*_modules("csaf_events/embedded"), *_modules("csaf_events/kafka")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_log_adapter_never_imports_the_application(path: Path) -> None:
    upward = {m for m in _real(_imports(path)) if m.startswith(APPLICATION)}
    assert upward == set(), f"{path.parent.name}/{path.name} imports {sorted(upward)}"


@pytest.mark.parametrize("path", [*_modules("csaf_events"), *_modules("projections")],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_the_library_never_imports_its_tools_or_edits_the_import_path(path: Path) -> None:
    tools = {m for m in _imports(path) if m.split(".")[0] in ("bench", "tests")}
    assert tools == set()
    assert "sys.path" not in path.read_text()


# ------------------------------------------------------------------ no import circles --

def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports: at module level, inside functions, and under
    `if TYPE_CHECKING:` alike; `from pkg import name` counts as importing `pkg.name` when that
    is a module, else `pkg`."""
    paths = {_module_name(p): p for folder in ("csaf_events", "projections", "bench") for p in _modules(folder)}

    def module_of(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                found.update(module_of(f"{base}.{a.name}") if f"{base}.{a.name}" in paths else module_of(base)
                             for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(module_of(a.name) for a in node.names)
        graph[name] = {m for m in found if m is not None and m != name}
    return graph


def _a_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (its modules in order, the first again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (circle := visit(n)) is not None:
                return circle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (circle := visit(m)) is not None:
            return circle
    return None


def test_no_import_circle_in_the_library_or_the_benchmark() -> None:
    circle = _a_circle(_import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_check_finds_a_circle() -> None:
    assert _a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_circle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    graph = _import_graph()
    assert "csaf_events.log.port" in graph["csaf_events.core.writer"]  # a module-level import
    assert "csaf_events.kafka.backend" in graph["csaf_events.factory"]  # one inside a function
    assert "csaf_events.store" in graph["csaf_events.ops.metrics"]  # one under TYPE_CHECKING
