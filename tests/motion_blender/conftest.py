"""Real bpy 5.0.1: a clean file around every test."""

import pytest

bpy = pytest.importorskip("bpy")

import blender_support  # noqa: E402

clean_file = pytest.fixture(autouse=True)(blender_support.clean_file)
