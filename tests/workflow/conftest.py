"""Fixtures for the splat workflow tests: real bpy, a real `nstudio serve` on loopback, the add-on enabled.

One server process serves the whole module (starting it and compiling the rasterizer's numba
kernels is the slow part); each test gets a clean Blender file and the add-on's own session.
The add-on is enabled once for the run by the ``blender_addon`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy")

import blender_support  # noqa: E402
from tools import demo
from addon.blender import session# noqa: E402

clean_file = pytest.fixture(autouse=True)(blender_support.clean_file)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `nstudio serve --device cpu` subprocess on a free loopback port; stopped after the module."""
    yield from blender_support.serve(tmp_path_factory.mktemp("workflow-server"))


@pytest.fixture
def live(server, blender_addon):
    """The add-on's session, connected to the module's server (welcome received)."""
    yield demo.connect(server.endpoint, server, timeout_s=60.0)
    session.disconnect()
