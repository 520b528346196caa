"""PlayCanvas / SuperSplat compressed PLY (``*.compressed.ply``): read and write, numpy only.

The layout (PlayCanvas splat-transform ``decompress-ply.ts`` / ``write-compressed-ply.ts``, MIT,
reimplemented here from their documented behaviour), binary little-endian:

- ``element chunk C`` of float properties ``min_x min_y min_z max_x max_y max_z
  min_scale_x.. max_scale_z`` and optionally ``min_r min_g min_b max_r max_g max_b``: per run of
  256 consecutive splats (C = ceil(N / 256)), the range every packed value is relative to.
- ``element vertex N`` of four ``uint`` properties:
  ``packed_position`` and ``packed_scale`` 11-10-11 bit unorms (x in bits 21..31, y 11..20,
  z 0..10) lerped between the chunk's min and max (scales are log scales);
  ``packed_rotation`` "largest three of four": bits 30..31 the index of the largest component of
  (rot_0, rot_1, rot_2, rot_3) = (w, x, y, z), made positive, the other three in order as 10-bit
  unorms u mapped to ``(u - 0.5) * sqrt(2)``; the largest is ``sqrt(1 - sum of squares)``;
  ``packed_color`` 8-8-8-8: r g b (the degree-0 colour ``C0 * sh0 + 0.5``, lerped in the chunk's
  colour range when the chunk has one, else in [0, 1]) and alpha = sigmoid(opacity).
- optional ``element sh N`` of ``uchar f_rest_0..f_rest_{3K-1}`` (channel-major, as in 3DGS
  PLYs): ``v / 256 * 8 - 4`` quantised; the reader maps 0 -> -4, 255 -> 4, others to bucket
  centres ``((v + 0.5) / 256 - 0.5) * 8``.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import FormatError
from .gaussians import DEGREE_BY_K, SH_C0, check_gaussians
from .ply_header import _Element, read_header

CHUNK_SIZE = 256
NAME = "a compressed PlayCanvas PLY"
CHUNK_PROPS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z")
COLOR_PROPS = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
VERTEX_PROPS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
# Opacity is clamped half an 8-bit step inside (0, 1) so the logit stays finite.
_ALPHA_EPS = 0.5 / 255.0
_SQRT2 = np.sqrt(2.0)


def is_compressed_layout(elements: list[_Element]) -> bool:
    """True when a PLY header has the chunk/vertex(/sh) elements of the compressed layout."""
    names = {el.name: el for el in elements}
    vertex, chunk = names.get("vertex"), names.get("chunk")
    if vertex is None or chunk is None:
        return False
    return all(p in dict(vertex.props) for p in VERTEX_PROPS)


def _check_layout(path: str, elements: list[_Element]) -> tuple[_Element, _Element, _Element | None]:
    """Validate the compressed layout in detail; return (chunk, vertex, sh or None)."""
    by_name = {el.name: el for el in elements}
    chunk, vertex, sh = by_name["chunk"], by_name["vertex"], by_name.get("sh")
    where = f"{path}: this is {NAME}, but"
    chunk_types = dict(chunk.props)
    missing = [p for p in CHUNK_PROPS if chunk_types.get(p) != "<f4"]
    if missing:
        raise FormatError(f"{where} its chunk element lacks float properties {missing}")
    has_color = "min_r" in chunk_types
    if has_color and any(chunk_types.get(p) != "<f4" for p in COLOR_PROPS):
        raise FormatError(f"{where} its chunk colour range is incomplete (needs {list(COLOR_PROPS)} as float)")
    vtypes = dict(vertex.props)
    bad = [p for p in VERTEX_PROPS if vtypes.get(p) != "<u4"]
    if bad:
        raise FormatError(f"{where} vertex properties {bad} are not uint")
    need_chunks = -(-vertex.count // CHUNK_SIZE)
    if chunk.count != need_chunks:
        raise FormatError(
            f"{where} it has {chunk.count} chunks for {vertex.count} splats (expected {need_chunks}, one per 256)"
        )
    if sh is not None:
        k3 = len(sh.props)
        if k3 % 3 or k3 // 3 not in DEGREE_BY_K or k3 == 0:
            raise FormatError(f"{where} its sh element has {k3} properties (expected 9, 24 or 45)")
        want = [(f"f_rest_{i}", "u1") for i in range(k3)]
        if sh.props != want:
            raise FormatError(f"{where} its sh element is not uchar f_rest_0..f_rest_{k3 - 1} in order")
        if sh.count != vertex.count:
            raise FormatError(f"{where} its sh element has {sh.count} rows for {vertex.count} splats")
    other = [el.name for el in elements if el.name not in ("chunk", "vertex", "sh")]
    if other:
        raise FormatError(f"{where} it has unexpected elements {other}")
    return chunk, vertex, sh


def _unorm(value: np.ndarray, shift: int, bits: int) -> np.ndarray:
    mask = (1 << bits) - 1
    return ((value >> np.uint32(shift)) & np.uint32(mask)).astype(np.float64) / mask


def read_compressed_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PlayCanvas compressed PLY into a Gaussians map.

    Args:
        path: file to read.

    Returns:
        The Gaussians map (float32, C-contiguous); ``shN [N, K, 3]`` from the ``sh`` element or
        ``[N, 0, 3]`` without one.

    Raises:
        FormatError: naming the format, when the header or the data do not follow the layout.
    """
    path = os.fspath(path)
    fmt, elements, body = read_header(path)
    if fmt != "binary_little_endian":
        raise FormatError(f"{path}: this is {NAME}, but stored as '{fmt}' (only binary_little_endian exists)")
    if not is_compressed_layout(elements):
        raise FormatError(f"{path}: not {NAME} (no chunk element with packed_* vertex properties)")
    chunk_el, vertex_el, sh_el = _check_layout(path, elements)
    size = os.path.getsize(path)
    expected = body + sum(el.count * el.dtype().itemsize for el in elements)
    if size != expected:
        raise FormatError(
            f"{path}: this is {NAME}, but the file has {size} bytes and its header declares {expected}"
        )
    blocks: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        f.seek(body)
        for el in elements:
            blocks[el.name] = np.fromfile(f, dtype=el.dtype(), count=el.count)
    n = vertex_el.count
    chunks = blocks["chunk"]
    ci = np.arange(n) // CHUNK_SIZE
    v = blocks["vertex"]

    def lerp(lo: str, hi: str, t: np.ndarray) -> np.ndarray:
        a = chunks[lo].astype(np.float64)[ci]
        b = chunks[hi].astype(np.float64)[ci]
        return a * (1.0 - t) + b * t

    pos, scl = v["packed_position"], v["packed_scale"]
    means = np.stack([lerp("min_x", "max_x", _unorm(pos, 21, 11)), lerp("min_y", "max_y", _unorm(pos, 11, 10)),
                      lerp("min_z", "max_z", _unorm(pos, 0, 11))], axis=1)
    scales = np.stack([lerp("min_scale_x", "max_scale_x", _unorm(scl, 21, 11)),
                       lerp("min_scale_y", "max_scale_y", _unorm(scl, 11, 10)),
                       lerp("min_scale_z", "max_scale_z", _unorm(scl, 0, 11))], axis=1)
    quats = _unpack_rotation(v["packed_rotation"])
    col = v["packed_color"]
    rgb = np.stack([_unorm(col, 24, 8), _unorm(col, 16, 8), _unorm(col, 8, 8)], axis=1)
    if "min_r" in chunks.dtype.names:
        rgb = np.stack([lerp(f"min_{c}", f"max_{c}", rgb[:, i]) for i, c in enumerate("rgb")], axis=1)
    alpha = np.clip(_unorm(col, 0, 8), _ALPHA_EPS, 1.0 - _ALPHA_EPS)
    if sh_el is not None:
        k = len(sh_el.props) // 3
        raw = blocks["sh"].view(np.uint8).reshape(n, 3 * k).astype(np.float64)
        unit = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256.0))
        # Channel-major [N, 3, K] on disk -> [N, K, 3].
        shn = ((unit - 0.5) * 8.0).reshape(n, 3, k).transpose(0, 2, 1)
    else:
        shn = np.zeros((n, 0, 3))
    return {
        "means": np.ascontiguousarray(means, np.float32),
        "quats": np.ascontiguousarray(quats, np.float32),
        "scales": np.ascontiguousarray(scales, np.float32),
        "opacities": (np.log(alpha) - np.log1p(-alpha)).astype(np.float32),
        "sh0": ((rgb - 0.5) / SH_C0).astype(np.float32),
        "shN": np.ascontiguousarray(shn, np.float32),
    }


