"""Structure of the code base: module size, no import cycles, no citations outside the repository.

- No module of ``processors/`` exceeds :data:`MAX_MODULE_LINES` lines (the aim is 400).
- The module-level imports among ``processors.*`` modules (including those under ``if
  TYPE_CHECKING:``) form no cycle. A package ``__init__`` re-exporting its submodules is not a
  cycle by itself: importing ``processors.a.b`` is an edge to ``processors.a.b`` only, not to
  the parent package it runs first; a submodule that imports its own package (``from
  processors.a import x`` inside ``processors.a.b``, where ``x`` is not a module) is. The same
  holds when imports deferred into function bodies are counted too.
- No code, test or tool cites a document outside the repository: the architecture is cited as
  ``ARCHITECTURE.md, "<Heading>"``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "processors"
MAX_MODULE_LINES = 450
_OUTSIDE_DOCUMENT = re.compile(r"\bDESIGN\b")
_CITATION_DIRS = ("processors", "tools", "tests", "infra", "schemas")
_TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yml", ".yaml", ".json", ".sh", ".sql", ".cfg"}

Graph = dict[str, set[str]]


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the ``processors`` package."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run on import: the body and the blocks nested in it (``if TYPE_CHECKING:``,
    ``try``, ``with``, class bodies), never function bodies."""
    for node in body:
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                yield from _module_level([child])
            elif isinstance(child, ast.ExceptHandler | ast.match_case):
                yield from _module_level(child.body)


def _imported(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The ``processors.*`` modules an import statement of ``module`` names."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    if target.split(".")[0] != "processors":
        return set()
    out: set[str] = set()
    for alias in node.names:
        submodule = f"{target}.{alias.name}"
        if submodule in known:
            out.add(submodule)
        elif target in known:
            out.add(target)
    return out


def import_graph(*, inside_functions: bool = False) -> Graph:
    """Module -> the ``processors.*`` modules it imports (itself left out).

    ``inside_functions``: also imports in function bodies (run when the function is called).
    """
    modules = _modules()
    known = set(modules)
    graph: Graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = ast.walk(tree) if inside_functions else _module_level(tree.body)
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.stmt):
                edges |= _imported(node, name, is_package, known)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _describe(found: list[list[str]], graph: Graph) -> str:
    lines = []
    for component in found:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
        lines.append(
            f"cycle of {len(component)}: {', '.join(component)}\n    " + "\n    ".join(edges)
        )
    return "\n".join(lines)


def test_no_module_is_too_long() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in _modules().values()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_import_cycle_at_module_level() -> None:
    graph = import_graph()
    assert graph.get("processors.core.runner"), "the graph has no edges: imports not parsed"
    found = cycles(graph)
    assert not found, "import cycles among processors modules:\n" + _describe(found, graph)


def test_no_import_cycle_with_imports_inside_functions() -> None:
    """Stricter: imports deferred into functions count too (none hides a cycle either)."""
    graph = import_graph(inside_functions=True)
    found = cycles(graph)
    assert not found, "import cycles, counting imports in functions:\n" + _describe(found, graph)


WORKERS = ("ingest", "score", "controller", "detect", "train", "sink")
# what each layer may import (ARCHITECTURE.md, "Layout"); a worker also imports itself
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "ood": {"core", "ood"},
    "policies": {"core", "ood", "policies"},
    "yolo": {"core", "yolo"},
    "report": {"core", "ood", "policies", "report"},
    **{w: {"core", "ood", "policies", "yolo", w} for w in WORKERS},
}
ALLOWED["sink"].add("report")  # the sink writes the interim and periodic reports


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ALLOWED else None


def test_layers_import_only_downwards() -> None:
    """Workers talk through topics only; libraries never import a worker (imports in functions
    included)."""
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph(inside_functions=True).items()
        for target in targets
        if (layer := _layer(module)) is not None
        and (to := _layer(target)) is not None
        and to not in ALLOWED[layer]
    )
    assert not wrong, "imports across layers:\n" + "\n".join(wrong)


def test_imports_resolve_to_modules() -> None:
    graph = import_graph()
    # from processors.score.backbone.model import Backbone: the submodule
    assert "processors.score.backbone.model" in graph["processors.score.backbone"]
    # from processors.report import queries: the module, not the package
    assert "processors.report.queries" in graph["processors.report.daily"]
    assert "processors.report" not in graph["processors.report.daily"]
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import processors.core.control\n"
        "def f() -> None:\n    import processors.core.runner\n"
    )
    level = {a.name for n in _module_level(tree.body) if isinstance(n, ast.Import) for a in n.names}
    assert level == {"processors.core.control"}


def test_the_cycle_finder_finds_cycles() -> None:
    graph: Graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_citation_of_documents_outside_the_repository() -> None:
    this = Path(__file__).resolve()
    citing = sorted(
        f"{path.relative_to(ROOT)}:{number}"
        for folder in _CITATION_DIRS
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in _TEXT_SUFFIXES and path.resolve() != this
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _OUTSIDE_DOCUMENT.search(line)
    )
    assert not citing, (
        'cite the architecture as ARCHITECTURE.md, "<Heading>", not a document outside the '
        "repository: " + ", ".join(citing)
    )
