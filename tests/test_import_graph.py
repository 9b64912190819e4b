"""The package is a line, not a web: no import circle among ray_numa's modules.

Every import counts, also one inside a function (which would only hide a circle)
and one under ``TYPE_CHECKING``; the graph is read from the source with ``ast``.
"""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import ray_numa

PACKAGE = Path(ray_numa.__file__).parent
MODULES = {p.stem for p in PACKAGE.glob("*.py")}


def _targets(node: ast.AST) -> List[str]:
    """The ray_numa modules one import statement loads ("__init__" for the package)."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[1] if a.name.count(".") else "__init__"
                for a in node.names if a.name.split(".")[0] == "ray_numa"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0 and (node.module or "").split(".")[0] != "ray_numa":
        return []
    if node.level > 1:
        return []
    parts = (node.module or "").split(".")
    base = parts[1] if node.level == 0 and len(parts) > 1 else (
        parts[0] if node.level == 1 and node.module else None)
    if base is not None:
        return [base]
    # "from . import x, y": modules where x names one, else the package itself
    return [a.name if a.name in MODULES else "__init__" for a in node.names]


def import_graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    graph = {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        graph[path.stem] = {t for node in ast.walk(tree) for t in _targets(node)
                            if t != path.stem}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import circle as ``[a, b, ..., a]``, or None."""
    state: Dict[str, int] = {}     # 1: on the current path, 2: done
    path: List[str] = []

    def visit(mod: str) -> Optional[List[str]]:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state:
            found = visit(mod)
            if found:
                return found
    return None


def test_the_graph_sees_module_and_function_level_imports():
    graph = import_graph()
    assert "prepared" in graph["binding"]                 # module level: from .x import y
    assert "environment" in graph["binding"]              # from . import x
    assert "planning" in graph["prepared"]                # inside a function
    assert "options" in graph["policy"]                   # under TYPE_CHECKING
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_ray_numa_has_no_import_circle():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))
