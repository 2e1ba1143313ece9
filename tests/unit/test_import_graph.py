"""The import graph of `kan_engine` and `kan_tui` has no circle and no arrow running up.

Read from the source with `ast`, never by importing, so the test sees every import, the
function-local ones too (those that only defer torch or textual still tie the two modules
together: an edge is an edge, whenever it runs). Checked: no cycle among the modules; the engine
never imports the UI or its libraries; a widget never imports a screen. Whatever modules exist
are walked, so splitting a file needs no change here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kan_engine", "kan_tui")
UI_ONLY = ("kan_tui", "textual", "typer", "rich")  # what the engine must not import


def module_name(path: Path) -> str:
    """`kan_tui/screens/setup.py` -> `kan_tui.screens.setup`; a package's `__init__.py` is the
    package itself."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = source_files()


def imported_names(path: Path, name: str) -> Iterator[tuple[str, int]]:
    """(absolute dotted name, line) of everything `path` imports, anywhere in the file; for
    `from a import b`, `a.b` when that is a module of ours, else `a`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in MODULES else base), node.lineno


def local_target(dotted: str) -> str | None:
    """The module of ours that importing `dotted` runs: itself, else its longest known prefix
    (`import kan_engine.config.x` -> `kan_engine.config`); None for third-party names."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def build_graph() -> dict[str, dict[str, int]]:
    """module -> {module of ours it imports: first line that does}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for dotted, line in imported_names(path, name):
            target = local_target(dotted)
            if target is not None and target != name:
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return (
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False))
        + f" -> {cycle[-1]}"
    )


def test_the_graph_sees_the_packages_and_the_search_finds_a_cycle() -> None:
    """A guard on the test itself: the modules are found, their known arrows are there (a
    function-local one too), and a cycle is found and told."""
    graph = build_graph()
    assert "kan_engine.config" in graph and "kan_tui.app" in graph
    assert "kan_engine.errors" in graph["kan_engine.config"]
    assert "kan_engine.basis_kernels" in graph["kan_engine.fused_basis"]  # imported in a function
    assert any(target.startswith("kan_engine.") for target in graph["kan_tui.app"])
    toy = {"a": {"b": 3}, "b": {"c": 4}, "c": {"a": 5}, "d": {"a": 1}}
    cycle = find_cycle(toy)
    assert cycle == ["a", "b", "c", "a"]
    assert describe(cycle, toy) == "a (line 3) -> b (line 4) -> c (line 5) -> a"
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_no_import_cycle() -> None:
    graph = build_graph()
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(cycle, graph)}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.split(".")[0] == "kan_engine"])
def test_the_engine_never_imports_the_ui(name: str) -> None:
    bad = [
        f"line {line}: {dotted}"
        for dotted, line in imported_names(MODULES[name], name)
        if dotted.split(".")[0] in UI_ONLY
    ]
    assert not bad, f"{name} imports the UI side: {', '.join(bad)}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("kan_tui.widgets.")])
def test_widgets_never_import_screens(name: str) -> None:
    bad = [
        f"line {line}: {dotted}"
        for dotted, line in imported_names(MODULES[name], name)
        if dotted == "kan_tui.screens" or dotted.startswith("kan_tui.screens.")
    ]
    assert not bad, f"{name} imports a screen (an arrow running up): {', '.join(bad)}"
