"""splat.to_mesh through run() with a real Job: a sphere of surface Gaussians becomes a closed mesh
within 1 % of the extent of the true sphere, with the Gaussians' colours."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from addon.wire.schema import PipelineError, check_inputs
from pipelines.base import Cancelled
from pipelines.splat import to_mesh

C0 = 0.28209479177387814
RED, BLUE = np.array([0.8, 0.2, 0.1]), np.array([0.1, 0.3, 0.9])


def _fibonacci(n):
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = math.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def sphere_gaussians(n=5000, radius=1.0, centre=(0.3, -0.2, 0.5)):
    """Flat Gaussians tangent to a sphere (a surface as 3DGS/2DGS learn one): red above the
    equator, blue below."""
    d = _fibonacci(n)
    axis = np.cross([0.0, 0.0, 1.0], d)
    s = np.linalg.norm(axis, axis=1, keepdims=True)
    angle = np.arctan2(s[:, 0], d[:, 2])  # rotate +Z onto the normal
    axis = np.where(s > 1e-9, axis / np.maximum(s, 1e-9), [1.0, 0.0, 0.0])
    quats = np.concatenate([np.cos(angle / 2)[:, None], axis * np.sin(angle / 2)[:, None]], 1)
    spacing = radius * math.sqrt(4 * math.pi / n)
    colour = np.where(d[:, 2:3] > 0, RED, BLUE)
    return {
        "means": (d * radius + centre).astype(np.float32), "quats": quats.astype(np.float32),
        "scales": np.tile(np.log([0.7 * spacing, 0.7 * spacing, 0.003]), (n, 1)).astype(np.float32),
        "opacities": np.full(n, 3.0, np.float32), "sh0": ((colour - 0.5) / C0).astype(np.float32),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


PARAMS = to_mesh.Params(resolution=72, views=16, image_size=128)


@pytest.fixture(scope="module")
def sphere_mesh():
    from tests.pipelines.conftest import RecordingJob

    job = RecordingJob()
    out = to_mesh.run({"gaussians": sphere_gaussians()}, PARAMS, job)
    return out, job


def _chamfer_to_sphere(vertices, faces, centre=(0.3, -0.2, 0.5), radius=1.0):
    v = vertices - np.asarray(centre)
    mesh_to_sphere = np.abs(np.linalg.norm(v, axis=1) - radius).mean()
    # the other way: points on the true sphere to the mesh (its vertices and face centres)
    samples = _fibonacci(4000) * radius
    pts = np.concatenate([v, v[faces].mean(1)])
    sphere_to_mesh = cKDTree(pts).query(samples)[0].mean()
    return 0.5 * (mesh_to_sphere + sphere_to_mesh)


def test_sphere_is_within_one_percent(sphere_mesh):
    out, job = sphere_mesh
    check_inputs(to_mesh.OUTPUTS, out)
    v, f, c = out["vertices"], out["faces"], out["colors"]
    assert v.dtype == np.float32 and f.dtype == np.int32 and c.shape == v.shape
    extent = 2.0
    chamfer = _chamfer_to_sphere(v, f)
    assert chamfer <= 0.01 * extent, chamfer
    # closed: every edge shared by exactly two faces, and faces wind outwards
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)
    a, b, cc = v[f[:, 0]] - [0.3, -0.2, 0.5], v[f[:, 1]] - [0.3, -0.2, 0.5], v[f[:, 2]] - [0.3, -0.2, 0.5]
    assert np.einsum("ij,ij->i", a, np.cross(b, cc)).sum() / 6 == pytest.approx(4 / 3 * math.pi, rel=0.06)
    # progress while rendering (up to every view), then fusion, then extraction
    stages = [s for s, *_ in job.progress_log]
    renders = [step for s, step, total, *_ in job.progress_log if s == "render"]
    assert renders and renders[-1] == PARAMS.views and renders == sorted(renders)
    assert stages.index("fuse") > stages.index("render") and stages[-1] == "extract"


def test_vertex_colours_are_the_gaussians(sphere_mesh):
    out, _ = sphere_mesh
    z = out["vertices"][:, 2] - 0.5
    np.testing.assert_allclose(out["colors"][z > 0.2].mean(0), RED, atol=0.03)
    np.testing.assert_allclose(out["colors"][z < -0.2].mean(0), BLUE, atol=0.03)
    assert np.abs(out["colors"][z > 0.2] - RED).max() < 0.15


def test_decimation_keeps_the_shape(sphere_mesh):
    out, _ = sphere_mesh
    v, f, c = to_mesh.decimate_clustering(out["vertices"], out["faces"], out["colors"], 4000)
    assert 1000 < len(f) <= 4000 and len(c) == len(v)
    assert f.max() < len(v)
    assert _chamfer_to_sphere(v, f) <= 0.02 * 2.0


def test_bad_params_and_cancel(make_job):
    g = sphere_gaussians(300)
    with pytest.raises(PipelineError) as err:
        to_mesh.run({"gaussians": g}, to_mesh.Params(bounds=[0, 0, 0, 1, -1, 1]), make_job())
    assert err.value.field == "params.bounds"
    with pytest.raises(Cancelled):
        to_mesh.run({"gaussians": g}, to_mesh.Params(resolution=32, views=8, image_size=64), make_job(cancel_after=1))
