"""Fixtures for the final-shot tests: a clean Blender file per test and a real `nstudio serve`.

The add-on itself is enabled once for the run by the ``blender_addon`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy")

import blender_support  # noqa: E402

clean_file = pytest.fixture(autouse=True)(blender_support.clean_file)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real server process (CPU) on a free loopback port, answering; stopped at the end."""
    yield from blender_support.serve(tmp_path_factory.mktemp("final-shot-server"))
