"""The suite's import graph between its own modules, imports inside functions included, its
cycles (issue 26: "no import cycle, counting imports inside functions") and the imports that
break the rooms' dependency rule.

    python scripts/import_graph.py            # cycles and room breaches, exit 1 if any
    python scripts/import_graph.py --edges    # every edge, module -> module it imports

The rooms are benchmark/'s subpackages that declare `MAY_IMPORT` in their `__init__.py` (api,
engine, stats, report, check, perf): a room's modules may import their own room, the rooms it
names there and the top level; they read it with `ast` too. methods/ may import api and stats.
The top-level modules (errors, disk, shipped, tracking, weights, data/) import no room but for
TOP_LEVEL_EXCEPTIONS; cli.py may import any room.

Reads the source with `ast` (nothing is imported): every `import medad_bench.X` and
`from medad_bench.X import Y` anywhere in a module (in functions too), mapped back to the
files of benchmark/ and methods/ through the package-dir mapping (medad_bench -> benchmark/,
medad_bench.methods -> methods/).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"medad_bench.methods": ROOT / "methods", "medad_bench": ROOT / "benchmark"}
#: What methods/ (built-ins, beside third-party plug-ins) may import: the contract and stats.
METHODS_MAY_IMPORT = ("api", "stats")
#: Imports from the top level into a room that the rule allows: the data cache builds the
#: contract's TrainSet (lazily: preparing data needs no torch).
TOP_LEVEL_EXCEPTIONS = {("medad_bench.data.prepared", "api")}


def module_files() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imported(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of the suite `tree` imports. `from package import submodule` is an edge to
    the submodule only (Python runs every parent package's __init__ for any import; that
    implicit step is not an edge)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in modules else base)
    return names


def graph() -> dict[str, set[str]]:
    modules = module_files()
    edges: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        names = imported(tree, module, path.name == "__init__.py", set(modules))
        targets = {name for name in names if name in modules and name != module}
        edges[module] = targets
    return edges


def rooms(folder: Path = PACKAGES["medad_bench"]) -> dict[str, tuple[str, ...]]:
    """room -> the rooms it may import, read from each subpackage's `MAY_IMPORT = (...)`."""
    found = {}
    for init in sorted(folder.glob("*/__init__.py")):
        for node in ast.parse(init.read_text(), filename=str(init)).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) else None)
            if isinstance(target, ast.Name) and target.id == "MAY_IMPORT":
                found[init.parent.name] = tuple(ast.literal_eval(node.value))
    return found


def room_of(module: str, room_names: set[str]) -> str:
    """A module's room: a room's name, "methods", "cli", or "top" (the top level)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in room_names:
        return parts[1]
    if len(parts) > 1 and parts[1] in ("methods", "cli"):
        return parts[1]
    return "top"


def room_breaches(edges: dict[str, set[str]],
                  allowed: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """`module -> target` for every import of a room that the importer's room may not import."""
    allowed = rooms() if allowed is None else allowed
    may = {**allowed, "methods": METHODS_MAY_IMPORT}
    names = set(allowed)
    breaches = []
    for module in sorted(edges):
        source = room_of(module, names)
        for target in sorted(edges[module]):
            room = room_of(target, names)
            if room in ("top", source) or source == "cli":
                continue
            if room == "methods" and source in ("perf",):  # perf times a method's own loop
                continue
            if source == "top" and (module, room) in TOP_LEVEL_EXCEPTIONS:
                continue
            if room not in may.get(source, ()):
                breaches.append(f"{module} -> {target} ({source} may not import {room})")
    return breaches


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edges", action="store_true")
    args = parser.parse_args()
    edges = graph()
    if args.edges:
        for module in sorted(edges):
            for target in sorted(edges[module]):
                print(f"{module} -> {target}")
        return
    groups = cycles(edges)
    breaches = room_breaches(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, "
          f"{len(groups)} cycle group(s), {len(breaches)} room breach(es)")
    for group in groups:
        print(f"- {len(group)} modules: {', '.join(group)}")
    for name, may in rooms().items():
        print(f"room {name}: may import {', '.join(may) or 'no other room'}")
    for breach in breaches:
        print(f"- {breach}")
    sys.exit(1 if groups or breaches else 0)


if __name__ == "__main__":
    main()
