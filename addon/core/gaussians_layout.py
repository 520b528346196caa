"""The one table from Gaussian arrays to Blender generic attributes (numpy only, no bpy).

A Gaussian object is a mesh with one vertex per Gaussian: the mean goes into the vertex
position (the ``position`` attribute) and every other array into a POINT-domain attribute,
stored losslessly as the raw optimisation parameters:

| array | attribute | Blender type | foreach key | floats |
|---|---|---|---|---|
| quats (w, x, y, z) | ``gs_rotation`` | QUATERNION | value | 4 |
| scales (log) | ``gs_scale`` | FLOAT_VECTOR | vector | 3 |
| opacities (logit) | ``gs_opacity`` | FLOAT | value | 1 |
| sh0 | ``gs_sh0`` | FLOAT_VECTOR | vector | 3 |
| shN[:, k] | ``gs_sh_rest_{k}``, k < K | FLOAT_VECTOR | vector | 3 each |
| extra [N] float32 | ``gs_x_{name}`` | FLOAT | value | 1 |
| extra [N] int32 | ``gs_x_{name}`` | INT | value | 1 |
| extra [N, 3] float32 | ``gs_x_{name}`` | FLOAT_VECTOR | vector | 3 |

Blender stores QUATERNION attributes as (w, x, y, z) and does not normalise them, so the round
trip is bit-exact. The Geometry Nodes proxy and its material read these names.
"""

from __future__ import annotations

import numpy as np

from .formats.gaussians import DEGREE_BY_K, check_gaussians, extras

#: The vertex positions (the means), written through the generic attribute API (FLOAT_VECTOR, "vector").
POSITION = "position"
ROTATION = "gs_rotation"
SCALE = "gs_scale"
OPACITY = "gs_opacity"
SH0 = "gs_sh0"
SH_REST_PREFIX = "gs_sh_rest_"
EXTRA_PREFIX = "gs_x_"

# (Blender type, foreach key, floats per Gaussian) for the fixed attributes.
_FIXED: dict[str, tuple[str, str, str, int]] = {
    "quats": (ROTATION, "QUATERNION", "value", 4),
    "scales": (SCALE, "FLOAT_VECTOR", "vector", 3),
    "opacities": (OPACITY, "FLOAT", "value", 1),
    "sh0": (SH0, "FLOAT_VECTOR", "vector", 3),
}
# Extra arrays Blender can hold losslessly: (dtype, trailing shape) -> (type, key).
_EXTRA_TYPES: dict[tuple[str, tuple[int, ...]], tuple[str, str]] = {
    ("float32", ()): ("FLOAT", "value"),
    ("int32", ()): ("INT", "value"),
    ("float32", (3,)): ("FLOAT_VECTOR", "vector"),
}


# One SH rest coefficient's three channels as a single 12-byte item, so reordering shN between
# [N, K, 3] and [K, N, 3] moves 12-byte items (one pass) instead of single floats.
_RGB_ITEM = np.dtype((np.void, 12))


# Transpose in blocks of Gaussians so each block's source and destination stay in cache
# (about twice as fast as one whole-array transposed copy for 1M Gaussians).
_BLOCK = 8192


def _transpose_items(items: np.ndarray) -> np.ndarray:
    """C-contiguous transpose of a 2-D array of 12-byte items, block by block. [A, B] -> [B, A]"""
    a, b = items.shape
    out = np.empty((b, a), items.dtype)
    for start in range(0, a, _BLOCK):
        out[:, start:start + _BLOCK] = items[start:start + _BLOCK].T
    return out


def _sh_planes(shn: np.ndarray) -> np.ndarray:
    """[N, K, 3] -> C-contiguous float32 [K, N * 3]: row k is attribute gs_sh_rest_k's buffer."""
    n, k, _ = shn.shape
    items = np.ascontiguousarray(shn, dtype=np.float32).view(_RGB_ITEM).reshape(n, k)
    return _transpose_items(items).view(np.float32).reshape(k, n * 3)


