"""The package's import graph, read with ast (nothing is imported): no circles, and the job model
stays below observe/, daemon/, control/ and web/.

Every import counts, those under ``if TYPE_CHECKING:`` and inside functions included: a type-only
import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "supervisor"

# The job model (the spec, its parts, the states) and the daemon-child contract are the floor.
JOB_MODEL = ("supervisor.jobs", "supervisor.contract")
ABOVE_JOB_MODEL = ("supervisor.observe", "supervisor.daemon", "supervisor.control", "supervisor.web")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement in ``path`` names (``from a import b`` gives a and a.b)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this package it imports (not counting itself)."""
    found = modules()
    return {name: {dep for dep in imported_names(name, path) if dep in found and dep != name}
            for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, deps = work[-1]
            dep = next(deps, None)
            if dep is not None:
                if dep not in index:
                    index[dep] = low[dep] = len(index)
                    stack.append(dep)
                    on_stack.add(dep)
                    work.append((dep, iter(sorted(graph[dep]))))
                elif dep in on_stack:
                    low[node] = min(low[node], index[dep])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_circle_finder_finds_a_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_circles():
    assert circles(import_graph()) == []


def test_the_job_model_imports_nothing_from_the_layers_above_it():
    upward = sorted(f"{name} -> {dep}" for name, deps in import_graph().items() if name.startswith(JOB_MODEL)
                    for dep in deps if dep.startswith(ABOVE_JOB_MODEL))
    assert upward == []


# -- one boundary between the daemon and the child ---------------------------------------------
BOUNDARY_LITERALS = {"midepoch.pt", "resumable-final.pt", "yolo_supervisor_midepoch", "yolo_supervisor_finite"}


def test_the_names_both_sides_use_are_spelled_only_in_the_contract():
    """A file name or checkpoint key written twice drifts apart; each side imports supervisor/contract.py."""
    spelled = sorted(f"{name}: {node.value}" for name, path in modules().items()
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.Constant) and node.value in BOUNDARY_LITERALS)
    assert spelled and all(line.startswith("supervisor.contract: ") for line in spelled), spelled


def test_files_are_made_durable_by_one_helper():
    helpers = sorted(f"{name}.{node.name}" for name, path in modules().items()
                     for node in ast.walk(ast.parse(path.read_text()))
                     if isinstance(node, ast.FunctionDef) and "fsync" in node.name)
    assert helpers == ["supervisor.safefs.fsync_dir", "supervisor.safefs.fsync_file"]
