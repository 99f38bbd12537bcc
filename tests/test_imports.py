"""Imports run one way (DESIGN.md) and form no cycle, lazy imports inside functions included.

Layers, lowest first: errors/config < taps, models < losses < teacher, distiller (and the
package's public API) < data, cache < engine < analysis < commands, weights < cli. A module may
import its own layer or a lower one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdforge"

LAYERS = [
    ("kdforge.errors", "kdforge.config"),
    ("kdforge.taps", "kdforge.models"),
    ("kdforge.losses",),
    ("kdforge.teacher", "kdforge.distiller", "kdforge"),
    ("kdforge.data", "kdforge.cache"),
    ("kdforge.engine",),
    ("kdforge.analysis",),
    ("kdforge.commands", "kdforge.weights"),  # weights converts with commands.convert
    ("kdforge.cli", "kdforge.__main__"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _layer(module: str) -> int:
    best, index = "", None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "kdforge" and module.startswith(prefix + "."))
            if inside and len(prefix) > len(best):
                best, index = prefix, i
    assert index is not None, f"{module} is in no layer of this test: add it to LAYERS"
    return index


def _imports(module: str) -> set[str]:
    """The kdforge modules that ``module`` imports, anywhere in its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {  # `if TYPE_CHECKING:` blocks are for annotations; they never run
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: _imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module: str) -> None:
    upward = sorted(dep for dep in GRAPH[module] if _layer(dep) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports a higher layer: {upward}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_checker_sees_a_violation() -> None:
    """The graph is not empty and the layers order what DESIGN.md orders."""
    assert "kdforge.distiller" in GRAPH["kdforge.engine.trainer"]
    assert _layer("kdforge.models.detection.fpn") < _layer("kdforge.losses.kd")
    assert _layer("kdforge.engine.build") < _layer("kdforge.commands.train")
