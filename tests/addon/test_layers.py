"""The add-on's layers (DESIGN.md "The house"): `addon.wire` and `addon.core` import without bpy or torch.

Every module under addon/ outside `addon.blender` (found on disk, so a new module is covered
without editing this file) must import with bpy, its companion modules and torch blocked, and pull
in no third-party package but numpy, pyzmq and msgpack (what Blender's Python gets from the
extension). The static one-way import rules for the whole tree are in tests/test_import_rules.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADDON = REPO / "addon"

#: Blender's own modules, and torch, which the add-on never imports.
BLOCKED = ("bpy", "bpy_extras", "mathutils", "gpu", "gpu_extras", "bmesh", "blf", "addon_utils", "torch")
#: Third-party packages the bpy-free layer may import (bundled as wheels, or shipped with Blender);
#: cython_runtime is the module Cython extensions (pyzmq's backend) register themselves under.
ALLOWED_THIRD_PARTY = {"numpy", "zmq", "msgpack", "cython_runtime"}


def _module_names() -> list[str]:
    """Every module of the add-on package, as dotted names."""
    modules = []
    for path in sorted(ADDON.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_every_module_outside_the_blender_layer_imports_without_bpy_or_torch():
    modules = [m for m in _module_names() if m != "addon.blender" and not m.startswith("addon.blender.")]
    assert {"addon", "addon.wire.protocol", "addon.core.client", "addon.core.jobs", "addon.core.handlers",
            "addon.core.formats.ply", "addon.core.viewport", "addon.core.render_client"} <= set(modules)
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
