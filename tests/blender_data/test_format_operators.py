"""The import operator reads compressed PLY and SPZ by content; export writes .spz and .splat;
a PLY without normals is exported without them."""

import numpy as np
import pytest

from addon.core.formats import axes, playcanvas, ply, splat, spz
from addon.blender.importers import gaussians as gi
from tests.formats.conftest import make_gaussians

bpy = pytest.importorskip("bpy")


def _active():
    return bpy.context.view_layer.objects.active


def test_spz_import_is_turned_z_up_and_exported_back(operators, tmp_path):
    g = make_gaussians(50, 3, seed=2)
    src = tmp_path / "in.spz"
    spz.write_spz(src, g)
    stored = spz.read_spz(src)
    assert bpy.ops.nstudio.import_ply(filepath=str(src)) == {"FINISHED"}
    obj = _active()
    assert obj.name == "in" and obj["nstudio_source_format"] == "spz"
    back = gi.read_gaussians(obj)
    expected = axes.convert_axes(stored, "y_up_to_z_up")
    np.testing.assert_allclose(back["means"], expected["means"], atol=1e-6)
    dst = tmp_path / "out.spz"
    assert bpy.ops.nstudio.export_spz(filepath=str(dst)) == {"FINISHED"}
    again = spz.read_spz(dst)
    np.testing.assert_allclose(again["means"], stored["means"], atol=1e-3)
    np.testing.assert_allclose(again["scales"], stored["scales"], atol=1e-5)


def test_compressed_ply_import_by_content_and_splat_export(operators, tmp_path):
    g = make_gaussians(300, 0, seed=4)
    src = tmp_path / "thing.compressed.ply"
    playcanvas.write_compressed_ply(src, g)
    assert bpy.ops.nstudio.import_ply(filepath=str(src)) == {"FINISHED"}
    obj = _active()
    assert obj.name == "thing" and obj["nstudio_source_format"] == "compressed_ply"
    stored = playcanvas.read_compressed_ply(src)
    np.testing.assert_allclose(gi.read_gaussians(obj)["means"], stored["means"], atol=1e-6)
    dst = tmp_path / "out.splat"
    assert bpy.ops.nstudio.export_splat(filepath=str(dst)) == {"FINISHED"}
    np.testing.assert_allclose(splat.read_splat(dst)["means"], stored["means"], atol=1e-6)


def test_ply_without_normals_stays_without(operators, tmp_path):
    g = make_gaussians(20, 0, seed=1)
    src, dst = tmp_path / "plain.ply", tmp_path / "out.ply"
    ply.write_ply(src, g, normals=False)
    bpy.ops.nstudio.import_ply(filepath=str(src))
    assert bpy.ops.nstudio.export_ply(filepath=str(dst)) == {"FINISHED"}
    assert dst.read_bytes() == src.read_bytes()
    assert bpy.ops.nstudio.export_ply(filepath=str(dst), normals="YES") == {"FINISHED"}
    assert "nx" in ply.vertex_properties(dst)


def test_import_error_names_the_format(operators, tmp_path):
    path = tmp_path / "fake.splat"
    spz.write_spz(tmp_path / "x.spz", make_gaussians(5, 0))
    blob = (tmp_path / "x.spz").read_bytes()
    path.write_bytes(blob[:-30])  # a truncated SPZ under a .splat name
    with pytest.raises(RuntimeError, match="this is an SPZ file"):
        bpy.ops.nstudio.import_ply(filepath=str(path))
