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
    """The add-on and the workflow's feature modules, registered for the module's tests."""
    extra = demo.ensure_registered()
    yield
    session.disconnect()
    demo.unregister_all(extra)


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
