"""Fixtures for the real-bpy add-on tests: clean file per test, the add-on enabled, a real server."""

from __future__ import annotations

import pytest

bpy = pytest.importorskip("bpy")

import blender_support  # noqa: E402

pytestmark = pytest.mark.blender

clean_file = pytest.fixture(autouse=True)(blender_support.clean_file)


@pytest.fixture
def enabled_addon(blender_addon):
    """The add-on's preferences (it is enabled for the whole run); reset and disconnected afterwards."""
    yield blender_support.preferences()
    from addon.blender import session

    session.disconnect()
    if blender_support.addon_enabled():  # a test may leave it disabled only by failing midway
        blender_support.reset_preferences()
    else:
        blender_support.enable_addon()


@pytest.fixture
def addon_disabled():
    """The add-on disabled for a test that checks registration itself; enabled again afterwards."""
    with blender_support.addon_disabled():
        yield


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    yield from blender_support.serve(tmp_path_factory.mktemp("nstudio"))


@pytest.fixture
def server(tmp_path):
    yield from blender_support.serve(tmp_path)
