"""Tile compositing behind `rasterize(backend="torch")`: numba kernels or a pure-torch fallback.

Both take the projected 2D Gaussians and the tile bins and return the premultiplied colour,
alpha and depth sum; both are differentiable w.r.t. means2d, conics, colours, opacities and
depths, so autograd carries the gradients on through projection and SH.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import numpy as np
import torch
from torch import Tensor

from ._binning import TileBins
from .projection import PeakInputs

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def numba_status() -> tuple[bool, str]:
    """Whether the numba kernels can be used, and why not (imports numba, compiles nothing)."""
    try:
        import numba
    except Exception as exc:  # any import failure means: use the fallback
        return False, f"numba not importable ({type(exc).__name__}: {exc})"
    return True, f"numba {numba.__version__} kernels"


def composite(
    means2d: Tensor,
    conics: Tensor,
    colours: Tensor,
    opacities: Tensor,
    depths: Tensor,
    peaks: PeakInputs,
    bins: TileBins,
    width: int,
    height: int,
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Composite binned 2D Gaussians front to back.

    Args:
        means2d: projected centres, pixels. [C, N, 2]
        conics: inverse 2D covariances (a, b, c). [C, N, 3]
        colours: colours. [C, N, 3]
        opacities: opacities in [0, 1). [C, N]
        depths: camera depths, metres. [C, N]
        peaks: the 3D Gaussians and cameras, for the front depth (`projection.PeakInputs`).
        bins: tile bins of the visible pairs.
        width: image width, pixels.
        height: image height, pixels.
        impl: "numba", "torch" or "auto" (numba on CPU when importable).

    Returns:
        rgb: premultiplied colour sum c_i alpha_i T_i. [C, H, W, 3]
        alpha: 1 - prod (1 - alpha_i). [C, H, W]
        depth_sum: sum z_i alpha_i T_i. [C, H, W]
        depth_front: front-surface depth, no gradient (`RenderOutput.depth_front`). [C, H, W]
    """
    if impl == "auto":
        impl = "numba" if means2d.device.type == "cpu" and numba_status()[0] else "torch"
    if impl == "numba":
        return _NumbaComposite.apply(means2d, conics, colours, opacities, depths, peaks, bins, width, height)
    if impl == "torch":
        from ._tile_torch import composite_torch

        return composite_torch(means2d, conics, colours, opacities, depths, peaks, bins, width, height)
    raise ValueError(f"impl must be 'auto', 'numba' or 'torch', got {impl!r}")


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


_compiled = False
# numba's default "workqueue" threading layer aborts the process when two threads launch
# parallel kernels at once (e.g. two server jobs); the kernels already use every core, so
# running them one at a time costs nothing.
_kernel_lock = threading.Lock()


def _log_compile(t0: float) -> None:
    global _compiled
    if not _compiled:
        _compiled = True
        logger.info("numba rasterizer kernels ready after %.1f s (first call)", time.monotonic() - t0)


class _NumbaComposite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colours, opacities, depths, peaks, bins, width, height):
        from . import _tile_numba

        C, N = opacities.shape
        flat = [
            _np(means2d.float().reshape(C * N, 2)),
            _np(conics.float().reshape(C * N, 3)),
            _np(colours.float().reshape(C * N, 3)),
            _np(opacities.float().reshape(C * N)),
            _np(depths.float().reshape(C * N)),
        ]
        ids, offsets = _np(bins.gaussian_ids), _np(bins.tile_offsets)
        rgb = np.empty((C, height, width, 3), np.float32)
        alpha = np.empty((C, height, width), np.float32)
        depth_sum = np.empty((C, height, width), np.float32)
        final_T = np.empty((C, height, width), np.float64)
        last = np.empty((C, height, width), np.int32)
        front = np.empty((C, height, width), np.float32)
        t0 = time.monotonic()
        with _kernel_lock:
            _tile_numba.forward(
                *flat, _np(peaks.means.float()), _np(peaks.quats.float()), _np(peaks.scales.float()),
                _np(peaks.camera_from_world.double()), _np(peaks.intrinsics.double()), ids, offsets, bins.tiles_x, bins.tiles_y, bins.tile_size, width, height,
                rgb, alpha, depth_sum, final_T, last, front,
            )
        _log_compile(t0)
        ctx.flat = flat
        ctx.bins = bins
        ctx.size = (C, N, width, height)
        ctx.state = (final_T, last)
        ctx.dtypes = (means2d.dtype, conics.dtype, colours.dtype, opacities.dtype, depths.dtype)
        front_t = torch.from_numpy(front)
        ctx.mark_non_differentiable(front_t)
        return torch.from_numpy(rgb), torch.from_numpy(alpha), torch.from_numpy(depth_sum), front_t

    @staticmethod
    def backward(ctx, v_rgb, v_alpha, v_depth_sum, _v_front):
        from . import _tile_numba

        C, N, width, height = ctx.size
        bins = ctx.bins
        ids = bins.gaussian_ids
        v_isect = np.empty((ids.numel(), _tile_numba.N_FIELDS), np.float32)
        with _kernel_lock:
            _tile_numba.backward(
                *ctx.flat, _np(ids), _np(bins.tile_offsets), bins.tiles_x, bins.tiles_y,
                bins.tile_size, width, height, *ctx.state,
                _np(v_rgb.float()), _np(v_alpha.float()), _np(v_depth_sum.float()), v_isect,
            )
        v = torch.zeros(C * N, _tile_numba.N_FIELDS, dtype=torch.float32)
        v.index_add_(0, ids.long(), torch.from_numpy(v_isect))
        dt = ctx.dtypes
        return (
            v[:, 0:2].reshape(C, N, 2).to(dt[0]),
            v[:, 2:5].reshape(C, N, 3).to(dt[1]),
            v[:, 6:9].reshape(C, N, 3).to(dt[2]),
            v[:, 5].reshape(C, N).to(dt[3]),
            v[:, 9].reshape(C, N).to(dt[4]),
            None,
            None,
            None,
            None,
        )
