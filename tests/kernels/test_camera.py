"""Blender -> OpenCV camera conversion, checked against geometry worked out by hand."""

import math

import numpy as np
import pytest
import torch

from nskernels.camera import Cameras


def _camera(world_from_camera, W=64, H=48, fx=50.0, fy=60.0, cx=None, cy=None):
    return Cameras(
        world_from_camera=torch.as_tensor(world_from_camera, dtype=torch.float32)[None],
        fx=torch.tensor([fx]), fy=torch.tensor([fy]),
        cx=torch.tensor([W / 2 if cx is None else cx]), cy=torch.tensor([H / 2 if cy is None else cy]),
        width=W, height=H,
    )


def _pixel(cam: Cameras, point):
    """Project a world point with the camera's OpenCV matrices -> (column x, row y, depth)."""
    p = cam.camera_from_world()[0] @ torch.tensor([*point, 1.0])
    uvw = cam.Ks()[0] @ p[:3]
    return float(uvw[0] / uvw[2]), float(uvw[1] / uvw[2]), float(p[2])


def _translation(x, y, z):
    m = np.eye(4)
    m[:3, 3] = (x, y, z)
    return m


def test_point_straight_ahead_lands_on_principal_point_with_positive_depth():
    # Identity rotation: a Blender camera looks down world -Z.
    cam = _camera(_translation(1.0, 2.0, 3.0), cx=20.0, cy=30.0)
    u, v, z = _pixel(cam, (1.0, 2.0, 3.0 - 5.0))
    assert u == pytest.approx(20.0, abs=1e-5)
    assert v == pytest.approx(30.0, abs=1e-5)
    assert z == pytest.approx(5.0, abs=1e-5)


def test_up_is_row_zero_and_right_is_increasing_column():
    cam = _camera(_translation(0.0, 0.0, 0.0))
    # Camera +Y (world +Y here) is up: 1 m up at 4 m depth -> fy / 4 pixels above the centre.
    u, v, _ = _pixel(cam, (0.0, 1.0, -4.0))
    assert u == pytest.approx(32.0, abs=1e-5)
    assert v == pytest.approx(24.0 - 60.0 / 4.0, abs=1e-5)
    u, v, _ = _pixel(cam, (1.0, 0.0, -4.0))
    assert u == pytest.approx(32.0 + 50.0 / 4.0, abs=1e-5)
    assert v == pytest.approx(24.0, abs=1e-5)


def test_typical_blender_camera_looking_along_world_y():
    # Blender's default-style camera: rotation (90 deg, 0, 0) about X, so it looks toward +Y
    # with world +Z up; placed at y = -10.
    a = math.radians(90.0)
    m = np.eye(4)
    m[:3, :3] = [[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]]
    m[:3, 3] = (0.0, -10.0, 0.0)
    cam = _camera(m)
    u, v, z = _pixel(cam, (0.0, 0.0, 0.0))
    assert (u, v) == pytest.approx((32.0, 24.0), abs=1e-4) and z == pytest.approx(10.0, abs=1e-4)
    u, v, _ = _pixel(cam, (0.0, 0.0, 2.0))  # world up -> toward row 0
    assert v == pytest.approx(24.0 - 60.0 * 2.0 / 10.0, abs=1e-4)
    u, v, _ = _pixel(cam, (2.0, 0.0, 0.0))  # world +X -> right
    assert u == pytest.approx(32.0 + 50.0 * 2.0 / 10.0, abs=1e-4)
    _, _, z = _pixel(cam, (0.0, -20.0, 0.0))  # behind the camera -> negative depth
    assert z < 0


def test_camera_from_world_inverts_with_axis_flip():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = q, torch.randn(3, generator=g, dtype=torch.float64)
    cam = _camera(m)
    product = cam.camera_from_world()[0].double() @ m
    assert torch.allclose(product, torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)), atol=1e-5)
    assert torch.allclose(cam.centers()[0].double(), m[:3, 3], atol=1e-6)


def test_from_wire_scalars_and_per_camera_arrays():
    mats = np.stack([np.eye(4, dtype=np.float32), _translation(0, 0, 1).astype(np.float32)])
    cams = Cameras.from_wire(
        {"world_from_camera": mats, "fx": 100.0, "fy": np.array([110.0, 120.0], np.float32), "cx": 32,
         "cy": 24, "width": 64, "height": np.int64(48), "near": 0.1, "far": 50.0, "fps": 24}
    )
    assert len(cams) == 2 and cams.width == 64 and cams.height == 48
    assert cams.near == pytest.approx(0.1) and cams.far == pytest.approx(50.0)
    K = cams.Ks()
    assert K.shape == (2, 3, 3)
    assert K[1].tolist() == [[100.0, 0.0, 32.0], [0.0, 120.0, 24.0], [0.0, 0.0, 1.0]]
    one = cams[1]
    assert len(one) == 1 and float(one.fy[0]) == 120.0 and float(one.world_from_camera[0, 2, 3]) == 1.0
    single = Cameras.from_wire({"world_from_camera": np.eye(4), "fx": 1, "fy": 1, "cx": 0, "cy": 0,
                                "width": 2, "height": 2})
    assert single.world_from_camera.shape == (1, 4, 4) and single.near == 0.01


@pytest.mark.parametrize(
    "change, field",
    [
        ({"fx": None}, "cameras.fx is missing"),
        ({"world_from_camera": np.eye(3)}, "cameras.world_from_camera"),
        ({"fy": np.ones(3)}, "cameras.fy"),
        ({"width": -4}, "cameras.width"),
        ({"height": 2.5}, "cameras.height"),
        ({"fx": 0.0}, "cameras.fx and cameras.fy must be positive"),
        ({"near": 5.0, "far": 1.0}, "cameras.near/far"),
    ],
)
def test_from_wire_errors_name_the_field(change, field):
    wire = {"world_from_camera": np.stack([np.eye(4)] * 2), "fx": 1.0, "fy": 1.0, "cx": 0.0, "cy": 0.0,
            "width": 8, "height": 8}
    for k, v in change.items():
        if v is None:
            del wire[k]
        else:
            wire[k] = v
    with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("(", r"\(")):
        Cameras.from_wire(wire)
