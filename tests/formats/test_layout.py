"""The Gaussian <-> Blender attribute table, without bpy."""

import numpy as np
import pytest

from addon.core import gaussians_layout as layout
from addon.core.formats import FormatError
from tests.formats.conftest import make_gaussians


@pytest.mark.parametrize("k", [0, 3, 8, 15])
def test_table_round_trip(k):
    g = make_gaussians(11, k, seed=k)
    g["labels"] = np.arange(11, dtype=np.int32)
    g["normals"] = np.ones((11, 3), np.float32)
    g["rgb8"] = np.zeros(11, np.uint8)  # no lossless Blender type: left out
    table = layout.gaussian_attributes(g)
    assert list(table)[:4] == [layout.ROTATION, layout.SCALE, layout.OPACITY, layout.SH0]
    assert [n for n in table if n.startswith(layout.SH_REST_PREFIX)] == [layout.sh_rest_name(i) for i in range(k)]
    assert table[layout.ROTATION][:2] == ("QUATERNION", "value")
    assert table["gs_x_labels"][0] == "INT" and table["gs_x_normals"][0] == "FLOAT_VECTOR"
    assert "gs_x_rgb8" not in table and layout.unsupported_extras(g) == ["rgb8"]
    for btype, key, buf in table.values():
        assert buf.ndim == 1 and buf.flags.c_contiguous and buf.dtype in (np.float32, np.int32)
    # Simulate Blender: copy each buffer into the preallocated read buffers.
    specs = layout.attribute_specs(11, {name: btype for name, (btype, _, _) in table.items()})
    for name, (key, buf, _) in specs.items():
        assert key == table[name][1]
        buf[...] = table[name][2]
    back = layout.gaussians_from_attributes(layout.position_buffer(g).copy(), specs)
    for key in ("means", "quats", "scales", "opacities", "sh0", "shN", "labels", "normals"):
        assert back[key].dtype == g[key].dtype and back[key].shape == g[key].shape, key
        assert np.array_equal(back[key].view(np.uint32 if back[key].dtype == np.float32 else np.int32),
                              g[key].view(np.uint32 if g[key].dtype == np.float32 else np.int32)), key


def test_missing_attribute_named():
    with pytest.raises(KeyError, match="gs_opacity"):
        layout.attribute_specs(3, {layout.ROTATION: "QUATERNION", layout.SCALE: "FLOAT_VECTOR", layout.SH0: "FLOAT_VECTOR"})


def test_bad_map():
    g = make_gaussians(3, 3)
    g["scales"] = g["scales"][:2]
    with pytest.raises(FormatError, match=r"'scales' has shape \(2, 3\), expected \(3, 3\)"):
        layout.gaussian_attributes(g)


@pytest.mark.parametrize("n", [8191, 8192, 20001])
def test_sh_rest_buffers_across_blocks(n):
    """The blockwise SH reorder against plain slicing, for counts around the block size."""
    g = make_gaussians(n, 8, seed=n)
    table = layout.gaussian_attributes(g)
    for i in range(8):
        assert np.array_equal(table[layout.sh_rest_name(i)][2], g["shN"][:, i, :].reshape(-1))
    specs = layout.attribute_specs(n, {name: btype for name, (btype, _, _) in table.items()})
    for name, (_, buf, _) in specs.items():
        buf[...] = table[name][2]
    assert np.array_equal(layout.gaussians_from_attributes(layout.position_buffer(g), specs)["shN"], g["shN"])
