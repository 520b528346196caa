"""OpenEXR reader for uncompressed scanline files (single- or multi-part), as Blender writes them.

stdlib + numpy. Capture renders its views to multilayer EXR with codec NONE and reads colour and
depth back in bulk with :func:`read_exr` (no bpy image round trip, no OpenEXR library in Blender's
Python).
"""

from __future__ import annotations

import struct

import numpy as np

_EXR_MAGIC = 20000630
_EXR_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _read_exr_header(buf: bytes, pos: int):
    attrs = {}
    while True:
        end = buf.index(b"\0", pos)
        name = buf[pos:end].decode("latin-1")
        pos = end + 1
        if not name:
            return attrs, pos
        end = buf.index(b"\0", pos)
        kind = buf[pos:end].decode("latin-1")
        pos = end + 1
        (size,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        attrs[name] = (kind, buf[pos : pos + size])
        pos += size


def _exr_channels(raw: bytes):
    chans, pos = [], 0
    while raw[pos] != 0:
        end = raw.index(b"\0", pos)
        name = raw[pos:end].decode("latin-1")
        (ptype,) = struct.unpack_from("<i", raw, end + 1)
        chans.append((name, ptype))
        pos = end + 1 + 16  # pixel type, pLinear + 3 reserved bytes, xSampling, ySampling
    return chans


def read_exr(path) -> dict[str, np.ndarray]:
    """Read every channel of an uncompressed scanline OpenEXR file (one or several parts).

    Blender names channels "ViewLayer.Combined.R", "ViewLayer.Depth.Z", ... in multilayer files.

    Args:
        path: file written with codec NONE.

    Returns:
        Map from channel name (Blender's names already carry the layer and pass) to a float32
        image, row 0 at the top. [H, W] each

    Raises:
        ValueError: not an OpenEXR file, compressed, tiled or deep.
    """
    with open(path, "rb") as fh:
        buf = fh.read()
    if len(buf) < 8 or struct.unpack_from("<i", buf, 0)[0] != _EXR_MAGIC:
        raise ValueError(f"{path}: not an OpenEXR file")
    flags = struct.unpack_from("<I", buf, 4)[0] >> 8
    if flags & 0x2 or flags & 0x8:
        raise ValueError(f"{path}: tiled or deep OpenEXR is not supported")
    multipart = bool(flags & 0x10)
    pos = 8
    headers = []
    while True:
        attrs, pos = _read_exr_header(buf, pos)
        headers.append(attrs)
        if not multipart:
            break
        if buf[pos] == 0:  # an empty header ends the list of parts
            pos += 1
            break
    layouts = []
    for attrs in headers:
        if attrs["compression"][1][0] != 0:
            raise ValueError(f"{path}: compressed OpenEXR (write it with codec NONE)")
        x0, y0, x1, y1 = struct.unpack("<4i", attrs["dataWindow"][1])
        chans = sorted(_exr_channels(attrs["channels"][1]))
        layouts.append((x1 - x0 + 1, y1 - y0 + 1, chans))
    # Offset tables follow the headers, one uint64 per scanline (uncompressed: one line a chunk).
    out = {}
    data = np.frombuffer(buf, dtype=np.uint8)
    for w, h, chans in layouts:
        offsets = np.frombuffer(buf, dtype="<u8", count=h, offset=pos).astype(np.int64)
        pos += 8 * h
        # Each chunk: [part number if multipart] y, byte count, then per channel one row.
        start = offsets + (12 if multipart else 8)
        col = 0
        for name, ptype in chans:
            dt = _EXR_TYPES[ptype]
            nbytes = w * dt.itemsize
            idx = start[:, None] + col + np.arange(nbytes)[None, :]
            rows = data[idx].view(dt).reshape(h, w)
            out[name] = rows.astype(np.float32)
            col += nbytes
    return out
