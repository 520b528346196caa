"""Pinhole cameras: the ONLY Blender -> OpenCV camera conversion in the project.

Axes:
    Blender camera (what the wire carries, `camera.matrix_world`): the camera looks down its
        local -Z axis, +Y is up in the image, +X is right.
    OpenCV camera (what the rasterizers use inside `nskernels/`): +X right, +Y down, +Z forward
        (into the scene); a point in front of the camera has positive depth z.
    World: Blender's, right-handed, Z up, metres.

So `camera_from_world_cv = diag(1, -1, -1, 1) @ inverse(world_from_camera_blender)`: flip the
camera's Y and Z axes after going from world to the Blender camera frame.

Intrinsics: pixel (row r, column c) covers [c, c+1) x [r, r+1) of the image plane and its
centre is (c + 0.5, r + 0.5); a point at OpenCV camera coordinates (x, y, z) lands at
(fx * x / z + cx, fy * y / z + cy). Row 0 is the top of the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

# Blender camera frame -> OpenCV camera frame: Y and Z flip sign.
_BLENDER_TO_OPENCV = (1.0, -1.0, -1.0, 1.0)
# The per-camera tensor fields of `Cameras` ([C, ...]); the others are shared by the batch.
_PER_CAMERA = ("world_from_camera", "fx", "fy", "cx", "cy")


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one resolution.

    Attributes:
        world_from_camera: camera-to-world transforms in Blender's camera convention (looks
            down -Z, +Y up), world frame, metres. [C, 4, 4]
        fx: focal length along x, pixels. [C]
        fy: focal length along y, pixels. [C]
        cx: principal point x, pixels (centred: width / 2). [C]
        cy: principal point y, pixels (centred: height / 2). [C]
        width: image width, pixels.
        height: image height, pixels.
        near: Gaussians with camera depth z <= near are culled, metres.
        far: Gaussians with camera depth z >= far are culled, metres.
    """

    world_from_camera: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self) -> None:
        m = self.world_from_camera
        if not isinstance(m, Tensor) or m.dim() != 3 or tuple(m.shape[1:]) != (4, 4):
            shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"cameras.world_from_camera must be a [C, 4, 4] tensor, got {shape}")
        C = m.shape[0]
        if C == 0:
            raise ValueError("cameras.world_from_camera holds no cameras (C = 0)")
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            if not isinstance(v, Tensor):
                v = torch.as_tensor(v, dtype=m.dtype, device=m.device)
            if v.dim() == 0:
                v = v.expand(C)
            if tuple(v.shape) != (C,):
                raise ValueError(f"cameras.{name} must be a scalar or [{C}], got {tuple(v.shape)}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"cameras.{name} has non-finite values")
            setattr(self, name, v.to(device=m.device, dtype=m.dtype))
        if bool((self.fx <= 0).any()) or bool((self.fy <= 0).any()):
            raise ValueError("cameras.fx and cameras.fy must be positive")
        if not bool(torch.isfinite(m).all()):
            raise ValueError("cameras.world_from_camera has non-finite values")
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) <= 0:
                raise ValueError(f"cameras.{name} must be a positive integer, got {v!r}")
            setattr(self, name, int(v))
        if not (0.0 <= float(self.near) < float(self.far)):
            raise ValueError(
                f"cameras.near/far must satisfy 0 <= near < far, got {self.near!r}, {self.far!r}"
            )
        self.near = float(self.near)
        self.far = float(self.far)

    def __len__(self) -> int:
        return self.world_from_camera.shape[0]

    @property
    def device(self) -> torch.device:
        return self.world_from_camera.device

    @classmethod
    def from_wire(cls, cams: dict, device: str | torch.device = "cpu") -> "Cameras":
        """Build from a PROTOCOL.md cameras map.

        Args:
            cams: `world_from_camera` [T, 4, 4] or [4, 4] (Blender convention); `fx, fy, cx, cy`
                scalars or [T]; `width`, `height` ints; optional `near`, `far` floats
                (defaults 0.01 and 1e10). Other keys (`fps`) are ignored.
            device: torch device for the tensors.

        Returns:
            The cameras, float32.

        Raises:
            ValueError: a field is missing or has the wrong shape/value (the message names it).
        """
        if not isinstance(cams, dict):
            raise ValueError(f"cameras must be a map, got {type(cams).__name__}")
        for key in ("world_from_camera", "fx", "fy", "cx", "cy", "width", "height"):
            if key not in cams:
                raise ValueError(f"cameras.{key} is missing")
        m = _as_float_tensor(cams["world_from_camera"], "world_from_camera", device)
        if m.dim() == 2:
            m = m[None]
        intr = {k: _as_float_tensor(cams[k], k, device) for k in ("fx", "fy", "cx", "cy")}
        return cls(
            world_from_camera=m,
            width=_as_int(cams["width"], "width"),
            height=_as_int(cams["height"], "height"),
            near=float(cams.get("near", 0.01)),
            far=float(cams.get("far", 1e10)),
            **intr,
        )

    def camera_from_world(self, dtype: torch.dtype | None = None) -> Tensor:
        """World -> OpenCV camera transforms (+X right, +Y down, +Z forward), in ``dtype``
        (default: that of ``world_from_camera``). [C, 4, 4]"""
        # Invert in float64: camera matrices far from the origin lose digits in float32.
        inv = torch.linalg.inv(self.world_from_camera.double())
        flip = torch.tensor(_BLENDER_TO_OPENCV, dtype=torch.float64, device=inv.device)
        return (flip[None, :, None] * inv).to(dtype or self.world_from_camera.dtype)

    def centers(self) -> Tensor:
        """Camera centres, world frame, metres. [C, 3]"""
        return self.world_from_camera[:, :3, 3]

    def Ks(self) -> Tensor:
        """Intrinsic matrices [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]. [C, 3, 3]"""
        C = len(self)
        K = torch.zeros(C, 3, 3, dtype=self.fx.dtype, device=self.device)
        K[:, 0, 0] = self.fx
        K[:, 1, 1] = self.fy
        K[:, 0, 2] = self.cx
        K[:, 1, 2] = self.cy
        K[:, 2, 2] = 1.0
        return K

    def __getitem__(self, idx: Any) -> "Cameras":
        """Select cameras (an int keeps the batch axis: the result has C = 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return self._map(lambda t: t[idx])

    def to(self, device: str | torch.device) -> "Cameras":
        """The same cameras on another device."""
        return self._map(lambda t: t.to(device))

    def _map(self, fn) -> "Cameras":
        """The cameras with `fn` applied to every per-camera tensor (resolution and range kept)."""
        return replace(self, **{name: fn(getattr(self, name)) for name in _PER_CAMERA})


def _as_float_tensor(value: Any, name: str, device: str | torch.device) -> Tensor:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cameras.{name} must be numeric: {exc}") from None
    return torch.from_numpy(arr.copy()).to(device)


def _as_int(value: Any, name: str) -> int:
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.number) or int(arr) != arr:
        raise ValueError(f"cameras.{name} must be one integer, got {value!r}")
    return int(arr)
