"""The package's architecture as tests: the import graph of ``src/shamisa`` has no cycle, and the
packages import one another only downwards (see docs/architecture.md).

The graph is read from the source with :mod:`ast`, so it holds every import, at module level and
inside functions alike (an import inside a function still couples the two modules). Imports under
``if TYPE_CHECKING:`` are left out (they never run), and so are imports of the root ``shamisa``
package itself: it is the public facade, whose module code imports nothing and whose API is
resolved lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "shamisa"

BASE = {"errors", "fileio", "images", "device", "progress", "__init__"}
"""Top-level modules every package may use; they import only one another."""

ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "distortions": set(),
    "objectives": set(),
    "models": set(),
    "datasets": set(),
    "configs": {"distortions", "objectives"},
    "training": {"configs", "distortions", "objectives", "models", "datasets"},
    "finetuning": {"objectives", "models", "datasets", "evaluation"},
    "evaluation": {"configs", "models", "datasets", "training", "finetuning"},
    "inference": {"models", "datasets", "evaluation"},
    "serve": {"inference"},
    "cli": {"configs", "distortions", "objectives", "models", "datasets", "training", "finetuning", "evaluation",
            "inference", "serve", "cli"},
    "__main__": {"cli"},
}
"""Which packages each package may import, besides itself and the base modules. A lower package
(distortions, objectives, models, datasets) never imports a higher one, and nothing imports cli."""

NARROW: dict[tuple[str, str], set[str]] = {
    # fine-tuning reports its validation correlations with the evaluation metrics, nothing more
    ("finetuning", "evaluation"): {"shamisa.evaluation.metrics"},
    # only the method comparison runs pretraining and fine-tuning
    ("evaluation", "training"): set(),
    ("evaluation", "finetuning"): set(),
}
"""Allowed package pairs restricted to some target modules (a set) or to some importers (below)."""

IMPORTERS: dict[tuple[str, str], set[str]] = {
    ("evaluation", "training"): {"shamisa.evaluation.comparison"},
    ("evaluation", "finetuning"): {"shamisa.evaluation.comparison"},
}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    """Every runtime import: (module, imported names, line), skipping ``if TYPE_CHECKING:`` blocks."""
    out: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """``{module: {imported shamisa module: line}}`` over every ``.py`` file under ``src``."""
    files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        for target, names, line in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if target != "shamisa" and not target.startswith("shamisa."):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            for t in subs or [target]:
                if t != "shamisa" and t != mod:
                    edges.setdefault(t, line)
        graph[mod] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strong(w)
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
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return [_closed_path(graph, comp) for comp in sccs]


def _closed_path(graph: dict[str, dict[str, int]], comp: list[str]) -> list[str]:
    """One cycle through the first module of a component, for the failure message."""
    members, start = set(comp), comp[0]
    path, seen = [start], {start}
    while True:
        nxt = next((w for w in sorted(graph[path[-1]]) if w in members and (w == start or w not in seen)), None)
        if nxt is None or nxt == start:
            return path + [start]
        path.append(nxt)
        seen.add(nxt)


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    return "base" if parts[1] in BASE else parts[1]


def layering_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for mod, edges in sorted(graph.items()):
        src_pkg = package_of(mod)
        for target, line in sorted(edges.items()):
            dst_pkg = package_of(target)
            if dst_pkg in ("base", src_pkg):
                continue
            pair = (src_pkg, dst_pkg)
            ok = dst_pkg in ALLOWED[src_pkg]
            if ok and pair in NARROW and NARROW[pair] and target not in NARROW[pair]:
                ok = False
            if ok and pair in IMPORTERS and mod not in IMPORTERS[pair]:
                ok = False
            if not ok:
                bad.append(f"{mod} (line {line}) imports {target}: {src_pkg} may not import {dst_pkg} here")
    return bad


def test_every_package_is_known() -> None:
    unknown = {package_of(m) for m in import_graph()} - set(ALLOWED)
    assert not unknown, f"packages missing from ALLOWED: {sorted(unknown)}"


def test_the_import_graph_has_no_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_packages_import_only_downwards() -> None:
    violations = layering_violations(import_graph())
    assert not violations, "\n".join(violations)


def test_weights_io_is_a_leaf_of_models() -> None:
    edges = import_graph()["shamisa.models.weights"]
    assert not [t for t in edges if t.startswith("shamisa.models")], edges


def test_every_package_says_what_it_owns() -> None:
    for init in sorted(SRC.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 15, f"{init.parent.name}/__init__.py needs a docstring saying what it owns"


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}, [["a", "b", "c", "a"]]),
        ({"a": {"b": 1}, "b": {}, "c": {"a": 1}}, []),
    ],
)
def test_the_cycle_finder_finds_a_planted_cycle(graph: dict[str, dict[str, int]], expected: list[list[str]]) -> None:
    assert find_cycles(graph) == expected


def test_function_level_imports_count(tmp_path: Path) -> None:
    pkg = tmp_path / "shamisa"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from shamisa.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shamisa.sub import c\n"
        "def f():\n    from shamisa.sub.a import x\n"
    )
    (pkg / "sub" / "c.py").write_text("")
    graph = import_graph(pkg)
    assert graph["shamisa.sub.b"] == {"shamisa.sub.a": 5}
    assert find_cycles(graph) == [["shamisa.sub.a", "shamisa.sub.b", "shamisa.sub.a"]]
