"""The render handle end to end on a real server: upload once, render frames by reference."""

from __future__ import annotations

import numpy as np
import pytest

from addon.core import render_client


def _gaussians(n=300):
    rng = np.random.default_rng(4)
    return {"means": rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32),
            "quats": rng.normal(size=(n, 4)).astype(np.float32),
            "scales": rng.uniform(-3.5, -2.5, (n, 3)).astype(np.float32),
            "opacities": rng.uniform(0, 3, n).astype(np.float32),
            "sh0": rng.normal(size=(n, 3)).astype(np.float32), "shN": np.zeros((n, 0, 3), np.float32)}


def _camera(x=0.0):
    m = np.eye(4, dtype=np.float32)
    m[:3, 3] = (x, 0.0, 3.0)
    return {"world_from_camera": m[None], "fx": 40.0, "fy": 40.0, "cx": 20.0, "cy": 15.0, "width": 40, "height": 30}


def test_upload_once_render_by_reference(server):
    g = _gaussians()
    conn = render_client.Connection(render_client.RenderSettings(endpoint=server.endpoint), lambda: False)
    try:
        conn.handshake()
        ref = conn.upload(g)
        assert ref.startswith("g-")
        for x in (0.0, 0.1):
            by_ref = conn.render(ref, _camera(x))
            by_value = conn.render(g, _camera(x))
            assert by_ref["alpha"].max() > 0.5
            for key in ("rgb", "alpha", "depth"):
                np.testing.assert_array_equal(by_ref[key], by_value[key])
        with pytest.raises(render_client.RenderError, match="upload the Gaussians again"):
            conn.render("g-0000", _camera())
    finally:
        conn.close()


def test_render_kept_uploads_once_and_again_when_the_server_lost_it(server, monkeypatch):
    g = _gaussians()
    conn = render_client.Connection(render_client.RenderSettings(endpoint=server.endpoint), lambda: False)
    uploads = []
    real_upload = render_client.Connection.upload

    def counting_upload(self, gaussians):
        uploads.append(len(gaussians["means"]))
        return real_upload(self, gaussians)

    monkeypatch.setattr(render_client.Connection, "upload", counting_upload)
    try:
        conn.handshake()
        expected = conn.render(g, _camera(0.05))
        for _ in range(3):
            out = conn.render_kept(("ball", 1), lambda: g, _camera(0.05))
            np.testing.assert_array_equal(out["rgb"], expected["rgb"])
        assert uploads == [300]
        # the server forgot it (restart, full cache): one new upload, the render still succeeds
        render_client._KEPT[(server.endpoint, ("ball", 1))] = "g-" + "0" * 32
        out = conn.render_kept(("ball", 1), lambda: g, _camera(0.05))
        np.testing.assert_array_equal(out["rgb"], expected["rgb"])
        assert uploads == [300, 300]
    finally:
        conn.close()
        render_client._KEPT.clear()


def test_viewport_redraws_send_a_large_set_once(server, monkeypatch):
    from addon.core import viewport

    uploads = []
    real_upload = render_client.Connection.upload

    def counting_upload(self, gaussians):
        uploads.append(len(gaussians["means"]))
        return real_upload(self, gaussians)

    monkeypatch.setattr(render_client.Connection, "upload", counting_upload)
    monkeypatch.setattr(viewport, "UPLOAD_MIN_GAUSSIANS", 100)
    g, small = _gaussians(300), _gaussians(50)
    renderer = viewport.ViewportRenderer(render_client.RenderSettings(endpoint=server.endpoint))
    try:
        cams = [viewport.ViewCamera(np.array(_camera(x)["world_from_camera"][0], np.float64), 40.0, 40.0, 20.0, 15.0,
                                    40, 30, 0.1, 100.0) for x in (0.0, 0.05, 0.1)]
        frames = [renderer.wait_frame(renderer.submit(g, c), 60) for c in cams]
        assert uploads == [300]  # three redraws, one upload
        assert all(f.rgba[..., 3].max() > 0 for f in frames)
        renderer.wait_frame(renderer.submit(small, cams[0]), 60)  # small: by value
        assert uploads == [300]
        g2 = {k: v.copy() for k, v in g.items()}  # a new map (the scene changed): uploaded again
        renderer.wait_frame(renderer.submit(g2, cams[1]), 60)
        assert uploads == [300, 300]
    finally:
        assert renderer.stop(10)
    # the redraw by reference draws what the by-value render draws
    direct = render_client.render(g, cams[2].cameras_map(), settings=render_client.RenderSettings(endpoint=server.endpoint))
    np.testing.assert_allclose(frames[2].rgba[::-1, :, 3], direct["alpha"][0], atol=1e-6)  # rgba rows bottom-up
