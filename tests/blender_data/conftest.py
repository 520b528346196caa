"""Real bpy 5.0.1: a clean file around every test, and our operators registered once."""

import pytest

bpy = pytest.importorskip("bpy")


@pytest.fixture(autouse=True)
def clean_file():
    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


@pytest.fixture(scope="session")
def operators():
    from addon import ops_gaussians

    for cls in ops_gaussians.CLASSES:
        bpy.utils.register_class(cls)
    ops_gaussians.register()
    yield ops_gaussians
    ops_gaussians.unregister()
    for cls in reversed(ops_gaussians.CLASSES):
        bpy.utils.unregister_class(cls)
