"""numba CPU kernels of the tile rasterizer: front-to-back compositing and its hand-written backward.

Imported only when the torch backend runs on CPU with numba available; the two kernels
compile on first call (`cache=True`: later processes load them from the numba cache).

Compositing rule (PROTOCOL.md, identical in `reference.rasterize_dense` and the pure-torch
fallback): for each pixel centre, walk the tile's Gaussians front to back; alpha_i =
min(0.99, opacity_i * exp(-sigma_i)); skip alpha_i < 1/255; if T_i * (1 - alpha_i) <= 1e-4
the pixel is done and this Gaussian and all behind it are left out (gsplat's `next_T <= 1e-4`);
otherwise add colour_i alpha_i T_i and continue with T_{i+1} = T_i (1 - alpha_i).

Per-Gaussian values are gathered per tile into a local [n, 10] float64 table
(mean x, mean y, conic a, b, c, opacity, r, g, b, depth); the arithmetic runs in float64.
The backward writes one gradient row per (tile, Gaussian) intersection, so tiles never write
to shared memory and the prange needs no atomics; the rows are summed per Gaussian in torch.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .conventions import ALPHA_MAX, ALPHA_MIN, PEAK_SUPPORT_SIGMA, T_FRONT, T_MIN

# sigma > ln(255 opacity) means alpha < 1/255; testing it first skips the exp() for most
# pairs. The slack keeps the exact alpha test the decider near the boundary.
_SIGMA_SLACK = 1e-6
N_FIELDS = 10


@numba.njit(cache=True)
def _gather_tile(start, n, gaussian_ids, means2d, conics, opacities, colours, depths):
    """Copy one tile's Gaussians (depth order) into a packed [n, N_FIELDS] array.

    Both kernels walk a tile's list once per pixel, so the scattered per-Gaussian reads are
    done once per tile instead. Also returns ln(opacity * 255) per Gaussian: sigma above it
    means alpha < 1/255, a cheaper test than the exp().
    """
    p = np.empty((n, N_FIELDS))
    lnth = np.empty(n)
    for k in range(n):
        g = gaussian_ids[start + k]
        p[k, 0] = means2d[g, 0]
        p[k, 1] = means2d[g, 1]
        p[k, 2] = conics[g, 0]
        p[k, 3] = conics[g, 1]
        p[k, 4] = conics[g, 2]
        p[k, 5] = opacities[g]
        p[k, 6] = colours[g, 0]
        p[k, 7] = colours[g, 1]
        p[k, 8] = colours[g, 2]
        p[k, 9] = depths[g]
        lnth[k] = math.log(max(p[k, 5], 1e-30) / ALPHA_MIN) + _SIGMA_SLACK
    return p, lnth


@numba.njit(cache=True)
def _peak_depth(g_means, g_quats, g_scales, viewmats, cam, n, u, v, centre_depth):
    """Camera depth at which Gaussian n peaks along the ray (u, v, 1) of camera cam:
    t* = (Q^T r) . (Q^T mu) / |Q^T r|^2, Q = Rc R S^-1 scaled by the smallest scale, kept within
    PEAK_SUPPORT_SIGMA largest standard deviations of its centre depth and >= 0; the centre depth
    where t* is not finite (`projection.peak_depth`, its torch twin)."""
    qw = g_quats[n, 0]
    qx = g_quats[n, 1]
    qy = g_quats[n, 2]
    qz = g_quats[n, 3]
    norm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    if not norm > 0.0:
        return centre_depth
    qw /= norm
    qx /= norm
    qy /= norm
    qz /= norm
    # Columns of R (the Gaussian's local axes), world frame.
    r00 = 1 - 2 * (qy * qy + qz * qz)
    r10 = 2 * (qx * qy + qw * qz)
    r20 = 2 * (qx * qz - qw * qy)
    r01 = 2 * (qx * qy - qw * qz)
    r11 = 1 - 2 * (qx * qx + qz * qz)
    r21 = 2 * (qy * qz + qw * qx)
    r02 = 2 * (qx * qz + qw * qy)
    r12 = 2 * (qy * qz - qw * qx)
    r22 = 1 - 2 * (qx * qx + qy * qy)
    s_min = min(g_scales[n, 0], min(g_scales[n, 1], g_scales[n, 2]))
    s_max = max(g_scales[n, 0], max(g_scales[n, 1], g_scales[n, 2]))
    # The centre, camera frame.
    x, y, z = g_means[n, 0], g_means[n, 1], g_means[n, 2]
    m0 = viewmats[cam, 0, 0] * x + viewmats[cam, 0, 1] * y + viewmats[cam, 0, 2] * z + viewmats[cam, 0, 3]
    m1 = viewmats[cam, 1, 0] * x + viewmats[cam, 1, 1] * y + viewmats[cam, 1, 2] * z + viewmats[cam, 1, 3]
    m2 = viewmats[cam, 2, 0] * x + viewmats[cam, 2, 1] * y + viewmats[cam, 2, 2] * z + viewmats[cam, 2, 3]
    num = 0.0
    den = 0.0
    for j in range(3):  # column j of Q = Rc R[:, j] * exp(s_min - s_j)
        if j == 0:
            a0, a1, a2 = r00, r10, r20
        elif j == 1:
            a0, a1, a2 = r01, r11, r21
        else:
            a0, a1, a2 = r02, r12, r22
        k = math.exp(s_min - g_scales[n, j])
        q0 = (viewmats[cam, 0, 0] * a0 + viewmats[cam, 0, 1] * a1 + viewmats[cam, 0, 2] * a2) * k
        q1 = (viewmats[cam, 1, 0] * a0 + viewmats[cam, 1, 1] * a1 + viewmats[cam, 1, 2] * a2) * k
        q2 = (viewmats[cam, 2, 0] * a0 + viewmats[cam, 2, 1] * a1 + viewmats[cam, 2, 2] * a2) * k
        qr = q0 * u + q1 * v + q2
        num += qr * (q0 * m0 + q1 * m1 + q2 * m2)
        den += qr * qr
    if not den > 0.0:
        return centre_depth
    t = num / den
    if not abs(t) < math.inf:
        return centre_depth
    reach = PEAK_SUPPORT_SIGMA * math.exp(s_max)
    return max(min(max(t, centre_depth - reach), centre_depth + reach), 0.0)


@numba.njit(parallel=True, cache=True, fastmath=False)
def forward(
    means2d, conics, colours, opacities, depths, g_means, g_quats, g_scales, viewmats, rays, gaussian_ids, tile_offsets,
    tiles_x, tiles_y, tile_size, width, height,
    out_rgb, out_alpha, out_depth, out_T, out_last, out_front,
):  # pragma: no cover - compiled
    """Composite all tiles of all cameras.

    Args:
        means2d, conics, colours: [G, 2], [G, 3], [G, 3] float32 (G = C * N flat ids).
        opacities, depths: [G] float32.
        g_means, g_quats, g_scales: the 3D Gaussians (`projection.PeakInputs`), for the front
            depth. [N, 3], [N, 4], [N, 3] float32
        viewmats: world -> OpenCV camera. [C, 4, 4] float64
        rays: per camera (fx, fy, cx, cy). [C, 4] float64
        gaussian_ids: [M] int32, sorted by (camera, tile, depth).
        tile_offsets: [C * tiles_y * tiles_x + 1] int64.
        out_rgb: premultiplied colour [C, H, W, 3] float32 (written).
        out_alpha: 1 - final transmittance [C, H, W] float32 (written).
        out_depth: sum of z_i alpha_i T_i [C, H, W] float32 (written).
        out_T: final transmittance [C, H, W] float64 (written, for the backward).
        out_last: number of tile entries walked up to the last contributor [C, H, W] int32.
        out_front: front-surface depth [C, H, W] float32 (written): where along the pixel's
            ray the Gaussian peaks (`_peak_depth`) whose contribution first makes T fall to
            T_FRONT or below, else the largest-weight one's; inf where alpha < 1/255.
    """
    n_tiles = tiles_x * tiles_y
    for tid in numba.prange(tile_offsets.shape[0] - 1):
        cam = tid // n_tiles
        t = tid - cam * n_tiles
        ty = t // tiles_x
        tx = t - ty * tiles_x
        start = tile_offsets[tid]
        n = tile_offsets[tid + 1] - start
        px0 = tx * tile_size
        py0 = ty * tile_size
        px1 = min(px0 + tile_size, width)
        py1 = min(py0 + tile_size, height)
        if n == 0:
            for py in range(py0, py1):
                for px in range(px0, px1):
                    out_rgb[cam, py, px, 0] = 0.0
                    out_rgb[cam, py, px, 1] = 0.0
                    out_rgb[cam, py, px, 2] = 0.0
                    out_alpha[cam, py, px] = 0.0
                    out_depth[cam, py, px] = 0.0
                    out_T[cam, py, px] = 1.0
                    out_last[cam, py, px] = 0
                    out_front[cam, py, px] = math.inf
            continue
        p, lnth = _gather_tile(start, n, gaussian_ids, means2d, conics, opacities, colours, depths)
        fx = rays[cam, 0]
        fy = rays[cam, 1]
        for py in range(py0, py1):
            cy = py + 0.5
            ray_v = (cy - rays[cam, 3]) / fy
            for px in range(px0, px1):
                cx = px + 0.5
                T = 1.0
                r = 0.0
                gg = 0.0
                b = 0.0
                d = 0.0
                last = 0
                k_front = -1
                wmax = 0.0
                k_max = -1
                for k in range(n):
                    dx = p[k, 0] - cx
                    dy = p[k, 1] - cy
                    sigma = 0.5 * (p[k, 2] * dx * dx + p[k, 4] * dy * dy) + p[k, 3] * dx * dy
                    if sigma > lnth[k]:
                        continue
                    alpha = min(ALPHA_MAX, p[k, 5] * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    next_T = T * (1.0 - alpha)
                    if next_T <= T_MIN:
                        break
                    w = alpha * T
                    r += p[k, 6] * w
                    gg += p[k, 7] * w
                    b += p[k, 8] * w
                    d += p[k, 9] * w
                    if T > T_FRONT and next_T <= T_FRONT:
                        k_front = k
                    if w > wmax:
                        wmax = w
                        k_max = k
                    T = next_T
                    last = k + 1
                front = math.inf
                if k_front < 0 and 1.0 - T >= ALPHA_MIN:
                    k_front = k_max
                if k_front >= 0:
                    n_g = gaussian_ids[start + k_front] - cam * g_means.shape[0]
                    front = _peak_depth(g_means, g_quats, g_scales, viewmats, cam, n_g, (cx - rays[cam, 2]) / fx,
                                        ray_v, p[k_front, 9])
                out_front[cam, py, px] = front
                out_rgb[cam, py, px, 0] = r
                out_rgb[cam, py, px, 1] = gg
                out_rgb[cam, py, px, 2] = b
                out_alpha[cam, py, px] = 1.0 - T
                out_depth[cam, py, px] = d
                out_T[cam, py, px] = T
                out_last[cam, py, px] = last


@numba.njit(parallel=True, cache=True, fastmath=False)
def backward(
    means2d, conics, colours, opacities, depths, gaussian_ids, tile_offsets,
    tiles_x, tiles_y, tile_size, width, height,
    final_T, last, v_rgb, v_alpha, v_depth, v_isect,
):  # pragma: no cover - compiled
    """Gradients of the composited outputs w.r.t. every intersection's 2D Gaussian.

    Walks each pixel back to front from its last contributor, recovering T_i = T_{i+1} /
    (1 - alpha_i), with S = sum_{j>i} c_j alpha_j T_j so that
    d out / d alpha_i = c_i T_i - S / (1 - alpha_i) and d(1 - T_final) / d alpha_i =
    T_final / (1 - alpha_i).

    Args:
        (as `forward`) plus
        final_T, last: what `forward` stored. [C, H, W]
        v_rgb: cotangent of the premultiplied colour. [C, H, W, 3] float32
        v_alpha: cotangent of alpha. [C, H, W] float32
        v_depth: cotangent of the depth sum. [C, H, W] float32
        v_isect: per-intersection gradient rows (mean x, mean y, conic a, b, c, opacity,
            r, g, b, depth), written. [M, 10] float32
    """
    n_tiles = tiles_x * tiles_y
    for tid in numba.prange(tile_offsets.shape[0] - 1):
        start = tile_offsets[tid]
        n = tile_offsets[tid + 1] - start
        if n == 0:
            continue
        cam = tid // n_tiles
        t = tid - cam * n_tiles
        ty = t // tiles_x
        tx = t - ty * tiles_x
        px0 = tx * tile_size
        py0 = ty * tile_size
        px1 = min(px0 + tile_size, width)
        py1 = min(py0 + tile_size, height)
        p, lnth = _gather_tile(start, n, gaussian_ids, means2d, conics, opacities, colours, depths)
        grads = np.zeros((n, N_FIELDS))
        for py in range(py0, py1):
            cy = py + 0.5
            for px in range(px0, px1):
                n_walk = last[cam, py, px]
                if n_walk == 0:
                    continue
                cx = px + 0.5
                T_final = final_T[cam, py, px]
                T = T_final
                vr = v_rgb[cam, py, px, 0]
                vg = v_rgb[cam, py, px, 1]
                vb = v_rgb[cam, py, px, 2]
                va = v_alpha[cam, py, px]
                vd = v_depth[cam, py, px]
                s_r = 0.0
                s_g = 0.0
                s_b = 0.0
                s_d = 0.0
                for k in range(n_walk - 1, -1, -1):
                    dx = p[k, 0] - cx
                    dy = p[k, 1] - cy
                    sigma = 0.5 * (p[k, 2] * dx * dx + p[k, 4] * dy * dy) + p[k, 3] * dx * dy
                    if sigma > lnth[k]:
                        continue
                    G = math.exp(-sigma)
                    og = p[k, 5] * G
                    alpha = min(ALPHA_MAX, og)
                    if alpha < ALPHA_MIN:
                        continue
                    ra = 1.0 / (1.0 - alpha)
                    T = T * ra
                    w = alpha * T
                    grads[k, 6] += w * vr
                    grads[k, 7] += w * vg
                    grads[k, 8] += w * vb
                    grads[k, 9] += w * vd
                    v_a = (
                        (p[k, 6] * T - s_r * ra) * vr
                        + (p[k, 7] * T - s_g * ra) * vg
                        + (p[k, 8] * T - s_b * ra) * vb
                        + (p[k, 9] * T - s_d * ra) * vd
                        + va * T_final * ra
                    )
                    s_r += p[k, 6] * w
                    s_g += p[k, 7] * w
                    s_b += p[k, 8] * w
                    s_d += p[k, 9] * w
                    # Above the 0.99 clamp alpha no longer depends on the Gaussian.
                    if og <= ALPHA_MAX:
                        v_sigma = -v_a * og
                        grads[k, 5] += v_a * G
                        grads[k, 2] += 0.5 * dx * dx * v_sigma
                        grads[k, 3] += dx * dy * v_sigma
                        grads[k, 4] += 0.5 * dy * dy * v_sigma
                        grads[k, 0] += (p[k, 2] * dx + p[k, 3] * dy) * v_sigma
                        grads[k, 1] += (p[k, 3] * dx + p[k, 4] * dy) * v_sigma
        for k in range(n):
            for f in range(N_FIELDS):
                v_isect[start + k, f] = grads[k, f]
