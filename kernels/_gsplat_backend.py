"""The gsplat backend: `gsplat.rasterization` on CUDA, mapped to our conventions.

Imported only when the gsplat backend is used (gsplat may build its CUDA code on first call).
Differences from our torch backend that remain: gsplat clamps alpha at 0.999 (we use 0.99)
and culls z < near (we cull z <= near).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .camera import Cameras
from .conventions import EPS2D


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
    """`rasterize()` on gsplat; same arguments (checked) and the same `RenderOutput`."""
    import gsplat

    from .rasterize import RenderOutput, finish

    colours = torch.cat([sh0[:, None, :], shN], dim=1)  # [N, K + 1, 3]
    render, alphas, info = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=torch.exp(scales),
        opacities=torch.sigmoid(opacities),
        colors=colours,
        viewmats=cameras.camera_from_world(),  # OpenCV camera_from_world: what gsplat calls viewmats
        Ks=cameras.Ks(),
        width=cameras.width,
        height=cameras.height,
        near_plane=cameras.near,
        far_plane=cameras.far,
        eps2d=EPS2D,
        sh_degree=sh_degree,
        packed=False,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    alpha = alphas[..., 0]
    # gsplat's ED channel is already sum(z w) / alpha; multiply back so `finish` applies our
    # inf-where-empty rule and background in one place.
    rgb, depth = finish(render[..., :3], alpha, render[..., 3] * alpha, background)
    radii = info["radii"]
    meta = {
        "means2d": info["means2d"],
        "radii": radii,
        "gaussian_ids": info["gaussian_ids"],
        "width": info["width"],
        "height": info["height"],
        "n_cameras": info["n_cameras"],
        "visible": (radii > 0).all(dim=-1),
        "depths": info["depths"],
    }
    return RenderOutput(rgb, alpha, depth, meta)
