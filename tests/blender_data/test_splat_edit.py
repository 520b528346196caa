"""Gaussian selection and edit operators on real bpy: the selection is the mesh's vertex
selection; delete, separate, recolour and transform rewrite the mesh data; export writes it."""

import numpy as np
import pytest

from addon.core import splat_edit
from addon.core.formats import ply
from addon.blender.importers import gaussians as gi
from tests.formats.conftest import make_gaussians

bpy = pytest.importorskip("bpy")


def _object(n=200, k=3):
    g = make_gaussians(n, k, seed=7)
    obj = gi.create_gaussian_object("G", g, collection=bpy.context.scene.collection)
    bpy.context.view_layer.objects.active = obj
    return obj, g


def test_select_delete_and_export(blender_addon, tmp_path):
    from addon.blender import splat_edit as ops

    obj, g = _object()
    assert bpy.ops.nstudio.splat_select(mode="BOX", box_min=(-9, -9, -9), box_max=(0, 9, 9)) == {"FINISHED"}
    sel = ops.get_selection(obj)
    np.testing.assert_array_equal(sel, g["means"][:, 0] <= 0)
    assert bpy.ops.nstudio.splat_select(mode="SPHERE", action="SUBTRACT", centre=(0, 0, 0), radius=1.0) == {"FINISHED"}
    sel = ops.get_selection(obj)
    np.testing.assert_array_equal(sel, (g["means"][:, 0] <= 0) & (np.linalg.norm(g["means"], axis=1) > 1.0))
    assert bpy.ops.nstudio.splat_delete_selected() == {"FINISHED"}
    back = gi.read_gaussians(obj)
    expected = splat_edit.delete(g, sel)
    for key in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        np.testing.assert_array_equal(back[key], expected[key])
    assert not ops.get_selection(obj).any()
    out = tmp_path / "edited.ply"
    assert bpy.ops.nstudio.export_ply(filepath=str(out)) == {"FINISHED"}
    np.testing.assert_array_equal(ply.read_ply(out)["means"], expected["means"])


def test_separate_recolour_transform(blender_addon):
    from addon.blender import splat_edit as ops

    obj, g = _object()
    obj.location = (1.0, 2.0, 3.0)
    bpy.context.view_layer.update()
    assert bpy.ops.nstudio.splat_select(mode="OPACITY", opacity_min=0.5, opacity_max=1.0) == {"FINISHED"}
    sel = ops.get_selection(obj)
    np.testing.assert_array_equal(sel, g["opacities"] >= 0)

    assert bpy.ops.nstudio.splat_recolour_selected(colour=(0.2, 0.9, 0.1)) == {"FINISHED"}
    back = gi.read_gaussians(obj)
    np.testing.assert_allclose(splat_edit.base_colour(back["sh0"][sel]), np.tile([0.2, 0.9, 0.1], (sel.sum(), 1)), atol=1e-6)
    np.testing.assert_array_equal(back["shN"], g["shN"])

    assert bpy.ops.nstudio.splat_transform_selected(translate=(0, 0, 5)) == {"FINISHED"}
    back = gi.read_gaussians(obj)
    np.testing.assert_allclose(back["means"][sel], g["means"][sel] + [0, 0, 5], atol=1e-5)
    np.testing.assert_array_equal(back["means"][~sel], g["means"][~sel])

    assert bpy.ops.nstudio.splat_separate_selected() == {"FINISHED"}
    part = bpy.data.objects["G Part"]
    assert len(part.data.vertices) == sel.sum() and len(obj.data.vertices) == (~sel).sum()
    assert tuple(part.matrix_world.translation) == pytest.approx((1.0, 2.0, 3.0))
    np.testing.assert_allclose(gi.read_gaussians(part)["means"], g["means"][sel] + [0, 0, 5], atol=1e-5)


def test_nothing_selected_cancels(blender_addon):
    obj, g = _object(20)
    assert bpy.ops.nstudio.splat_select(mode="SPHERE", centre=(99, 99, 99), radius=0.1) == {"FINISHED"}
    assert bpy.ops.nstudio.splat_delete_selected() == {"CANCELLED"}
    assert len(obj.data.vertices) == 20


def test_painted_mask_image_and_select_result(blender_addon):
    from addon.blender import splat_edit as ops

    img = bpy.data.images.new("Mask", 8, 4, alpha=True)
    px = np.zeros((4, 8, 4), np.float32)
    px[0, :3] = 1.0  # Blender's row 0 is the bottom row of the picture
    img.pixels.foreach_set(px.reshape(-1))
    m = ops.image_mask(img)
    assert m.shape == (4, 8) and m[3, :3].all() and m.sum() == 3  # the bottom row, seen top-down

    obj, _ = _object(30)

    class Job:
        target = obj.name

    sel = np.zeros(30, bool)
    sel[[2, 5, 7]] = True
    ops.on_select_result(Job(), {"selected": sel})
    np.testing.assert_array_equal(ops.get_selection(obj), sel)
    ops.on_select_result(Job(), {"selected": np.ones(29, bool)})  # a stale result is ignored
    np.testing.assert_array_equal(ops.get_selection(obj), sel)
