"""nerfstudio camera_path.json <-> camera-path map."""

import json
import math

import numpy as np
import pytest

from addon.core.formats import FormatError, camera_path
from tests.formats.conftest import orbit_path


def test_round_trip(tmp_path):
    t = 12
    fy = np.linspace(400, 600, t).astype(np.float32)
    path_map = orbit_path(fy, 640, 480, 24.0)
    path = tmp_path / "camera_path.json"
    camera_path.write_camera_path(path, path_map)
    back = camera_path.read_camera_path(path)
    np.testing.assert_array_equal(back["world_from_camera"], path_map["world_from_camera"])
    np.testing.assert_allclose(back["fy"], fy, rtol=1e-6)
    np.testing.assert_allclose(back["fx"], fy, rtol=1e-6)
    assert back["cx"].tolist() == [320.0] * t and back["cy"].tolist() == [240.0] * t
    assert (back["width"], back["height"], back["fps"]) == (640, 480, 24.0)
    assert back["world_from_camera"].dtype == np.float32 and back["world_from_camera"].shape == (t, 4, 4)


def test_reads_nerfstudio_document(tmp_path):
    """A document as nerfstudio's viewer writes it; focal from its own formula (pp_h / tan(fov/2))."""
    c2w = [[1, 0, 0, 0.5], [0, 0, -1, -3], [0, 1, 0, 1.2], [0, 0, 0, 1]]
    doc = {
        "keyframes": [{"matrix": "ignored", "fov": 50, "aspect": 1.5}], "camera_type": "perspective",
        "render_height": 400, "render_width": 600, "fps": 30, "seconds": 2 / 30, "smoothness_value": 0.5,
        "is_cycle": False, "crop": None,
        "camera_path": [{"camera_to_world": sum(c2w, []), "fov": 50, "aspect": 1.5},
                        {"camera_to_world": sum(c2w, []), "fov": 40, "aspect": 1.5}],
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    got = camera_path.read_camera_path(path)
    np.testing.assert_array_equal(got["world_from_camera"][0], np.array(c2w, np.float32))
    np.testing.assert_allclose(got["fy"], [200 / math.tan(math.radians(25)), 200 / math.tan(math.radians(20))], rtol=1e-6)
    assert got["cx"][0] == 300 and got["cy"][0] == 200 and got["fps"] == 30


def test_fps_from_seconds():
    doc = {"render_width": 4, "render_height": 4, "seconds": 2.0,
           "camera_path": [{"camera_to_world": list(np.eye(4).ravel()), "fov": 60}] * 10}
    assert camera_path.camera_path_from_json(doc)["fps"] == 5.0


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("render_width"), "missing 'render_width'"),
    (lambda d: d.update(camera_type="fisheye"), "camera_type 'fisheye' is not supported"),
    (lambda d: d["camera_path"][1].pop("fov"), r"camera_path\[1\]: missing 'fov'"),
    (lambda d: d["camera_path"][0].update(camera_to_world=[1, 2, 3]), r"camera_path\[0\]: 'camera_to_world' must be 16 numbers"),
    (lambda d: d.update(fps=-1), "'fps': expected a positive number, got -1"),
    (lambda d: d.update(camera_path=[]), "non-empty list"),
])
def test_bad_documents(tmp_path, edit, message):
    doc = {"render_width": 8, "render_height": 6, "fps": 24,
           "camera_path": [{"camera_to_world": list(np.eye(4).ravel()), "fov": 60} for _ in range(2)]}
    edit(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=message) as info:
        camera_path.read_camera_path(path)
    assert str(path) in str(info.value)


def test_not_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{nope")
    with pytest.raises(FormatError, match="not valid JSON"):
        camera_path.read_camera_path(path)


def test_unrepresentable_intrinsics():
    base = orbit_path(np.full(2, 500.0), 640, 480, 24)
    with pytest.raises(FormatError, match="centred principal point"):
        camera_path.camera_path_to_json({**base, "cx": 300.0})
    with pytest.raises(FormatError, match="square pixels"):
        camera_path.camera_path_to_json({**base, "fx": 510.0})
