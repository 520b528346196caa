"""The extension builder's pure parts (no network): manifest rendering, wheel coverage, sources."""

from __future__ import annotations

import tomllib

import pytest

from tools import build_extension as build

SOURCE = """schema_version = "1.0.0"
id = "neural_studio"
wheels = ["./wheels/old.whl"]

[permissions]
network = "why"
"""


def test_render_manifest_replaces_lists_as_top_level_keys():
    text = build.render_manifest(SOURCE, ["./wheels/a-1-cp311-cp311-win_amd64.whl"], ["windows-x64"])
    parsed = tomllib.loads(text)
    assert parsed["wheels"] == ["./wheels/a-1-cp311-cp311-win_amd64.whl"]
    assert parsed["platforms"] == ["windows-x64"]
    assert parsed["permissions"] == {"network": "why"}
    assert "old.whl" not in text


@pytest.mark.parametrize("name, python, platform, ok", [
    ("pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl", "3.11", "linux-x64", True),
    ("pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl", "3.13", "linux-x64", False),
    ("pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl", "3.11", "linux-arm64", False),
    ("pyzmq-27.3.0-cp312-abi3-win_amd64.whl", "3.13", "windows-x64", True),
    ("pyzmq-27.3.0-cp312-abi3-win_amd64.whl", "3.11", "windows-x64", False),  # abi3 from 3.12 on
    ("pyzmq-27.3.0-cp312-abi3-macosx_10_15_universal2.whl", "3.13", "macos-arm64", True),
    ("pyzmq-27.3.0-cp312-abi3-macosx_10_15_universal2.whl", "3.13", "macos-x64", True),
    ("msgpack-1.2.4-cp313-cp313-macosx_11_0_arm64.whl", "3.13", "macos-x64", False),
    ("msgpack-1.2.4-cp313-cp313-musllinux_1_2_x86_64.whl", "3.13", "linux-x64", False),
    ("msgpack-1.2.4-py3-none-any.whl", "3.13", "linux-arm64", True),
])
def test_wheel_supports(name, python, platform, ok):
    assert build.wheel_supports(name, python, platform) is ok


def test_missing_wheels_names_each_gap():
    wheels = ["pyzmq-27.3.0-cp311-cp311-win_amd64.whl", "msgpack-1.2.4-cp311-cp311-win_amd64.whl"]
    missing = build.missing_wheels(wheels, pythons=("3.11", "3.13"), platforms=("windows-x64",))
    assert missing == ["pyzmq==27.3.0 for Python 3.13 on windows-x64", "msgpack==1.2.4 for Python 3.13 on windows-x64",
                       "zstandard==0.25.0 for Python 3.11 on windows-x64",
                       "zstandard==0.25.0 for Python 3.13 on windows-x64"]


def test_bad_wheel_name_is_a_clear_error():
    with pytest.raises(build.BuildError, match="does not follow"):
        build.wheel_tags("pyzmq-win_amd64.whl")


def test_source_files_exclude_the_builder_and_caches():
    files = {p.as_posix() for p in build.source_files()}
    assert {"__init__.py", "blender_manifest.toml", "core/client.py", "wire/protocol.py"} <= files
    assert not any(f.endswith(("build_extension.py", "demo.py", "sample_scene.py")) for f in files)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


def test_build_refuses_an_incomplete_wheel_folder(tmp_path):
    (tmp_path / "pyzmq-27.3.0-cp311-cp311-win_amd64.whl").write_bytes(b"")
    with pytest.raises(build.BuildError, match="lacks wheels for: .*Python 3.13"):
        build.build(tmp_path / "out", wheels_dir=tmp_path)