def _unpack_rotation(packed: np.ndarray) -> np.ndarray:
    """2-10-10-10 "largest of four" quaternions -> (w, x, y, z) float64. [N] -> [N, 4]"""
    n = packed.shape[0]
    small = np.stack([(_unorm(packed, s, 10) - 0.5) * _SQRT2 for s in (20, 10, 0)], axis=1)
    largest = (packed >> np.uint32(30)).astype(np.int64)
    m = np.sqrt(np.maximum(0.0, 1.0 - np.sum(small * small, axis=1)))
    out = np.empty((n, 4))
    rows = np.arange(n)
    out[rows, largest] = m
    # The three stored components fill the other slots in increasing index order.
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        out[rows, others[:, j]] = small[:, j]
    return out


def _pack_unorm(t: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def _normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    span = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(span < 1e-5, 0.0, (x - lo) / np.where(span == 0, 1.0, span))
    return np.clip(t, 0.0, 1.0)


def write_compressed_ply(path: str | os.PathLike, gaussians: dict[str, np.ndarray]) -> None:
    """Write a Gaussians map as a PlayCanvas compressed PLY (splats kept in their order).

    The reference writer sorts splats in Morton order first so chunks are compact; we keep the
    caller's order (a round trip keeps indices) at some cost in precision for scattered input.

    Args:
        path: file to write (replaced).
        gaussians: the Gaussians map; extras are not stored (the format has no place for them).

    Raises:
        FormatError: the map does not follow the Gaussians data contract.
    """
    path = os.fspath(path)
    n, k = check_gaussians(gaussians, path)
    c = max(1, -(-n // CHUNK_SIZE)) if n else 0
    pad = c * CHUNK_SIZE - n

    def chunked(a: np.ndarray) -> np.ndarray:
        """[N, D] -> [C, 256, D], the last chunk padded by repeating the last splat (as the reference)."""
        a = a.astype(np.float64).reshape(n, -1)
        if pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
        return a.reshape(c, CHUNK_SIZE, -1)

    means = chunked(gaussians["means"])
    scales = np.clip(chunked(gaussians["scales"]), -20.0, 20.0)
    rgb = chunked(gaussians["sh0"]) * SH_C0 + 0.5
    alpha = 1.0 / (1.0 + np.exp(-chunked(gaussians["opacities"])[..., 0]))
    quats = chunked(gaussians["quats"])
    ranges = []
    packed = []
    for arr in (means, scales, rgb):
        lo, hi = arr.min(axis=1, keepdims=True), arr.max(axis=1, keepdims=True)
        ranges.append((lo[:, 0], hi[:, 0]))
        packed.append(_normalize(arr, lo, hi))
    p, s, col = packed
    pos_u = _pack_unorm(p[..., 0], 11) << 21 | _pack_unorm(p[..., 1], 10) << 11 | _pack_unorm(p[..., 2], 11)
    scl_u = _pack_unorm(s[..., 0], 11) << 21 | _pack_unorm(s[..., 1], 10) << 11 | _pack_unorm(s[..., 2], 11)
    col_u = (_pack_unorm(col[..., 0], 8) << 24 | _pack_unorm(col[..., 1], 8) << 16
             | _pack_unorm(col[..., 2], 8) << 8 | _pack_unorm(alpha, 8))
    rot_u = _pack_rotation(quats.reshape(-1, 4)).reshape(c, CHUNK_SIZE)
    chunk_table = np.concatenate([ranges[0][0], ranges[0][1], ranges[1][0], ranges[1][1],
                                  ranges[2][0], ranges[2][1]], axis=1).astype("<f4") if c else np.zeros((0, 18), "<f4")
    vertex = np.stack([pos_u, rot_u, scl_u, col_u], axis=-1).reshape(-1, 4)[:n].astype("<u4")
    lines = ["ply", "format binary_little_endian 1.0", "comment Neural Studio compressed PLY", f"element chunk {c}"]
    lines += [f"property float {p}" for p in CHUNK_PROPS + COLOR_PROPS]
    lines += [f"element vertex {n}"] + [f"property uint {p}" for p in VERTEX_PROPS]
    sh_bytes = b""
    if k:
        lines += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(3 * k)]
        flat = gaussians["shN"].astype(np.float64).transpose(0, 2, 1).reshape(n, 3 * k)
        sh_bytes = np.clip(np.trunc((flat / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8).tobytes()
    lines.append("end_header")
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        f.write(chunk_table.tobytes())
        f.write(vertex.tobytes())
        f.write(sh_bytes)


def _pack_rotation(q: np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternions -> 2-10-10-10 "largest of four" uint32. [M, 4] -> [M]"""
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(q.shape[0])
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    out = largest.astype(np.uint32)
    for j in range(3):
        out = out << np.uint32(10) | _pack_unorm(q[rows, others[:, j]] / _SQRT2 + 0.5, 10)
    return out
