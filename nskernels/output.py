"""What a render returns, shared by both backends (so neither imports the other).

`RenderMeta` is the structure gsplat's ``DefaultStrategy`` reads by key for densification; it
is a typed dataclass that also answers ``meta["means2d"]`` so the strategy takes it as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .conventions import ALPHA_MIN, T_FRONT


@dataclass
class RenderMeta(Mapping):
    """Per-camera projection facts of one render.

    Attributes:
        means2d: projected centres, pixels, grad-carrying (retain_grad-able). [C, N, 2]
        radii: screen extents in pixels, int32, 0 = culled. [C, N, 2]
        gaussian_ids: always None (renders are not packed); read by gsplat's strategy.
        width, height: image size in pixels.
        n_cameras: C.
        visible: the Gaussian touches the image. [C, N] bool
        depths: camera-space depth of each centre, metres. [C, N]
    """

    means2d: Tensor
    radii: Tensor
    gaussian_ids: None
    width: int
    height: int
    n_cameras: int
    visible: Tensor
    depths: Tensor

    def __getitem__(self, key: str):
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)


_KEYS = tuple(f.name for f in fields(RenderMeta))


@dataclass
class RenderOutput:
    """What a render returns.

    Attributes:
        rgb: linear colour, premultiplied unless a background was given. [C, H, W, 3]
        alpha: 1 - prod(1 - alpha_i). [C, H, W]
        depth: expected depth along the camera's -Z axis, metres; inf where alpha < 1/255.
            [C, H, W]
        meta: what gsplat's DefaultStrategy reads, for densification on either backend (the
            dense test reference fills a smaller dict: "means2d", "depths", "valid").
        depth_front: front-surface depth, metres along -Z: of the contribution at which the
            transmittance first falls to 0.5 (``conventions.T_FRONT``), or of the largest-weight
            contribution where alpha stays below 0.5, the depth at which that Gaussian peaks
            along the pixel's ray (`projection.peak_depth`: where the ray meets a flat
            Gaussian's plane, not its centre's depth); inf where alpha < 1/255. Not
            differentiable (no gradient flows through it). [C, H, W]
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    meta: RenderMeta | dict
    depth_front: Tensor | None = None


def finish(
    rgb: Tensor, alpha: Tensor, depth_sum: Tensor, background: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Background and expected depth from the composited sums.

    Args:
        rgb: premultiplied colour. [C, H, W, 3]
        alpha: alpha. [C, H, W]
        depth_sum: sum z_i alpha_i T_i. [C, H, W]
        background: [C, 3] or None.

    Returns:
        rgb with (1 - alpha) * background added [C, H, W, 3]; depth = depth_sum / alpha,
        inf where alpha < 1/255 [C, H, W].
    """
    if background is not None:
        rgb = rgb + (1.0 - alpha)[..., None] * background[:, None, None, :]
    covered = alpha >= ALPHA_MIN
    # Divide by a safe alpha: where() would still send NaN gradients through 0/0.
    safe = torch.where(covered, alpha, torch.ones_like(alpha))
    depth = torch.where(covered, depth_sum / safe, torch.full_like(alpha, float("inf")))
    return rgb, depth


def front_index_from_weights(alpha_i: Tensor) -> tuple[Tensor, Tensor]:
    """Which contribution a pixel's front depth comes from (see `RenderOutput.depth_front`).

    Args:
        alpha_i: alphas of the contributions that count (0 for skipped ones), front to back. [..., L]

    Returns:
        (index of the contribution at which the transmittance first falls to T_FRONT, else of
        the largest-weight one [...] int64, whether the pixel's alpha >= 1/255 [...] bool).
    """
    with torch.no_grad():
        trans = torch.cumprod(1.0 - alpha_i, -1)
        before = torch.cat([torch.ones_like(trans[..., :1]), trans[..., :-1]], -1)
        w = alpha_i * before
        crossed = (trans <= T_FRONT) & (alpha_i > 0)
        first = torch.argmax(crossed.to(torch.int8), dim=-1)
        heaviest = torch.argmax(w, dim=-1)
        idx = torch.where(crossed.any(-1), first, heaviest)
        if trans.shape[-1]:
            covered = (1.0 - trans[..., -1]) >= ALPHA_MIN
        else:
            covered = torch.zeros(alpha_i.shape[:-1], dtype=torch.bool, device=alpha_i.device)
        return idx, covered


def front_depth_from_weights(alpha_i: Tensor, z: Tensor) -> Tensor:
    """Front-surface depth from per-contribution alphas in front-to-back order (torch twin of
    the numba kernel's rule; see `RenderOutput.depth_front`).

    Args:
        alpha_i: alphas of the contributions that count (0 for skipped ones), front to back. [..., L]
        z: their depths, per pixel (the Gaussians' peaks along its ray) or per Gaussian,
            broadcastable to ``alpha_i``. [..., L]

    Returns:
        The front depth, inf where the pixel's alpha < 1/255. [...]
    """
    with torch.no_grad():
        idx, covered = front_index_from_weights(alpha_i)
        front = torch.gather(z.expand_as(alpha_i), -1, idx[..., None])[..., 0]
        return torch.where(covered, front, torch.full_like(front, float("inf")))
