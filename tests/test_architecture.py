"""The package's shape, checked: imports point down the pipeline, modules stay small, APIs are explicit.

Order (a package may import the ones before it, never the ones after)::

    core -> extraction -> steer -> serve -> fastpath -> api_client -> evaluate -> bench -> simulate -> export -> notebook
    -> cli
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "emolab"
ORDER = ["core", "extraction", "steer", "serve", "fastpath", "api_client", "evaluate", "bench", "simulate", "export", "notebook",
         "cli"]
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "assets" not in p.parts and "data" not in p.parts)


def subpackage(path: Path) -> str | None:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else None


def emolab_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported emolab subpackage) for every import in the file, function-level ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "emolab" and len(parts) > 1 and parts[1] in ORDER:
                found.append((node.lineno, parts[1]))
    return found


def test_every_subpackage_is_in_the_order():
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} <= set(ORDER)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_pipeline(path):
    own = subpackage(path)
    if own is None:  # emolab/__init__.py re-exports the public API lazily
        return
    for line, target in emolab_imports(path):
        assert ORDER.index(target) <= ORDER.index(own), f"{path.name}:{line} imports emolab.{target} from {own}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small_and_declare_their_api(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400, f"{path} has {len(text.splitlines())} lines"
    if path.name != "__main__.py":
        assert "__all__" in text, f"{path} has no __all__"
        assert ast.get_docstring(ast.parse(text)), f"{path} has no module docstring"


def test_nothing_imports_the_cli():
    for path in MODULES:
        if subpackage(path) != "cli":
            assert all(target != "cli" for _, target in emolab_imports(path)), path


def test_the_public_api_resolves():
    import emolab

    for name in emolab.__all__:
        assert getattr(emolab, name) is not None, name


def module_imports(path: Path) -> set[str]:
    """The emolab modules a file imports (``from emolab.core import offline`` counts as ``emolab.core.offline``),
    function-level imports included."""
    known = {".".join(("emolab", *p.relative_to(PACKAGE).with_suffix("").parts)) for p in MODULES}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name in known:
                found.add(name)
                break  # the most specific module named: `from a.b import c` is a.b.c when that is a module
    return found


def test_core_modules_import_each_other_without_cycles():
    """core is the bottom of the pipeline; inside it no two modules may import each other, even lazily
    (models re-exports offline's alias table; offline needs nothing from models)."""
    graph = {}
    for path in MODULES:
        if subpackage(path) == "core":
            name = ".".join(("emolab", *path.relative_to(PACKAGE).with_suffix("").parts))
            graph[name] = {m for m in module_imports(path) if m.startswith("emolab.core.") and m != name}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*trail, node, target])
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
