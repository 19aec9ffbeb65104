"""The package's plan: no import cycle among the suite's modules, imports inside functions
counted (scripts/import_graph.py reads the source; nothing is imported)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_suite_has_no_import_cycle_counting_imports_inside_functions():
    graph = _import_graph()
    edges = graph.graph()
    assert "medad_bench.api" in edges and "medad_bench.methods.padim" in edges
    assert "medad_bench.api" in edges["medad_bench.methods.padim"]  # imports are read
    assert graph.cycles(edges) == []


def test_an_import_inside_a_function_is_an_edge_and_a_cycle_is_found():
    import ast

    graph = _import_graph()
    modules = {"medad_bench.a", "medad_bench.b", "medad_bench.pkg", "medad_bench.pkg.mod"}
    source = "def f():\n    from medad_bench.b import x\n    from medad_bench.pkg import mod\n"
    assert graph.imported(ast.parse(source), "medad_bench.a", False, modules) == {
        "medad_bench.b", "medad_bench.pkg.mod"}
    assert graph.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
