"""The display material, rendered: SH DC colour and sigmoid opacity on both proxy branches."""

import numpy as np
import pytest

from addon.blender import gaussian_nodes
from addon.blender.importers import gaussians as gi

bpy = pytest.importorskip("bpy")
C0 = 0.28209479177387814


@pytest.mark.parametrize("as_points", [False, True])
def test_rendered_colour_and_alpha(tmp_path, as_points):
    scene = bpy.context.scene
    for obj in list(bpy.data.objects):
        if obj.type != "CAMERA":
            bpy.data.objects.remove(obj)
    scene.camera.location, scene.camera.rotation_euler = (0, 0, 5), (0, 0, 0)
    colour = np.array([0.8, 0.2, 0.1])
    g = {"means": np.zeros((1, 3), np.float32), "quats": np.array([[2.0, 0, 0, 0]], np.float32),
         "scales": np.zeros((1, 3), np.float32), "opacities": np.zeros(1, np.float32),  # alpha 0.5
         "sh0": ((colour - 0.5) / C0)[None].astype(np.float32), "shN": np.zeros((1, 0, 3), np.float32)}
    obj = gi.create_gaussian_object("G", g)
    gaussian_nodes.set_proxy_inputs(obj, point_threshold=0 if as_points else 10)
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 16, False
    scene.render.resolution_x = scene.render.resolution_y = 16
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.filepath = str(tmp_path / "r.exr")
    bpy.ops.render.render(write_still=True)
    px = np.empty(16 * 16 * 4, np.float32)
    bpy.data.images.load(str(tmp_path / "r.exr")).pixels.foreach_get(px)
    px = px.reshape(16, 16, 4)[8, 8]
    # Each surface crossing has alpha sigmoid(0) = 0.5. The ray crosses the ico-sphere twice (in
    # and out): alpha = 1 - 0.5^2 = 0.75, premultiplied colour 0.5 c + 0.5 * 0.5 c = 0.75 c.
    # Cycles intersects a point-cloud point once: alpha 0.5, colour 0.5 c.
    alpha = 0.5 if as_points else 0.75
    np.testing.assert_allclose(px, [*(alpha * colour), alpha], atol=2e-3)
