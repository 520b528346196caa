"""F12 animation renders upload the Gaussians once (splat.upload) and send only the camera for
every later frame; moving an object uploads the new set."""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import final_shot_helpers as h  # noqa: E402


def test_animation_uploads_once(blender_addon, server, tmp_path, monkeypatch):
    from addon.blender.importers.gaussians import create_gaussian_object
    from addon.core import render_client

    uploads = []
    real_upload = render_client.Connection.upload

    def counting_upload(self, gaussians):
        uploads.append(len(gaussians["means"]))
        return real_upload(self, gaussians)

    monkeypatch.setattr(render_client.Connection, "upload", counting_upload)
    render_client._KEPT.clear()
    scene = bpy.context.scene
    h.set_resolution(scene)
    cam = h.add_camera(scene)
    rng = np.random.default_rng(2)
    n = 60
    g = {"means": rng.uniform(-1, 1, (n, 3)).astype(np.float32), "quats": rng.normal(size=(n, 4)).astype(np.float32),
         "scales": rng.uniform(-2.5, -1.5, (n, 3)).astype(np.float32),
         "opacities": rng.uniform(0, 3, n).astype(np.float32), "sh0": h.sh0_for(rng.uniform(0.1, 0.9, (n, 3))),
         "shN": np.zeros((n, 0, 3), np.float32)}
    obj = create_gaussian_object("Splats", g, collection=scene.collection)
    # the camera moves over three frames; the Gaussians do not
    for frame, x in ((1, 0.0), (3, 0.4)):
        cam.location.x = x
        cam.keyframe_insert("location", index=0, frame=frame)
    scene.frame_start, scene.frame_end = 1, 3
    scene.render.engine = "NSTUDIO_SPLATS"
    scene.nstudio_final_shot.endpoint = server.endpoint
    scene.render.use_compositing = False
    scene.render.film_transparent = True
    h.render_exr(scene, tmp_path / "f_####", animation=True)
    assert len(list(tmp_path.glob("f_*.exr"))) == 3
    assert uploads == [n]
    # an edit (the object moves): the next render uploads the moved set once
    obj.location.z = 0.3
    bpy.context.view_layer.update()
    h.render_exr(scene, tmp_path / "g_####", animation=True)
    assert uploads == [n, n]
    render_client._KEPT.clear()
