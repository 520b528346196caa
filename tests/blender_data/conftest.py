"""Real bpy 5.0.1: a clean file around every test; operators come with the add-on enabled for the run."""

import pytest

bpy = pytest.importorskip("bpy")

import blender_support  # noqa: E402

clean_file = pytest.fixture(autouse=True)(blender_support.clean_file)


@pytest.fixture
def operators(blender_addon):
    """The import/export operators, registered with the add-on (``blender_addon``, tests/conftest.py)."""
    from addon.blender import ops_gaussians

    return ops_gaussians
