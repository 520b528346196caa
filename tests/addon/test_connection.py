"""addon.core.connection: both clients open their sockets the same way, CURVE keys included.

A real ``nstudio serve`` with CURVE on (keys from ``nstudio keys``): the async client and the
blocking render client both get in with the keys and both are kept out without them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from blender_support import LoopbackServer, make_curve_keys


@pytest.fixture(scope="module")
def curve_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("curve-server")
    server = LoopbackServer(folder, curve_dir=make_curve_keys(folder / "keys")).start()
    try:
        yield server
    finally:
        server.stop()


def _tiny_scene():
    g = {"means": np.array([[0.0, 0.0, 0.0]], np.float32), "quats": np.array([[1.0, 0.0, 0.0, 0.0]], np.float32),
         "scales": np.full((1, 3), -1.0, np.float32), "opacities": np.array([4.0], np.float32),
         "sh0": np.ones((1, 3), np.float32), "shN": np.zeros((1, 0, 3), np.float32)}
    from addon.core import camera

    wfc = np.eye(4)
    wfc[2, 3] = 4.0  # 4 m up the Z axis, looking down -Z at the Gaussian
    return g, camera.cameras_map(wfc[None], 16.0, 16.0, 8.0, 8.0, 16, 16, near=0.1, far=100.0)


def test_render_client_with_curve_keys_renders(curve_server):
    from addon.core import render_client

    g, cams = _tiny_scene()
    settings = render_client.RenderSettings(endpoint=curve_server.endpoint, curve=curve_server.curve_keys())
    out = render_client.render(g, cams, settings=settings)
    assert out["alpha"][0, 8, 8] > 0.5


def test_render_client_without_keys_is_kept_out(curve_server):
    from addon.core import render_client

    g, cams = _tiny_scene()
    settings = render_client.RenderSettings(endpoint=curve_server.endpoint, connect_timeout_s=1.0)
    with pytest.raises(render_client.RenderError) as err:
        render_client.render(g, cams, settings=settings)
    assert err.value.code == "unreachable"


def test_async_client_with_curve_keys_connects(curve_server, fast_config):
    from addon.core import client

    c = client.Client(fast_config(curve_server.endpoint, curve=curve_server.curve_keys()))
    c.connect()
    try:
        deadline = time.monotonic() + 10.0
        while not c.connected and time.monotonic() < deadline:
            c.poll(0.05)
        assert c.connected
        assert "splat.render" in c.welcome["pipelines"]
    finally:
        c.close()


def test_open_socket_rejects_a_malformed_endpoint():
    from addon.core import connection

    with pytest.raises(connection.ClientError, match="endpoint"):
        connection.open_socket("localhost:5557")
