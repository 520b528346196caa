"""A slow, obvious Gaussian renderer written from shared/PROTOCOL.md alone.

"Gaussian rendering conventions" and "Camera", step by step, in float64 numpy, one Gaussian
at a time; degree <= 1 spherical harmonics (all the conformance scene needs). Nothing from
this project is imported: it is the independent expectation the server's `splat.render` is
compared with.
"""

from __future__ import annotations

import math

import numpy as np

C0 = 0.28209479177387814          # 3DGS code's SH constants
C1 = 0.4886025119029199


def quat_to_matrix(q) -> np.ndarray:
    """Rotation of the normalised quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def sh_colour(sh0, shN, direction) -> np.ndarray:
    """Degree-0/1 real SH (3DGS basis: -C1 y, +C1 z, -C1 x) + 0.5, clamped below at 0."""
    x, y, z = direction
    colour = C0 * np.asarray(sh0, np.float64)
    if len(shN) >= 3:
        colour = colour - C1 * y * shN[0] + C1 * z * shN[1] - C1 * x * shN[2]
    return np.maximum(colour + 0.5, 0.0)


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """A Blender camera's matrix_world: looks down its -Z at ``target``, +Y up."""
    position, target, up = (np.asarray(a, np.float64) for a in (position, target, up))
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1] = right, np.cross(right, forward)
    matrix[:3, 2], matrix[:3, 3] = -forward, position
    return matrix


def render(gaussians: dict, world_from_camera, fx: float, fy: float, cx: float, cy: float,
           width: int, height: int, near: float, far: float):
    """One premultiplied frame: ``(rgb (H,W,3), alpha (H,W), depth (H,W))`` in float64."""
    g = {key: np.asarray(gaussians[key], np.float64)
         for key in ("means", "quats", "scales", "opacities", "sh0", "shN")}
    matrix = np.asarray(world_from_camera, np.float64)
    rotation, centre = matrix[:3, :3], matrix[:3, 3]
    # World -> camera axes (x right, y down, z = depth along the camera's -Z), so that
    # column = fx x/z + cx and row = fy y/z + cy with row 0 at the top.
    to_view = np.diag([1.0, -1.0, -1.0]) @ rotation.T
    tan_x, tan_y = width / (2 * fx), height / (2 * fy)
    lim_x = (-(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    lim_y = (-(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    splats = []
    for i in range(len(g["means"])):
        p = to_view @ (g["means"][i] - centre)
        z = p[2]
        if z <= near or z >= far:
            continue
        r = quat_to_matrix(g["quats"][i])
        s = np.diag(np.exp(g["scales"][i]))
        cov = to_view @ r @ s @ s.T @ r.T @ to_view.T
        tx, ty = np.clip(p[0] / z, *lim_x), np.clip(p[1] / z, *lim_y)
        jac = np.array([[fx / z, 0.0, -fx * tx / z], [0.0, fy / z, -fy * ty / z]])
        inv = np.linalg.inv(jac @ cov @ jac.T + 0.3 * np.eye(2))
        du, dv = cols - (fx * p[0] / z + cx), rows - (fy * p[1] / z + cy)
        power = inv[0, 0] * du * du + 2 * inv[0, 1] * du * dv + inv[1, 1] * dv * dv
        opacity = 1 / (1 + math.exp(-g["opacities"][i]))
        alpha = np.minimum(0.99, opacity * np.exp(-0.5 * power))
        d = g["means"][i] - centre
        splats.append((z, np.where(alpha < 1 / 255, 0.0, alpha),
                       sh_colour(g["sh0"][i], g["shN"][i], d / np.linalg.norm(d))))
    splats.sort(key=lambda s: s[0])                      # front to back
    rgb = np.zeros((height, width, 3))
    transmittance = np.ones((height, width))
    depth_sum, weight = np.zeros((height, width)), np.zeros((height, width))
    for z, alpha, colour in splats:
        w = alpha * transmittance
        rgb += w[..., None] * colour
        depth_sum += z * w
        weight += w
        transmittance = transmittance * (1 - alpha)
    alpha = 1 - transmittance
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(alpha < 1 / 255, np.inf, depth_sum / weight)
    return rgb, alpha, depth