def _sh_from_planes(planes: np.ndarray) -> np.ndarray:
    """Inverse of _sh_planes: C-contiguous float32 [K, N * 3] -> [N, K, 3]."""
    k, n3 = planes.shape
    items = planes.view(_RGB_ITEM).reshape(k, n3 // 3)
    out = np.empty((n3 // 3, k), _RGB_ITEM)
    for start in range(0, n3 // 3, _BLOCK):
        out[start:start + _BLOCK] = items[:, start:start + _BLOCK].T
    return out.view(np.float32).reshape(n3 // 3, k, 3)


def sh_rest_name(k: int) -> str:
    """Attribute name of SH rest coefficient k (all three channels)."""
    return f"{SH_REST_PREFIX}{k}"


def position_buffer(gaussians: dict[str, np.ndarray]) -> np.ndarray:
    """Vertex positions for ``mesh.attributes[POSITION].data.foreach_set("vector", ...)``: float32 [N * 3]."""
    return np.ascontiguousarray(gaussians["means"], dtype=np.float32).reshape(-1)


def gaussian_attributes(gaussians: dict[str, np.ndarray]) -> dict[str, tuple[str, str, np.ndarray]]:
    """Map a Gaussians map to Blender POINT attributes (positions excluded, see position_buffer).

    Args:
        gaussians: the PROTOCOL.md Gaussians map (N Gaussians, K SH rest coefficients).

    Returns:
        ``{attribute name: (Blender type, foreach key, buffer)}`` in creation order; each buffer
        is a C-contiguous 1-D array (float32, or int32 for INT): [N * floats per Gaussian].
        Extra arrays Blender cannot hold losslessly are left out (see :func:`unsupported_extras`).

    Raises:
        FormatError: the map does not follow the data contract.
    """
    n, k = check_gaussians(gaussians)
    table: dict[str, tuple[str, str, np.ndarray]] = {}
    for key, (name, btype, fkey, _) in _FIXED.items():
        table[name] = (btype, fkey, np.ascontiguousarray(gaussians[key]).reshape(-1))
    planes = _sh_planes(gaussians["shN"])
    for i in range(k):
        table[sh_rest_name(i)] = ("FLOAT_VECTOR", "vector", planes[i])
    for key, arr in extras(gaussians).items():
        kind = _EXTRA_TYPES.get((arr.dtype.name, arr.shape[1:]))
        if kind is not None:
            table[EXTRA_PREFIX + key] = (*kind, np.ascontiguousarray(arr).reshape(-1))
    return table


def unsupported_extras(gaussians: dict[str, np.ndarray]) -> list[str]:
    """Names of extra arrays that :func:`gaussian_attributes` cannot store (wrong dtype/shape)."""
    return [k for k, a in extras(gaussians).items() if (a.dtype.name, a.shape[1:]) not in _EXTRA_TYPES]


def attribute_specs(n: int, attributes: dict[str, str]) -> dict[str, tuple[str, np.ndarray, tuple[int, ...]]]:
    """Preallocated read buffers for the Gaussian attributes present on a mesh.

    Args:
        n: vertex count.
        attributes: ``{name: Blender data type}`` of the mesh's POINT attributes (any others
            are ignored).

    Returns:
        ``{attribute name: (foreach key, empty buffer, array shape)}`` for every Gaussian
        attribute present; buffers are C-contiguous 1-D float32 (int32 for INT) and the shape
        is what the buffer becomes in the Gaussians map.

    Raises:
        KeyError: a required Gaussian attribute is missing (message names it).
    """
    specs: dict[str, tuple[str, np.ndarray, tuple[int, ...]]] = {}
    for name, btype, fkey, width in _FIXED.values():
        if attributes.get(name) != btype:
            raise KeyError(f"Gaussian attribute '{name}' ({btype}) is missing")
        specs[name] = (fkey, np.empty(n * width, np.float32), (n, width) if width > 1 else (n,))
    k = 0
    while attributes.get(sh_rest_name(k)) == "FLOAT_VECTOR":
        k += 1
    if k not in DEGREE_BY_K:
        raise KeyError(f"{k} SH rest attributes ({SH_REST_PREFIX}0..) found; expected 0, 3, 8 or 15")
    # The K rest buffers are rows of one block, so shN is rebuilt in a single reordering pass.
    planes = np.empty((k, n * 3), np.float32)
    for i in range(k):
        specs[sh_rest_name(i)] = ("vector", planes[i], (n, 3))
    for name, btype in attributes.items():
        if name.startswith(EXTRA_PREFIX):
            for (dtype, tail), (etype, fkey) in _EXTRA_TYPES.items():
                if etype == btype:
                    specs[name] = (fkey, np.empty(n * int(np.prod(tail, dtype=int)), dtype), (n, *tail))
    return specs


def gaussians_from_attributes(
    positions: np.ndarray, specs: dict[str, tuple[str, np.ndarray, tuple[int, ...]]]
) -> dict[str, np.ndarray]:
    """Inverse of :func:`gaussian_attributes`: rebuild the Gaussians map from filled buffers.

    Args:
        positions: vertex positions as read from the POSITION attribute, float32. [N * 3]
        specs: :func:`attribute_specs` output whose buffers have been filled.

    Returns:
        The Gaussians map: arrays C-contiguous float32 (extras in their stored dtype), views of
        the given buffers except ``shN``, which is assembled from the K rest attributes.
    """
    n = positions.size // 3
    k = sum(1 for name in specs if name.startswith(SH_REST_PREFIX))
    g = {"means": positions.reshape(n, 3)}
    for key, (name, _, _, _) in _FIXED.items():
        _, buf, shape = specs[name]
        g[key] = buf.reshape(shape)
    if k and specs[sh_rest_name(0)][1].base is not None and all(
            specs[sh_rest_name(i)][1].base is specs[sh_rest_name(0)][1].base for i in range(k)):
        g["shN"] = _sh_from_planes(specs[sh_rest_name(0)][1].base)
    else:
        g["shN"] = np.empty((n, k, 3), np.float32)
        for i in range(k):
            g["shN"][:, i, :] = specs[sh_rest_name(i)][1].reshape(n, 3)
    for name, (_, buf, shape) in specs.items():
        if name.startswith(EXTRA_PREFIX):
            g[name[len(EXTRA_PREFIX):]] = buf.reshape(shape)
    return g
