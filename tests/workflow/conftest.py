"""Fixtures for the splat workflow tests: real bpy, a real `nstudio serve` on loopback, the add-on registered.

One server process serves the whole module (starting it and compiling the rasterizer's numba
kernels is the slow part); each test gets a clean Blender file and the add-on's own session.
"""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy")

from addon import demo, session  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `nstudio serve --device cpu` subprocess on a free loopback port; stopped after the module."""
    folder = tmp_path_factory.mktemp("workflow-server")
    endpoint = f"tcp://127.0.0.1:{demo.free_loopback_port()}"
    with demo.ServerProcess(endpoint, folder / "store", "cpu", folder / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def registered():
    """The add-on's feature modules plus the workflow's, registered for this module's tests.

    Other test folders register some of the same modules for their whole session; a module
    whose classes are already registered is used as it is and left for its owner to unregister.
    """
    import importlib

    import addon

    names = addon.FEATURE_MODULES
    mine = []
    for name in names:
        module = importlib.import_module(f"addon.{name}")
        if module.CLASSES and module.CLASSES[0].is_registered:
            continue
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)
        if hasattr(module, "register"):
            module.register()
        mine.append(module)
    yield
    session.disconnect()
    for module in reversed(mine):
        if hasattr(module, "unregister"):
            module.unregister()
        for cls in reversed(module.CLASSES):
            bpy.utils.unregister_class(cls)


@pytest.fixture(autouse=True)
def clean_file():
    """A clean Blender file before and after each test (databpy's pattern)."""
    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


@pytest.fixture
def live(server, registered):
    """The add-on's session, connected to the module's server (welcome received)."""
    yield demo.connect(server.endpoint, server, timeout_s=60.0)
    session.disconnect()
