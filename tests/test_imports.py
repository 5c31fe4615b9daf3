"""Imports run one way: no module of the package imports one that imports it back, even lazily.

Every import in the package is read with ``ast``: those inside functions and under
``TYPE_CHECKING`` count too, so a function-level import cannot hide a cycle. An acyclic graph
is what gives the modules an order, low (errors, labels, files) to high (training, web).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "deepfake_detector"


def import_graph(package_dir: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports, anywhere in its code."""

    def module_name(path: Path) -> str:
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {module_name(path): path for path in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from . import x, from ..y import z
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # a name inside a module: the module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    imported.add(target)
        graph[name] = imported
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            cycle = visit(imported, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "deepfake_detector.training" in graph and graph["deepfake_detector.training"]  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_lazy_import_back_up():
    graph = {"low": {"high"}, "high": {"low"}, "alone": set()}
    assert find_cycle(graph) == ["high", "low", "high"]
    assert find_cycle({"low": set(), "high": {"low"}}) is None


def test_relative_and_function_level_imports_are_read(tmp_path):
    package = tmp_path / "deepfake_detector"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from .high import g\n")
    (package / "high.py").write_text("from deepfake_detector.low import f\n")
    graph = import_graph(package)
    assert graph["deepfake_detector.low"] == {"deepfake_detector.high"}
    assert find_cycle(graph) is not None
