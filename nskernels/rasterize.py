"""Differentiable Gaussian rasterization: one interface, explicit backends.

`rasterize(..., backend="auto" | "torch" | "gsplat")` renders 3D Gaussians (PROTOCOL.md
"Gaussian rendering conventions") into C cameras and returns a `RenderOutput`.

- "torch": our tile rasterizer. Projection and SH in vectorised torch (autograd); 16x16 tile
  binning sorted by depth; compositing by numba kernels with a hand-written backward
  (`_tile_numba`), or by a chunked pure-torch fallback when numba is not importable or the
  tensors are on CUDA.
- "gsplat": `gsplat.rasterization` on CUDA (imported on first use only).
- "auto": gsplat for CUDA tensors when it is available, else torch.

Checked against `nskernels.reference.rasterize_dense`, the brute-force twin with the same
signature.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .camera import Cameras
from .output import RenderMeta, RenderOutput, finish
from .sh import REST_COEFFS, degree_from_rest

BACKENDS = ("auto", "torch", "gsplat")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    sh0: Tensor,
    shN: Tensor,
    cameras: Cameras,
    sh_degree: int | None = None,
    background: Tensor | None = None,
    backend: str = "auto",
) -> RenderOutput:
    """Render Gaussians into C cameras, differentiably.

    Args:
        means: Gaussian centres, world frame, metres. [N, 3]
        quats: rotations (w, x, y, z), unnormalised. [N, 4]
        scales: log standard deviations, log metres. [N, 3]
        opacities: opacity logits. [N]
        sh0: degree-0 SH coefficients. [N, 3]
        shN: higher SH coefficients, K in {0, 3, 8, 15}. [N, K, 3]
        cameras: C cameras sharing one resolution.
        sh_degree: SH degree to evaluate; None = all the Gaussians have.
        background: colour composited behind, linear. [3] or [C, 3]; None = premultiplied.
        backend: "auto", "torch" or "gsplat".

    Returns:
        The rendered frames and the densification meta.

    Raises:
        ValueError: an argument has the wrong shape, dtype, device or value (named).
        RuntimeError: backend "gsplat" was asked for and cannot run here (says why).
    """
    degree = _check_inputs(means, quats, scales, opacities, sh0, shN, cameras, sh_degree, background)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if background is not None:
        background = background.to(means.dtype).expand(len(cameras), 3)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and _gsplat_status()[0] else "torch"
    if backend == "gsplat":
        ok, why = _gsplat_status()
        if not ok:
            raise RuntimeError(why)
        if not means.is_cuda:
            raise RuntimeError("gsplat: the Gaussians must be CUDA tensors for the gsplat backend")
        from ._gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, sh0, shN, cameras, degree, background)
    return _rasterize_torch(means, quats, scales, opacities, sh0, shN, cameras, degree, background)


def backend_status() -> dict[str, tuple[bool, str]]:
    """Which backends can run here and why not; compiles nothing.

    Returns:
        {"torch": (True, "numba 0.68.1 kernels"), "gsplat": (False, "gsplat: no CUDA device")}
    """
    from ._composite import numba_status

    has_numba, why = numba_status()
    torch_reason = why if has_numba else f"pure-torch fallback ({why})"
    return {"torch": (True, torch_reason), "gsplat": _gsplat_status()}


def _rasterize_torch(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    sh0: Tensor,
    shN: Tensor,
    cameras: Cameras,
    degree: int,
    background: Tensor | None,
    impl: str = "auto",
) -> RenderOutput:
    from ._binning import bin_gaussians
    from ._composite import composite
    from .projection import peak_inputs, project_gaussians
    from .sh import view_colours

    # 1. Project to 2D Gaussians and colour them from each camera; per-pixel ray depths for
    #    depth_front.
    proj = project_gaussians(means, quats, scales, opacities, cameras)
    peaks = peak_inputs(means, quats, scales, cameras)
    colours = view_colours(means, sh0, shN, cameras.centers(), degree)
    # 2. Bin into tiles, front to back.
    W, H = cameras.width, cameras.height
    bins = bin_gaussians(proj.means2d, proj.depths, proj.extents, proj.visible, W, H)
    # 3. Composite.
    rgb, alpha, depth_sum, depth_front = composite(
        proj.means2d, proj.conics, colours, proj.opacities, proj.depths, peaks, bins, W, H, impl=impl
    )
    rgb, depth = finish(rgb, alpha, depth_sum, background)
    meta = RenderMeta(means2d=proj.means2d, radii=proj.radii, gaussian_ids=None, width=W, height=H,
                      n_cameras=len(cameras), visible=proj.visible, depths=proj.depths)
    return RenderOutput(rgb, alpha, depth, meta, depth_front)


@functools.lru_cache(maxsize=1)
def _gsplat_status() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "gsplat: no CUDA device"
    try:
        import gsplat
    except Exception as exc:
        return False, f"gsplat: not importable ({type(exc).__name__}: {exc}); pip install gsplat==1.5.3"
    return True, f"gsplat {gsplat.__version__} on {torch.cuda.get_device_name()} (CUDA code builds on first use if not prebuilt)"


def _check_inputs(means, quats, scales, opacities, sh0, shN, cameras, sh_degree, background) -> int:
    if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be a [N, 3] tensor, got {_shape(means)}")
    N = means.shape[0]
    expected = {"quats": (quats, (N, 4)), "scales": (scales, (N, 3)), "opacities": (opacities, (N,)),
                "sh0": (sh0, (N, 3))}
    for name, (t, shape) in expected.items():
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {_shape(t)}")
    if not isinstance(shN, Tensor) or shN.dim() != 3 or shN.shape[0] != N or shN.shape[2] != 3:
        raise ValueError(f"shN must have shape [{N}, K, 3], got {_shape(shN)}")
    have = degree_from_rest(shN.shape[1])
    for name, t in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities),
                    ("sh0", sh0), ("shN", shN)):
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device} but means is on {means.device}")
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a nskernels.camera.Cameras, got {type(cameras).__name__}")
    if cameras.device != means.device:
        raise ValueError(f"cameras are on {cameras.device} but means is on {means.device}")
    degree = have if sh_degree is None else sh_degree
    if degree not in REST_COEFFS or degree > have:
        raise ValueError(f"sh_degree must be in 0..{have} (shN holds degree {have}), got {sh_degree!r}")
    if background is not None:
        if not isinstance(background, Tensor) or tuple(background.shape) not in ((3,), (len(cameras), 3)):
            raise ValueError(f"background must have shape [3] or [{len(cameras)}, 3], got {_shape(background)}")
        if background.device != means.device:
            raise ValueError(f"background is on {background.device} but means is on {means.device}")
    return degree


def _shape(t) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__
