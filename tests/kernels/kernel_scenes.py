"""Seeded test scenes (Gaussians in front of Blender-convention cameras) and the render
comparison with justified tolerances that the kernel tests share."""

from __future__ import annotations

import math

import torch

from nskernels.camera import Cameras


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """Blender camera matrix_world at `eye` looking at `target` (camera -Z toward target). [4, 4]"""
    eye = torch.tensor(eye, dtype=torch.float64)
    fwd = torch.tensor(target, dtype=torch.float64) - eye
    fwd = fwd / fwd.norm()
    right = torch.linalg.cross(fwd, torch.tensor(up, dtype=torch.float64))
    right = right / right.norm()
    cam_up = torch.linalg.cross(right, fwd)
    m = torch.eye(4, dtype=torch.float64)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, cam_up, -fwd, eye
    return m.float()


def make_cameras(n: int, width: int, height: int, seed: int = 0, off_centre: bool = False) -> Cameras:
    """n cameras on a ring around the origin, looking at it, ~50 degree horizontal FoV."""
    g = torch.Generator().manual_seed(seed)
    mats, cxs, cys = [], [], []
    for i in range(n):
        angle = 2 * math.pi * i / max(n, 1) + 0.3 * float(torch.rand(1, generator=g))
        eye = (4.0 * math.cos(angle), 4.0 * math.sin(angle), 0.8 + 0.5 * float(torch.rand(1, generator=g)))
        mats.append(look_at(eye, (0.0, 0.0, 0.0)))
        cxs.append(width * (0.35 + 0.3 * float(torch.rand(1, generator=g))) if off_centre else width / 2)
        cys.append(height * (0.35 + 0.3 * float(torch.rand(1, generator=g))) if off_centre else height / 2)
    f = 1.1 * width
    return Cameras(
        world_from_camera=torch.stack(mats),
        fx=torch.full((n,), f),
        fy=torch.full((n,), f * 1.05),
        cx=torch.tensor(cxs),
        cy=torch.tensor(cys),
        width=width,
        height=height,
    )


def make_gaussians(
    n: int,
    sh_degree: int = 3,
    seed: int = 0,
    extent: float = 1.0,
    log_scale: tuple[float, float] = (-3.5, -1.5),
    opacity_logit: tuple[float, float] = (-1.0, 3.0),
    requires_grad: bool = True,
) -> dict[str, torch.Tensor]:
    """n random Gaussians in a cube of half-size `extent` around the origin."""
    g = torch.Generator().manual_seed(seed)
    K = (sh_degree + 1) ** 2 - 1
    lo, hi = log_scale
    olo, ohi = opacity_logit
    params = {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1) * extent,
        "quats": torch.randn(n, 4, generator=g),
        "scales": lo + (hi - lo) * torch.rand(n, 3, generator=g),
        "opacities": olo + (ohi - olo) * torch.rand(n, generator=g),
        "sh0": torch.randn(n, 3, generator=g),
        "shN": 0.3 * torch.randn(n, K, 3, generator=g),
    }
    for t in params.values():
        t.requires_grad_(requires_grad)
    return params


def edge_scene():
    """Gaussians at the edges of what the rasterizer handles, seen by one camera at the origin
    looking down -Z (Blender), 48 x 32 px, non-centred principal point."""
    g = torch.Generator().manual_seed(3)
    rows = []

    def add(mean, log_scale, logit):
        rows.append((mean, log_scale, logit))

    for i in range(30):  # ordinary ones in view
        add((float(torch.rand(1, generator=g)) - 0.5, float(torch.rand(1, generator=g)) - 0.5,
             -3.0 - float(torch.rand(1, generator=g))), (-3.0, -2.5, -2.8), 1.0)
    add((0.0, 0.0, 2.0), (-2.0, -2.0, -2.0), 3.0)  # behind the camera
    add((0.0, 0.0, -0.005), (-2.0, -2.0, -2.0), 3.0)  # inside the near plane
    add((5.0, 0.0, -3.0), (-3.0, -3.0, -3.0), 3.0)  # far outside the image, small
    add((2.5, 0.0, -3.0), (-0.5, -0.5, -0.5), 3.0)  # centre outside, reaches in (clamped J)
    add((0.1, 0.1, -3.0), (-12.0, -12.0, -12.0), 2.0)  # tiny: only the 0.3 px^2 dilation
    add((0.0, 0.0, -6.0), (1.5, 1.5, 1.5), -1.0)  # huge: covers every tile
    add((-0.2, 0.2, -3.5), (-2.0, -2.0, -2.0), -30.0)  # zero opacity
    add((0.2, -0.1, -3.2), (-2.0, -4.0, -1.0), 0.0)  # elongated
    means = torch.tensor([r[0] for r in rows])
    scales = torch.tensor([r[1] for r in rows])
    logits = torch.tensor([r[2] for r in rows])
    n = len(rows)
    params = {"means": means, "quats": torch.randn(n, 4, generator=g), "scales": scales,
              "opacities": logits, "sh0": torch.randn(n, 3, generator=g),
              "shN": 0.3 * torch.randn(n, 8, 3, generator=g)}
    for t in params.values():
        t.requires_grad_(True)
    cams = Cameras(world_from_camera=torch.eye(4)[None], fx=torch.tensor([40.0]), fy=torch.tensor([42.0]),
                   cx=torch.tensor([20.0]), cy=torch.tensor([18.5]), width=48, height=32, near=0.01, far=100.0)
    return params, cams


