"""Initial points for splat training, numpy only: surface samples coloured by the captured views.

- area-weighted surface sampling of triangle meshes with a seeded RNG;
- colouring of sampled points from the captured images, with visibility decided by the captured
  depth, so any material (procedural ones included) gives the points their rendered colour.
"""

from __future__ import annotations

import numpy as np

from .camera import project


def triangle_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Areas of triangles. vertices [V, 3], faces [F, 3] -> [F]"""
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0):
    """Points spread uniformly over a triangle mesh's surface (area-weighted).

    Args:
        vertices: world frame, metres. [V, 3]
        faces: vertex indices of triangles. [F, 3]
        count: number of points P.
        seed: seed of the numpy Generator (same seed, same points).

    Returns:
        points: [P, 3] float32 and face index of each point [P] int64.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be (V,3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F,3), got {faces.shape}")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError("faces index outside vertices")
    areas = triangle_areas(vertices, faces)
    total = areas.sum()
    if not total > 0:
        raise ValueError("mesh has no surface area to sample")
    rng = np.random.default_rng(seed)
    face = rng.choice(len(faces), size=count, p=areas / total)
    # Uniform barycentrics by the square-root trick (Osada et al. 2002, "Shape distributions").
    r1 = np.sqrt(rng.random(count))
    r2 = rng.random(count)
    tri = vertices[faces[face]]
    pts = (1.0 - r1)[:, None] * tri[:, 0] + (r1 * (1.0 - r2))[:, None] * tri[:, 1] + (r1 * r2)[:, None] * tri[:, 2]
    return pts.astype(np.float32), face


def colour_points(
    points: np.ndarray,
    images: np.ndarray,
    depths: np.ndarray,
    cameras: dict,
    rel_tolerance: float = 0.02,
):
    """Colour points by the captured images where the captured depth says they are visible.

    A point is seen by a camera when it projects inside the image, in front of the camera, onto a
    covered pixel (alpha > 0.5) whose depth agrees with the point's to `rel_tolerance` (relative).
    Its colour is the mean over the cameras that see it (nearest pixel).

    Args:
        points: world frame, metres. [P, 3]
        images: captured views, straight alpha in the 4th channel when present. [T, H, W, 3|4]
        depths: distance along -Z, metres, inf where empty. [T, H, W]
        cameras: the cameras the views were rendered with (T of them).
        rel_tolerance: relative depth agreement needed to count as visible.

    Returns:
        colors: mean visible colour, 0.5 grey where no camera sees the point. [P, 3] float32
        seen: number of cameras that see each point. [P] int64
    """
    images = np.asarray(images)
    depths = np.asarray(depths)
    t, h, w = depths.shape
    if images.shape[:3] != (t, h, w):
        raise ValueError(f"images {images.shape} and depths {depths.shape} disagree")
    pix, z = project(points, cameras)
    col = np.floor(pix[..., 0]).astype(np.int64)
    row = np.floor(pix[..., 1]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h) & (z > 0)
    col_c, row_c = np.clip(col, 0, w - 1), np.clip(row, 0, h - 1)
    cam_idx = np.arange(t)[:, None]
    d_pix = depths[cam_idx, row_c, col_c]
    visible = inside & np.isfinite(d_pix) & (np.abs(d_pix - z) <= rel_tolerance * np.maximum(z, 1e-9))
    if images.shape[-1] == 4:
        visible &= images[cam_idx, row_c, col_c, 3] > 0.5
    rgb = images[cam_idx, row_c, col_c, :3].astype(np.float64)
    seen = visible.sum(axis=0)
    total = (rgb * visible[..., None]).sum(axis=0)
    colors = np.where(seen[:, None] > 0, total / np.maximum(seen, 1)[:, None], 0.5)
    return colors.astype(np.float32), seen
