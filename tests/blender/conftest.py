"""Fixtures for the real-bpy tests: clean file per test, the add-on enabled, a real server."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # `addon` must be the real package, for addon_utils
sys.path.insert(0, str(REPO / "tests" / "addon"))

bpy = pytest.importorskip("bpy")

from nstudio_server import ServerProcess  # noqa: E402

pytestmark = pytest.mark.blender


@pytest.fixture(autouse=True)
def clean_file():
    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


@pytest.fixture
def enabled_addon():
    """The add-on enabled through Blender's add-on system (so its preferences exist)."""
    import addon_utils

    module = addon_utils.enable("addon", default_set=True, handle_error=None)
    assert module is not None, "addon_utils could not enable the add-on"
    yield bpy.context.preferences.addons["addon"].preferences
    addon_utils.disable("addon", default_set=True, handle_error=None)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    proc = ServerProcess(tmp_path_factory.mktemp("nstudio") / "store").start()
    yield proc
    proc.stop()


@pytest.fixture
def server(tmp_path):
    proc = ServerProcess(tmp_path / "store").start()
    yield proc
    proc.stop()


def tick_until(predicate, timeout_s: float, what: str):
    """Drive the add-on's real timer callback until `predicate()`; fail naming `what`."""
    from addon import session

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        session.timer_tick()
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    live = session.current()
    state = live.client.state if live else "no session"
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (client {state})")