PARAMS = ("means", "quats", "scales", "opacities", "sh0", "shN")

# Tolerances. Outputs are float32 sums of at most a few hundred terms c_i alpha_i T_i with
# |c_i| <~ 3: rounding differences between a float64 sequential walk (numba), float32
# cumulative products (dense, fallback) and two formulations of the projection are ~1e-6, so
# 2e-5 absolute leaves 10x headroom while a wrong rule (a missed Gaussian, a different order,
# an off-by-half pixel centre) changes pixels by >= 1/255 * 0.01.
ATOL_IMAGE = 2e-5
# Depth is sum(z w) / alpha with z ~ 3-5 m: same relative error as the images, times z.
ATOL_DEPTH = 1e-4
# Gradients are sums over pixels of products of such terms; compared relative to the largest
# gradient of the same parameter. float32 cumprod backward (dense) divides by the running
# product, which costs up to ~1e-5 relative where T reaches 1e-4, hence 2e-4 (the fallback's
# cumprod twice that).
RTOL_GRAD = 2e-4


def cotangents(out, seed=1):
    """Seeded random cotangents for rgb, alpha and depth."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(out.rgb.shape, generator=g), torch.randn(out.alpha.shape, generator=g),
            torch.randn(out.depth.shape, generator=g)]


def loss_of(out, v):
    """sum(out * v) over rgb, alpha and the finite depths: its gradient is the VJP with v."""
    depth = torch.where(torch.isfinite(out.depth), out.depth, torch.zeros_like(out.depth))
    return (out.rgb * v[0]).sum() + (out.alpha * v[1]).sum() + (depth * v[2]).sum()


def compare(out, ref, params, rtol_grad=RTOL_GRAD):
    """Assert two renders agree: images, depth (inf pattern included) and VJPs w.r.t. PARAMS."""
    assert torch.allclose(out.rgb, ref.rgb, atol=ATOL_IMAGE, rtol=0), (out.rgb - ref.rgb).abs().max()
    assert torch.allclose(out.alpha, ref.alpha, atol=ATOL_IMAGE, rtol=0), (out.alpha - ref.alpha).abs().max()
    finite = torch.isfinite(ref.depth)
    assert torch.equal(finite, torch.isfinite(out.depth))
    assert torch.allclose(out.depth[finite], ref.depth[finite], atol=ATOL_DEPTH, rtol=0)
    v = cotangents(ref)
    grads = torch.autograd.grad(loss_of(out, v), [params[k] for k in PARAMS], allow_unused=True, retain_graph=True)
    ref_grads = torch.autograd.grad(loss_of(ref, v), [params[k] for k in PARAMS], allow_unused=True, retain_graph=True)
    for name, a, b in zip(PARAMS, grads, ref_grads):
        if b is None or b.numel() == 0 or not b.abs().max() > 0:  # unused, empty (shN at degree 0) or zero
            assert a is None or a.numel() == 0 or not a.abs().max() > 0, name
            continue
        scale = float(b.abs().max())
        err = float((a - b).abs().max())
        assert err <= rtol_grad * scale, f"d/d{name}: max error {err:.3g} vs max |grad| {scale:.3g}"
