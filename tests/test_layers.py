"""The layers hold: a module imports only from its own layer or below, flows import nothing from the
command line, the performance measurements (`perf/`) nothing from the tests, and no modules import
each other in a circle (imports inside functions count too). Read from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["core", "method", "storage", "sources", "backends", "tasks", "flows", "deployments", "wdys"]
OUTSIDE = ["fakes", "perf", "tests"]  # not product code: may use any layer, never each other's tests


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (a package import counts as its
    `__init__`, `from package import module` as the module)."""
    files = {module_name(p): p for top in LAYERS + OUTSIDE for p in (REPO / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_each_layer_imports_only_its_own_and_below():
    wrong = [
        f"{m} -> {t}"
        for m, targets in project_imports().items()
        if m.split(".")[0] in LAYERS
        for t in targets
        if t.split(".")[0] not in LAYERS or layer(t) > layer(m)
    ]
    assert wrong == []


def test_perf_and_fakes_import_nothing_from_the_tests():
    graph = project_imports()
    wrong = [f"{m} -> {t}" for m in graph if m.split(".")[0] in ("perf", "fakes") for t in graph[m]]
    assert [w for w in wrong if w.split(" -> ")[1].startswith("tests")] == []


def test_no_import_circles():
    graph = project_imports()
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert circles == []


def test_the_architecture_page_names_every_folder_and_module():
    page = (REPO / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(REPO))
        for top in LAYERS + OUTSIDE
        for p in (REPO / top).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and not p.name.startswith("test_")
        if f"`{top}/`" not in page or f"`{p.name}`" not in page
    ]
    assert missing == []
