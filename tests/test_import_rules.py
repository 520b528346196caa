"""The one-way import rules of DESIGN.md ("The house"), read from every import statement in the tree.

    addon.blender -> addon.core -> addon.wire        (the add-on's three layers)
    server        -> addon.wire, pipelines
    pipelines     -> addon.wire, nskernels
    nskernels     -> nothing of ours

Plus: bpy and Blender's companion modules only inside addon/blender/ (at any depth, inside
functions too), no torch anywhere in addon/, and no import cycles between our modules (counting
imports inside functions, which hide cycles rather than remove them). `tools/` (the demos and the
extension build) and `tests/` drive everything and are exempt. The package root `addon/__init__.py`
is Blender's entry point and may reach `addon.blender` to register it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("addon", "server", "pipelines", "nskernels")
BLENDER_MODULES = {"bpy", "bpy_extras", "mathutils", "gpu", "gpu_extras", "bmesh", "blf", "addon_utils", "bl_math"}

#: layer -> the layers it may import (besides itself).
ALLOWED = {
    "addon": {"addon.blender"},
    "addon.wire": set(),
    "addon.core": {"addon.wire"},
    "addon.blender": {"addon.core", "addon.wire"},
    "server": {"addon.wire", "pipelines"},
    "pipelines": {"addon.wire", "nskernels"},
    "nskernels": set(),
}


def _layer(module: str) -> str | None:
    """The layer a dotted module name belongs to (the longest matching prefix), or None if not ours."""
    best = None
    for layer in ALLOWED:
        if module == layer or module.startswith(layer + "."):
            if best is None or len(layer) > len(best):
                best = layer
    return best


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """Every module `module` imports (absolute dotted names, relative imports resolved), with line numbers.

    `from package import name` counts as importing `package.name` when that is one of our modules.
    """
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in MODULES else target, node.lineno))
    return found


def test_the_tree_has_the_layers():
    for layer in ALLOWED:
        assert layer in MODULES, f"{layer} is missing"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_one_way(module):
    own = _layer(module)
    problems = []
    for target, line in _imports(module, MODULES[module]):
        root = target.split(".")[0]
        if root in BLENDER_MODULES and own != "addon.blender":
            problems.append(f"line {line}: imports {target}; bpy lives in addon/blender/ only")
        if root == "torch" and own is not None and own.startswith("addon"):
            problems.append(f"line {line}: imports torch; the add-on never does")
        theirs = _layer(target)
        if theirs is None or theirs == own or _layer(own) is None:
            continue
        if theirs not in ALLOWED[own] and not target.startswith(own + "."):
            problems.append(f"line {line}: {own} imports {target} ({theirs}); allowed: {sorted(ALLOWED[own]) or 'nothing of ours'}")
    assert not problems, f"{module}:\n  " + "\n  ".join(problems)


def test_no_import_cycles():
    graph = {m: {t for t, _ in _imports(m, p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # A package imports its own submodules on purpose (re-exports); that edge is no cycle.
    for m in graph:
        graph[m] = {t for t in graph[m] if not t.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)
