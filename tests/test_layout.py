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


ROOMS = {"api", "engine", "stats", "report", "check", "perf"}


def test_every_room_says_what_it_holds_and_what_it_may_import():
    import ast

    graph = _import_graph()
    rooms = graph.rooms()
    assert set(rooms) == ROOMS
    folder = SCRIPT.parents[1] / "benchmark"
    for room, may in rooms.items():
        init = folder / room / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "May import" in doc, room
        assert set(may) <= ROOMS - {room}, room
        for module in (folder / room).glob("*.py"):  # every module is named in the docstring
            assert module.name == "__init__.py" or module.name in doc, (room, module.name)


def test_no_module_imports_a_room_its_room_may_not_import():
    graph = _import_graph()
    edges = graph.graph()
    assert "medad_bench.engine.run" in edges and "medad_bench.stats.intervals" in edges
    assert graph.room_breaches(edges) == []


def test_a_forbidden_import_is_a_breach():
    import ast

    graph = _import_graph()
    allowed = graph.rooms()
    modules = set(graph.module_files())
    source = "def late():\n    from medad_bench.engine.run import run_one\n"
    targets = graph.imported(ast.parse(source), "medad_bench.stats.intervals", False, modules)
    edges = {"medad_bench.stats.intervals": targets,
             "medad_bench.report.table": {"medad_bench.api"},
             "medad_bench.tracking": {"medad_bench.report.table"},
             "medad_bench.methods.padim": {"medad_bench.engine.grid"},
             "medad_bench.engine.run": {"medad_bench.api.contract", "medad_bench.errors"},
             "medad_bench.cli": {"medad_bench.perf.throughput"}}
    assert graph.room_breaches(edges, allowed) == [
        "medad_bench.methods.padim -> medad_bench.engine.grid (methods may not import engine)",
        "medad_bench.report.table -> medad_bench.api (report may not import api)",
        "medad_bench.stats.intervals -> medad_bench.engine.run (stats may not import engine)",
        "medad_bench.tracking -> medad_bench.report.table (top may not import report)"]


def test_no_two_module_names_differ_only_by_a_suffix():
    """A newcomer finds a thing by its name: no `plan` beside `planning`."""
    graph = _import_graph()
    names = {module.rsplit(".", 1)[-1] for module in graph.module_files()
             if module.startswith("medad_bench.") and not module.startswith("medad_bench.methods")}
    names.discard("medad_bench")
    pairs = [(a, b) for a in names for b in names if a != b and b.startswith(a)]
    assert pairs == []  # plan/planning, report/reporting, runner/running were such pairs
