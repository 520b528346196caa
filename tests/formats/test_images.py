"""Image formats without Blender: the OpenEXR reader (capture) and the PNG writer (Render Splats)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from addon.core.formats.exr import read_exr
from addon.core.formats.png import write_png


def _write_exr(path, width, height, channels):
    """A minimal single-part uncompressed scanline OpenEXR writer (float32), for reader tests."""
    def attr(name, kind, data):
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(data)) + data
    names = sorted(channels)
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) for n in names) + b"\0"
    box = struct.pack("<4i", 0, 0, width - 1, height - 1)
    header = (attr("channels", "chlist", chlist) + attr("compression", "compression", b"\0")
              + attr("dataWindow", "box2i", box) + attr("displayWindow", "box2i", box)
              + attr("lineOrder", "lineOrder", b"\0") + attr("pixelAspectRatio", "float", struct.pack("<f", 1))
              + attr("screenWindowCenter", "v2f", struct.pack("<2f", 0, 0))
              + attr("screenWindowWidth", "float", struct.pack("<f", 1)) + b"\0")
    head = struct.pack("<iI", 20000630, 2) + header
    row_bytes = 8 + 4 * width * len(names)
    start = len(head) + 8 * height
    table = struct.pack(f"<{height}Q", *[start + y * row_bytes for y in range(height)])
    rows = b"".join(struct.pack("<ii", y, 4 * width * len(names))
                    + b"".join(channels[n][y].astype("<f4").tobytes() for n in names) for y in range(height))
    with open(path, "wb") as fh:
        fh.write(head + table + rows)


def test_read_exr_single_part(tmp_path):
    rng = np.random.default_rng(0)
    chans = {c: rng.random((5, 7)).astype(np.float32) for c in "RGBAZ"}
    _write_exr(tmp_path / "x.exr", 7, 5, chans)
    out = read_exr(tmp_path / "x.exr")
    assert sorted(out) == sorted(chans)
    for c in chans:
        np.testing.assert_array_equal(out[c], chans[c])
    (tmp_path / "bad.exr").write_bytes(b"not an exr")
    with pytest.raises(ValueError):
        read_exr(tmp_path / "bad.exr")


def test_write_png_reads_back_with_pillow(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (9, 13, 4), dtype=np.uint8)
    write_png(str(tmp_path / "f.png"), rgba)
    with Image.open(tmp_path / "f.png") as im:
        assert im.mode == "RGBA" and im.size == (13, 9)
        np.testing.assert_array_equal(np.asarray(im), rgba)
    assert not (tmp_path / "f.png.part").exists()
    with pytest.raises(ValueError, match="uint8"):
        write_png(str(tmp_path / "g.png"), rgba.astype(np.float32))
