"""Build the extension zip (downloads wheels from PyPI), validate it, install it with Blender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

import bpy
from tools import build_extension as build

# Blender's own extension tool (what `blender --command extension validate` runs).
BLENDER_EXT = Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory) -> Path:
    return build.build(tmp_path_factory.mktemp("dist"))


def test_zip_manifest_and_wheels(extension_zip):
    assert extension_zip.name == "neural_studio-0.1.0.zip"
    with zipfile.ZipFile(extension_zip) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert {"__init__.py", "core/client.py", "wire/protocol.py", "core/jobs.py", "blender/session.py"} <= names
    assert not any(n.endswith(("build_extension.py", "demo.py", "sample_scene.py")) for n in names)
    assert not any("__pycache__" in n for n in names)
    assert manifest["schema_version"] == "1.0.0" and manifest["id"] == "neural_studio"
    assert manifest["type"] == "add-on" and manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:Apache-2.0"]
    assert set(manifest["permissions"]) == {"network", "files"} and all(manifest["permissions"].values())
    assert set(manifest["platforms"]) == {"linux-x64", "linux-arm64", "windows-x64", "macos-arm64", "macos-x64"}
    wheels = manifest["wheels"]
    assert all(w.startswith("./wheels/") and w[2:] in names for w in wheels)
    # Checked by file name, independently of build.wheel_supports: each package has a wheel for
    # each Python (cp311 exact, cp313 exact or stable ABI) and each OS/architecture.
    platform_ok = {
        "linux-x64": lambda w: "manylinux" in w and w.endswith("_x86_64.whl"),
        "linux-arm64": lambda w: "manylinux" in w and w.endswith("_aarch64.whl"),
        "windows-x64": lambda w: w.endswith("-win_amd64.whl"),
        "macos-arm64": lambda w: "-macosx_" in w and w.endswith(("_arm64.whl", "_universal2.whl")),
        "macos-x64": lambda w: "-macosx_" in w and w.endswith(("_x86_64.whl", "_universal2.whl")),
    }
    for dist in ("pyzmq", "msgpack", "zstandard"):
        for py_tags in (("-cp311-cp311-",), ("-cp313-cp313-", "-cp312-abi3-")):
            for platform, ok in platform_ok.items():
                found = [w for w in wheels if os.path.basename(w).startswith(dist + "-")
                         and any(t in w for t in py_tags) and ok(w)]
                assert found, f"no {dist} wheel for {py_tags} on {platform}"
    assert not any("torch" in w or "numpy" in w for w in wheels)


def test_blenders_own_validator_accepts_the_zip(extension_zip):
    result = subprocess.run([sys.executable, str(BLENDER_EXT), "validate", str(extension_zip)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


INSTALL_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import bpy, addon_utils
    result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                      enable_on_install=True)
    name = "bl_ext.user_default.neural_studio"
    module = sys.modules.get(name)
    site = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", ".local", "lib",
                        "python%d.%d" % sys.version_info[:2], "site-packages")
    report = {
        "operator": sorted(result),
        "enabled": addon_utils.check(name)[1],
        "module_file": getattr(module, "__file__", None),
        "panel": hasattr(bpy.types, "NSTUDIO_PT_status"),
        "connect_op": hasattr(bpy.ops.nstudio, "connect"),
        "prefs": name in bpy.context.preferences.addons,
        "wheels_installed": sorted(d for d in os.listdir(site) if d in ("zmq", "msgpack", "zstandard")) if os.path.isdir(site) else [],
        "client_imports": bool(sys.modules.get(name + ".core.client")),
    }
    addon_utils.disable(name, default_set=True, handle_error=None)
    report["panel_after_disable"] = hasattr(bpy.types, "NSTUDIO_PT_status")
    print("RESULT " + json.dumps(report))
""")


def test_installs_with_blenders_extension_installer(extension_zip, tmp_path):
    resources = tmp_path / "blender_user"
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(resources))
    env.pop("PYTHONPATH", None)  # the installed copy, not the source tree
    result = subprocess.run([sys.executable, "-c", INSTALL_SCRIPT, str(extension_zip)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=240)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads(lines[-1][len("RESULT "):])
    assert report["operator"] == ["FINISHED"]
    assert report["enabled"] and report["prefs"] and report["panel"] and report["connect_op"]
    assert report["module_file"].startswith(str(resources / "extensions" / "user_default" / "neural_studio"))
    assert report["wheels_installed"] == ["msgpack", "zmq", "zstandard"]
    assert report["client_imports"]
    assert report["panel_after_disable"] is False
