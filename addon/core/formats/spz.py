"""Niantic SPZ (``.spz``): read versions 1-4 and write versions 2-4, numpy only.

The layout (nianticlabs/spz README "File Format" and ``load-spz.cc``, MIT; reimplemented here):

- Versions 1-3: the whole file is gzip; inside, a 16-byte header ``magic u32 = 0x5053474e
  ('NGSP') | version u32 | numPoints u32 | shDegree u8 | fractionalBits u8 | flags u8 |
  reserved u8`` followed by the attribute streams back to back.
- Version 4: a 32-byte plaintext header ``magic | version | numPoints | shDegree |
  fractionalBits | flags | numStreams u8 | tocByteOffset u32 | reserved[12]``, optional extension
  records up to ``tocByteOffset``, a table of ``numStreams`` x (compressed u64, uncompressed u64),
  then each stream compressed on its own with zstd.
- Streams, in order (empty ones omitted in v4): positions ``N x 3 x`` 24-bit signed fixed point
  with ``fractionalBits`` (v1: float16); alphas ``N x u8`` = sigmoid(opacity) * 255; colours
  ``N x 3 x u8`` = ``sh0 * 0.15 * 255 + 127.5`` (the DC coefficient itself, scaled by 0.15, not the
  colour); scales ``N x 3 x u8`` = ``(log scale + 10) * 16``; rotations as (x, y, z, w):
  v1-2 ``N x 3 x u8`` x, y, z of the w >= 0 quaternion as ``q * 127.5 + 127.5``, v3-4 ``N x u32``
  "smallest three": bits 30-31 the index of the largest |component|, then the other three in
  order from the high bits down, each a sign bit and 9 magnitude bits of ``|q| / sqrt(1/2)``;
  SH ``N x K x 3 x u8`` (coefficient-major, channel fastest) = ``q * 128 + 128``.
- Coordinates: SPZ stores RUB (x right, y up, z back: a Y-up world), so a file read here is a
  Y-up world; the import operator's automatic axes turn it into Blender's Z-up with
  ``axes.convert_axes(g, "y_up_to_z_up")``, and export does the inverse.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import zlib

import numpy as np

from .errors import FormatError
from .gaussians import DEGREE_BY_K, check_gaussians

log = logging.getLogger(__name__)

MAGIC = 0x5053474E
NAME = "an SPZ file"
COLOR_SCALE = 0.15
_DIM_BY_DEGREE = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}
_LEGACY_HEADER = struct.Struct("<IIIBBBB")
_V4_HEADER = struct.Struct("<IIIBBBBI12s")
_SQRT1_2 = np.sqrt(0.5)
# A quarter step (not half) so re-encoding rounds 0 and 255 back to themselves.
_ALPHA_EPS = 0.25 / 255.0
#: Refuse counts whose streams could not fit the file: a corrupt header must not allocate GBs.
_MIN_BYTES_PER_POINT_COMPRESSED = 1e-3


def _zstd():
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - the venv and Blender's Python both have it
        raise FormatError(
            "this is an SPZ version 4 file (zstd streams) and the Python module 'zstandard' is not installed"
        ) from exc
    return zstandard


def read_spz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an SPZ file (versions 1-4) into a Gaussians map, in the file's RUB (Y-up) frame.

    Args:
        path: file to read.

    Returns:
        The Gaussians map (float32, C-contiguous); ``shN [N, K, 3]`` with K = 0, 3, 8 or 15
        (degree-4 coefficients, new in v4, are dropped with a warning: the contract stops at 3).

    Raises:
        FormatError: naming the format, when the file is not a valid SPZ.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return decode_spz(blob, path)


def decode_spz(blob: bytes, source: str = "spz") -> dict[str, np.ndarray]:
    """Decode SPZ bytes (see :func:`read_spz`)."""
    if blob[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as exc:
            # A damaged SPZ still shows its magic in the part that does decompress.
            partial = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                start = partial.decompress(blob, 16)
            except zlib.error:
                start = b""
            if len(start) >= 4 and struct.unpack_from("<I", start)[0] == MAGIC:
                raise FormatError(f"{source}: this is {NAME} (gzip, v1-3), but it is truncated or corrupt: {exc}") from exc
            raise FormatError(f"{source}: this is a gzip file (an SPZ v1-3?) that does not decompress: {exc}") from exc
        return _decode_legacy(raw, source)
    if len(blob) >= 4 and struct.unpack_from("<I", blob)[0] == MAGIC:
        return _decode_v4(blob, source)
    raise FormatError(f"{source}: not an SPZ file (neither gzip nor the 'NGSP' magic; starts with {blob[:4]!r})")


def _decode_legacy(raw: bytes, source: str) -> dict[str, np.ndarray]:
    if len(raw) < _LEGACY_HEADER.size:
        raise FormatError(f"{source}: this is {NAME}, but its header is truncated ({len(raw)} bytes)")
    magic, version, n, degree, frac, flags, _ = _LEGACY_HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise FormatError(f"{source}: a gzip file, but not {NAME} (magic {magic:#x}, expected 'NGSP')")
    if not 1 <= version <= 3:
        raise FormatError(f"{source}: this is {NAME} of version {version} inside gzip; versions 1-3 use gzip")
    _check_degree(source, degree)
    dim = _DIM_BY_DEGREE[degree]
    pos_bytes = 6 if version == 1 else 9
    rot_bytes = 4 if version >= 3 else 3
    sizes = [n * pos_bytes, n, 3 * n, 3 * n, rot_bytes * n, 3 * dim * n]
    need = _LEGACY_HEADER.size + sum(sizes)
    if len(raw) < need:
        raise FormatError(
            f"{source}: this is {NAME} (v{version}, {n} points), but it is truncated: "
            f"{len(raw)} bytes decompressed, {need} needed"
        )
    streams, off = [], _LEGACY_HEADER.size
    for size in sizes:
        streams.append(np.frombuffer(raw, np.uint8, size, off))
        off += size
    return _unpack(streams, n, version, degree, frac, source)


def _decode_v4(blob: bytes, source: str) -> dict[str, np.ndarray]:
    if len(blob) < _V4_HEADER.size:
        raise FormatError(f"{source}: this is {NAME}, but its header is truncated ({len(blob)} bytes)")
    _, version, n, degree, frac, flags, num_streams, toc, _ = _V4_HEADER.unpack_from(blob)
    if version != 4:
        raise FormatError(f"{source}: this is {NAME} with a plaintext header of version {version}; only 4 has one")
    _check_degree(source, degree)
    dim = _DIM_BY_DEGREE[degree]
    sizes = [n * 9, n, 3 * n, 3 * n, 4 * n, 3 * dim * n]
    expected = [s for s in sizes if s]
    if num_streams != len(expected):
        raise FormatError(f"{source}: this is {NAME} (v4), but it has {num_streams} streams where {len(expected)} are expected")
    if toc < _V4_HEADER.size or toc + 16 * num_streams > len(blob):
        raise FormatError(f"{source}: this is {NAME} (v4), but its table of contents at {toc} lies outside the file")
    table = np.frombuffer(blob, "<u8", 2 * num_streams, toc).reshape(num_streams, 2)
    zstd = _zstd()
    off = toc + 16 * num_streams
    streams = []
    for (csize, usize), want in zip(table.tolist(), expected):
        if usize != want or off + csize > len(blob):
            raise FormatError(
                f"{source}: this is {NAME} (v4, {n} points), but a stream is {usize} bytes where {want} are "
                f"expected, or runs past the end of the file"
            )
        try:
            data = zstd.ZstdDecompressor().decompress(blob[off:off + csize], max_output_size=usize)
        except zstd.ZstdError as exc:
            raise FormatError(f"{source}: this is {NAME} (v4), but a zstd stream is corrupt: {exc}") from exc
        if len(data) != usize:
            raise FormatError(f"{source}: this is {NAME} (v4), but a stream decompressed to {len(data)} of {usize} bytes")
        streams.append(np.frombuffer(data, np.uint8))
        off += csize
    if not dim:
        streams.append(np.zeros(0, np.uint8))
    return _unpack(streams, n, version, degree, frac, source)


def _check_degree(source: str, degree: int) -> None:
    if degree not in _DIM_BY_DEGREE:
        raise FormatError(f"{source}: this is {NAME}, but its SH degree {degree} is not 0-4")


def _unpack(streams: list[np.ndarray], n: int, version: int, degree: int, frac: int, source: str) -> dict:
    """Attribute streams (uint8 views) -> the Gaussians map."""
    pos, alphas, colors, scales, rots, sh = streams
    if version == 1:
        means = pos.view("<f2").reshape(n, 3).astype(np.float64)
    else:
        b = pos.reshape(n, 3, 3).astype(np.int32)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)  # sign-extend 24 bits
        means = fixed.astype(np.float64) / float(1 << frac)
    a = np.clip(alphas.astype(np.float64) / 255.0, _ALPHA_EPS, 1.0 - _ALPHA_EPS)
    if version >= 3:
        xyzw = _unpack_smallest_three(rots.view("<u4")[:n] if rots.size else np.zeros(0, np.uint32))
    else:
        xyz = rots.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz * xyz, axis=1)))
        xyzw = np.concatenate([xyz, w[:, None]], axis=1)
    dim = _DIM_BY_DEGREE[degree]
    shn = (sh.reshape(n, dim, 3).astype(np.float64) - 128.0) / 128.0
    if dim > 15:
        log.warning("%s: SH degree 4 coefficients dropped (the Gaussians contract stops at degree 3)", source)
        shn = shn[:, :15]
    return {
        "means": np.ascontiguousarray(means, np.float32),
        "quats": np.ascontiguousarray(xyzw[:, [3, 0, 1, 2]], np.float32),
        "scales": (scales.reshape(n, 3).astype(np.float64) / 16.0 - 10.0).astype(np.float32),
        "opacities": (np.log(a) - np.log1p(-a)).astype(np.float32),
        "sh0": ((colors.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE).astype(np.float32),
        "shN": np.ascontiguousarray(shn, np.float32),
    }


def _unpack_smallest_three(comp: np.ndarray) -> np.ndarray:
    """uint32 smallest-three quaternions -> (x, y, z, w) float64. [N] -> [N, 4]"""
    n = comp.shape[0]
    comp = comp.astype(np.uint64)
    largest = (comp >> np.uint64(30)).astype(np.int64)
    out = np.zeros((n, 4))
    rows = np.arange(n)
    # The stored components are, from the lowest bits up, the non-largest indices from 3 down to 0.
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    for j in range(3):
        field = comp >> np.uint64(10 * (2 - j))
        mag = (field & np.uint64(511)).astype(np.float64) / 511.0 * _SQRT1_2
        neg = ((field >> np.uint64(9)) & np.uint64(1)).astype(bool)
        out[rows, others[:, j]] = np.where(neg, -mag, mag)
    out[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(out * out, axis=1)))
    return out


def _pack_smallest_three(xyzw: np.ndarray) -> np.ndarray:
    """(x, y, z, w) unit quaternions -> uint32 smallest-three. [N, 4] -> [N]"""
    n = xyzw.shape[0]
    rows = np.arange(n)
    largest = np.argmax(np.abs(xyzw), axis=1)
    negate = xyzw[rows, largest] < 0
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    comp = largest.astype(np.uint64)
    for j in range(3):
        v = xyzw[rows, others[:, j]]
        negbit = ((v < 0) ^ negate).astype(np.uint64)
        mag = np.minimum(np.floor(511.0 * np.abs(v) / _SQRT1_2 + 0.5), 511).astype(np.uint64)
        comp = (comp << np.uint64(10)) | (negbit << np.uint64(9)) | mag
    return comp.astype("<u4")


def _to_u8(x: np.ndarray) -> np.ndarray:
    # Half away from zero, as std::round in the reference (np.round would round half to even).
    return np.clip(np.floor(np.asarray(x) + 0.5), 0, 255).astype(np.uint8)


def _quantize_sh(x: np.ndarray, bits: int) -> np.ndarray:
    """8-bit SH with ``bits`` of precision: rounded to bucket centres, 0 stays exactly 128."""
    bucket = 1 << (8 - bits)
    q = np.round(x * 128.0).astype(np.int64) + 128
    q = (q + bucket // 2) // bucket * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(gaussians: dict[str, np.ndarray], version: int = 3, sh1_bits: int = 5, sh_rest_bits: int = 4,
               antialiased: bool = False, source: str = "gaussians") -> bytes:
    """Encode a Gaussians map (already in the RUB frame SPZ stores) as SPZ bytes.

    Args:
        gaussians: the Gaussians map; extras are not stored.
        version: 2 or 3 (gzip; every SPZ reader), or 4 (zstd streams; needs ``zstandard``).
        sh1_bits: precision bits of the degree-1 SH coefficients (the reference's default 5).
        sh_rest_bits: precision bits of degrees 2-3 (the reference's default 4).
        antialiased: set the header's antialiased flag (Mip-Splatting-trained Gaussians).
        source: what to name in errors.

    Returns:
        The file's bytes.

    Raises:
        FormatError: a malformed map, an unknown version, or positions too far out for 24 bits.
    """
    n, k = check_gaussians(gaussians, source)
    if version not in (2, 3, 4):
        raise FormatError(f"{source}: SPZ version {version} cannot be written (2, 3 or 4)")
    means = gaussians["means"].astype(np.float64)
    extent = float(np.max(np.abs(means))) if n else 0.0
    if not np.isfinite(extent):
        raise FormatError(f"{source}: non-finite positions cannot be stored in SPZ's fixed point")
    # 12 fractional bits (0.25 mm) as the reference, fewer when the scene is larger than +-2 km.
    frac = 12
    while frac > 0 and extent * (1 << frac) >= (1 << 23) - 1:
        frac -= 1
    if extent * (1 << frac) >= (1 << 23) - 1:
        raise FormatError(f"{source}: positions up to {extent:g} do not fit SPZ's 24-bit fixed point")
    fixed = np.round(means * (1 << frac)).astype(np.int64) & 0xFFFFFF
    pos = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=-1).astype(np.uint8)
    alpha = _to_u8(255.0 / (1.0 + np.exp(-gaussians["opacities"].astype(np.float64))))
    colors = _to_u8(gaussians["sh0"].astype(np.float64) * (COLOR_SCALE * 255.0) + 127.5)
    scales = _to_u8((gaussians["scales"].astype(np.float64) + 10.0) * 16.0)
    q = gaussians["quats"].astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), [1.0, 0.0, 0.0, 0.0])
    xyzw = q[:, [1, 2, 3, 0]]
    if version >= 3:
        rots = _pack_smallest_three(xyzw).view(np.uint8)
    else:
        xyzw = xyzw * np.where(xyzw[:, 3:] < 0, -1.0, 1.0)
        rots = _to_u8(xyzw[:, :3] * 127.5 + 127.5)
    shn = gaussians["shN"].astype(np.float64)
    sh = np.concatenate([_quantize_sh(shn[:, :3], sh1_bits), _quantize_sh(shn[:, 3:], sh_rest_bits)], axis=1)
    streams = [pos, alpha, colors, scales, rots, sh]
    degree = DEGREE_BY_K[k]
    flags = 1 if antialiased else 0
    if version < 4:
        head = _LEGACY_HEADER.pack(MAGIC, version, n, degree, frac, flags, 0)
        body = io.BytesIO()
        body.write(head)
        for s in streams:
            body.write(np.ascontiguousarray(s).tobytes())
        return gzip.compress(body.getvalue(), compresslevel=6, mtime=0)
    zstd = _zstd()
    chunks = [np.ascontiguousarray(s).tobytes() for s in streams]
    chunks = [c for c in chunks if c]
    packed = [zstd.ZstdCompressor(level=12).compress(c) for c in chunks]
    head = _V4_HEADER.pack(MAGIC, 4, n, degree, frac, flags, len(chunks), _V4_HEADER.size, b"\0" * 12)
    toc = np.array([[len(p), len(c)] for p, c in zip(packed, chunks)], "<u8").reshape(-1, 2).tobytes()
    return head + toc + b"".join(packed)


def write_spz(path: str | os.PathLike, gaussians: dict[str, np.ndarray], version: int = 3, **kwargs) -> None:
    """Write a Gaussians map (in SPZ's RUB frame) as an SPZ file; see :func:`encode_spz`."""
    path = os.fspath(path)
    data = encode_spz(gaussians, version=version, source=path, **kwargs)
    with open(path, "wb") as f:
        f.write(data)
