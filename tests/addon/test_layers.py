"""The add-on's two layers (STYLE.md): every module but the Blender layer imports without bpy or torch.

The Blender layer is the list below; every other module under addon/ (found on disk, so a new
module is covered without editing this file) must import with bpy, its companion modules and torch
blocked, and pull in no third-party package but numpy, pyzmq and msgpack (what Blender's Python
gets from the extension: DESIGN.md).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addon"

#: Modules that hold bpy code at module level (imported only by register()).
BLENDER_LAYER = {
    "addon.final_shot", "addon.operators", "addon.ops_gaussians", "addon.ops_splat", "addon.preferences",
    "addon.render_engine", "addon.session", "addon.ui",
}
#: Blender's own modules, and torch, which the add-on never imports.
BLOCKED = ("bpy", "bpy_extras", "mathutils", "gpu", "gpu_extras", "bmesh", "blf", "addon_utils", "torch")
#: Third-party packages the bpy-free layer may import (bundled as wheels, or shipped with Blender);
#: cython_runtime is the module Cython extensions (pyzmq's backend) register themselves under.
ALLOWED_THIRD_PARTY = {"numpy", "zmq", "msgpack", "cython_runtime"}


def _modules() -> dict[str, Path]:
    """Every module of the add-on package: dotted name -> source file."""
    modules = {}
    for path in sorted(ADDON.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _module_names() -> list[str]:
    return list(_modules())


def _imports_blender_at_module_level(module: str) -> bool:
    path = _modules()[module]
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots = [node.module.split(".")[0]]
        else:
            continue
        if any(root in BLOCKED for root in roots):
            return True
    return False


def test_the_blender_layer_list_is_exact():
    names = set(_module_names())
    assert BLENDER_LAYER <= names, f"listed but missing: {sorted(BLENDER_LAYER - names)}"
    for module in sorted(names):
        assert _imports_blender_at_module_level(module) == (module in BLENDER_LAYER), (
            f"{module}: imports bpy (or torch) at module level but is not in BLENDER_LAYER" if module not in BLENDER_LAYER
            else f"{module}: in BLENDER_LAYER but imports no Blender module at module level")


def test_every_other_module_imports_without_bpy_or_torch():
    modules = [m for m in _module_names() if m not in BLENDER_LAYER]
    assert {"addon", "addon.protocol", "addon.client", "addon.jobs", "addon.handlers", "addon.formats.ply",
            "addon.importers.gaussians", "addon.viewport", "addon.render_client", "addon.build"} <= set(modules)
    code = textwrap.dedent(f"""
        import importlib, json, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {BLOCKED!r}:
                    raise ImportError("blocked: " + name)

        sys.meta_path.insert(0, Block())
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    third_party = {m for m in loaded - set(sys.stdlib_module_names) - set(sys.builtin_module_names)
                   if not m.startswith("_") and m != "addon"}
    assert third_party <= ALLOWED_THIRD_PARTY, f"the bpy-free layer imported {sorted(third_party - ALLOWED_THIRD_PARTY)}"
    assert not loaded & set(BLOCKED)
