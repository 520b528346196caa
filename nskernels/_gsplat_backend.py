"""The gsplat backend: `gsplat.rasterization` (gsplat 1.5.3) on CUDA, mapped to our conventions.

Imported only when the gsplat backend is used (gsplat may build its CUDA code on first call).

What gsplat 1.5.3 does with the arguments below, read from its source (rendering.py,
cuda/csrc/ProjectionEWA3DGSFused.cu, RasterizeToPixels3DGSFwd.cu, include/Utils.cuh):
- `viewmats` are OpenCV camera_from_world [C, 4, 4] and `Ks` [C, 3, 3]; pixel centres at
  (c + 0.5, r + 0.5); the Jacobian is clamped to the image +- 0.3 x the half field of view
  (`persp_proj`) and `eps2d` = 0.3 px^2 is added to the 2D covariance: as PROTOCOL.md.
- It takes activated values: `scales` = exp(log scales), `opacities` = sigmoid(logits);
  quaternions (w, x, y, z) unnormalised.
- With `sh_degree` set, `colors` are SH coefficients [N, K, 3] (coefficient 0 first), evaluated
  at normalise(mean - camera centre) in world space, then clamp_min(. + 0.5, 0): as ours.
- "RGB+D" appends the per-pixel sum of z_i w_i (w_i = alpha_i T_i) as a fourth channel, which is
  our `depth_sum`; alpha is 1 - T_final = sum w_i. ("RGB+ED" would return that divided by
  max(alpha, 1e-10), i.e. 0 where empty; `finish` does the division with our inf rule instead.)
- Compositing: front to back by depth, alpha_i = min(0.999, o_i G_i), skipped below 1/255, stop
  before T would fall to 1e-4 or below (exclusive): as ours except the cap.

Differences from our torch backend that remain (none matters where opacities stay below 0.99):
- gsplat caps alpha_i at 0.999, PROTOCOL.md at 0.99: pixels where one Gaussian with opacity
  > 0.99 is nearly centred differ.
- gsplat culls z < near and z > far (we cull z <= near, z >= far): only exact ties differ.
- gsplat's radii are ceil()-ed before its on-image test, so `radii`/`visible` may mark a
  Gaussian whose alpha >= 1/255 box ends less than 1 px outside the image; it adds nothing.
- gsplat's kernels are float32 only: inputs are cast to float32 and gradients cast back.

Front-surface depth: gsplat 1.5.3 has no transmittance-threshold depth for 3D Gaussians (its
"median depth" exists only for 2DGS), so `depth_front` comes from a second, gradient-free pass of
our own projection, tile binning and pure-torch compositing on the same CUDA tensors
(`front_depth_pass`): the same rule as the CPU backends, bit for bit in its logic.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .camera import Cameras
from .conventions import EPS2D
from .output import RenderMeta, RenderOutput, finish


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    sh0: Tensor,
    shN: Tensor,
    cameras: Cameras,
    sh_degree: int,
    background: Tensor | None,
):
    """`rasterize()` on gsplat; same arguments (already checked) and the same `RenderOutput`.

    Args:
        means: Gaussian centres, world frame, metres. [N, 3]
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations, log metres. [N, 3]
        opacities: opacity logits. [N]
        sh0: degree-0 SH coefficients. [N, 3]
        shN: higher SH coefficients. [N, K, 3]
        cameras: C cameras.
        sh_degree: SH degree to evaluate (<= the degree shN holds).
        background: [C, 3] or None (premultiplied).

    Returns:
        The `RenderOutput`, with gsplat's `means2d`, `radii` and `depths` in `meta`.
    """
    import gsplat

    f32 = torch.float32
    colours = torch.cat([sh0[:, None, :], shN], dim=1).to(f32)  # [N, K + 1, 3]
    render, alphas, info = gsplat.rasterization(
        means=means.to(f32),
        quats=quats.to(f32),
        scales=torch.exp(scales.to(f32)),
        opacities=torch.sigmoid(opacities.to(f32)),
        colors=colours,
        viewmats=cameras.camera_from_world().to(f32),  # OpenCV camera_from_world: gsplat's viewmats
        Ks=cameras.Ks().to(f32),
        width=cameras.width,
        height=cameras.height,
        near_plane=cameras.near,
        far_plane=cameras.far,
        eps2d=EPS2D,
        sh_degree=sh_degree,
        packed=False,
        render_mode="RGB+D",
        rasterize_mode="classic",
    )
    dtype = means.dtype
    alpha = alphas[..., 0].to(dtype)
    rgb, depth = finish(render[..., :3].to(dtype), alpha, render[..., 3].to(dtype), background)
    radii = info["radii"]
    meta = RenderMeta(means2d=info["means2d"], radii=radii, gaussian_ids=info["gaussian_ids"],
                      width=info["width"], height=info["height"], n_cameras=info["n_cameras"],
                      visible=(radii > 0).all(dim=-1), depths=info["depths"])
    front = front_depth_pass(means, quats, scales, opacities, cameras).to(dtype)
    return RenderOutput(rgb, alpha, depth, meta, front)


def front_depth_pass(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, cameras: Cameras) -> Tensor:
    """`RenderOutput.depth_front` by our own projection, binning and pure-torch compositing.

    Colours do not matter for it, so zeros are composited. Runs on any device, no gradient.

    Returns:
        Front-surface depth, inf where empty. [C, H, W]
    """
    from ._binning import bin_gaussians
    from ._tile_torch import composite_torch
    from .projection import peak_inputs, project_gaussians

    f32 = torch.float32
    with torch.no_grad():
        proj = project_gaussians(means.to(f32), quats.to(f32), scales.to(f32), opacities.to(f32), cameras)
        peaks = peak_inputs(means, quats, scales, cameras)
        bins = bin_gaussians(proj.means2d, proj.depths, proj.extents, proj.visible, cameras.width, cameras.height)
        colours = torch.zeros(*proj.opacities.shape, 3, dtype=proj.opacities.dtype, device=means.device)
        return composite_torch(proj.means2d, proj.conics, colours, proj.opacities, proj.depths, peaks, bins,
                               cameras.width, cameras.height)[3]
