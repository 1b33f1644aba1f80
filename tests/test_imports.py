"""The package's import graph has no cycle, and every module imports.

The graph is built from the source (``ast``), not from what happens to be imported at run time, so
an edge counts wherever the import statement is: at module level, inside a function (a lazy
import), or under ``if TYPE_CHECKING:``. A cycle kept alive by lazy imports is still a cycle.
Only explicit imports are edges: ``from . import x`` (``x`` a submodule) -> ``x``; ``from .x import
y`` -> ``x`` (a package's ``__init__`` when ``x`` is a package); the implicit import of a parent
package's ``__init__`` is not.

    python tests/test_imports.py     # prints the cycles, if any (no torch needed)
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

PACKAGE = "glassdetect"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Cycles that were there when this test was written, each a set of modules. Delete an entry once its
# cycle is gone; never add one: move what both sides need into the lower module instead.
KNOWN_CYCLES = [
]


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is one of the package's modules (None: outside it)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(_resolve(a.name, modules) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{a.name}"
                found.add(sub if sub in modules else _resolve(target, modules))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(_resolve(node.args[0].value, modules))  # importlib.import_module("glassdetect.x")
    found.discard(None)
    found.discard(module)
    return found


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    modules = module_files(root)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(comp, graph) for comp in components]


def _cycle_in(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    members, start = set(component), component[0]
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    return component  # unreachable for a strongly connected component


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import x\n")
    (pkg / "sub" / "b.py").write_text("from ..c import y\nx = 1\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .d import z\ny = 2\n")
    (pkg / "d.py").write_text("def f():\n    from . import c\n    import glassdetect.sub.b\n")
    g = import_graph(pkg)
    assert g == {
        PACKAGE: set(), f"{PACKAGE}.sub": {f"{PACKAGE}.sub.b"}, f"{PACKAGE}.sub.b": {f"{PACKAGE}.c"},
        f"{PACKAGE}.c": {f"{PACKAGE}.d"}, f"{PACKAGE}.d": {f"{PACKAGE}.c", f"{PACKAGE}.sub.b"},
    }
    assert find_cycles(g) == [[f"{PACKAGE}.c", f"{PACKAGE}.d", f"{PACKAGE}.c"]]


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 20 and f"{PACKAGE}.inference.api" in graph
    cycles = [c for c in find_cycles(graph) if set(c) not in KNOWN_CYCLES]
    assert not cycles, "import cycles (move what both sides need into a lower module):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_api_and_explain_import_one_way():
    graph = import_graph()
    assert f"{PACKAGE}.inference.explain" in graph[f"{PACKAGE}.inference.api"]
    assert f"{PACKAGE}.inference.api" not in graph[f"{PACKAGE}.inference.explain"]


# The stages, bottom-up as the data flows: a module may import its own stage and lower ones only.
# training and inference share a level and never import each other. Top-level helpers are level 0.
STAGES = {
    "views": 1, "data": 2, "models": 3, "pipeline": 4, "evaluation": 5, "training": 6, "inference": 6,
    "service": 7, "bench": 8, "studies": 9, "cli": 10,
}
HELPERS = {"runtime", "fsutil", "fetch", "cache"}


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_stages_are_the_top_level_parts():
    tops = {stage_of(m) for m in module_files()} - {""}
    assert tops == set(STAGES) | HELPERS
    modules = sorted(p.name for p in SRC.glob("*.py"))
    assert len(modules) <= 6, f"at most six modules directly under src/{PACKAGE}/: {modules}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every edge from a stage to a higher one, or between the two stages of one level."""
    level = lambda m: STAGES.get(stage_of(m), 0)  # noqa: E731 - the package root and helpers: 0
    bad = []
    for module, targets in graph.items():
        for t in targets:
            if stage_of(module) != stage_of(t) and (level(t) > level(module) or level(t) == level(module) != 0):
                bad.append(f"{module} -> {t}")
    return sorted(bad)


def test_a_lower_stage_never_imports_a_higher_one():
    bad = upward_imports(import_graph())
    assert not bad, "imports against the arrow of the stages:\n" + "\n".join(bad)


def test_the_stage_rule_sees_an_upward_import(tmp_path):
    pkg = tmp_path / PACKAGE
    for d in ("views", "service", "training", "inference"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "views" / "a.py").write_text("def f():\n    from ..service import b\n")
    (pkg / "service" / "b.py").write_text("from ..views import a\n")
    (pkg / "training" / "t.py").write_text("from ..inference import i\n")
    (pkg / "inference" / "i.py").write_text("")
    assert upward_imports(import_graph(pkg)) == [f"{PACKAGE}.training.t -> {PACKAGE}.inference.i",
                                                 f"{PACKAGE}.views.a -> {PACKAGE}.service.b"]


@pytest.mark.parametrize("module", sorted(module_files()))
def test_every_module_imports(module):
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:  # an optional dependency that is not installed
        if exc.name and not exc.name.startswith(PACKAGE):
            pytest.skip(f"{module} needs {exc.name}")
        raise


if __name__ == "__main__":
    found = find_cycles(import_graph())
    for c in found:
        print(" -> ".join(c), "(known)" if set(c) in KNOWN_CYCLES else "")
    print(f"{len(found)} cycle(s) among {len(import_graph())} modules")
    sys.exit(1 if any(set(c) not in KNOWN_CYCLES for c in found) else 0)
