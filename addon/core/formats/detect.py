"""Which Gaussian file format a file holds, by content, and one reader for all of them.

Readers name the format they found in their errors ("this is a compressed PlayCanvas PLY",
"this is an SPZ file") rather than reporting missing properties; :func:`read_gaussians_file`
sends each file to its reader whatever its extension says.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from .errors import FormatError
from .sniff import describe_bytes

#: Format ids :func:`detect_format` returns, with the words errors use for them.
FORMAT_NAMES = {
    "ply": "a 3DGS PLY",
    "compressed_ply": "a compressed PlayCanvas PLY",
    "spz": "an SPZ file",
    "splat": "an antimatter15 .splat file",
}


def detect_format(path: str | os.PathLike) -> str:
    """The format of a Gaussians file: one of ``FORMAT_NAMES``.

    PLYs are told apart by their header (the compressed layout has a ``chunk`` element and
    ``packed_*`` vertex properties); SPZ by its gzip or 'NGSP' magic; a headerless file whose
    name ends in .splat is a .splat.

    Raises:
        FormatError: the file cannot be read or is none of these.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if head[:3] == b"ply":
        from . import ply, playcanvas

        _, elements, _ = ply.read_header(path)
        return "compressed_ply" if playcanvas.is_compressed_layout(elements) else "ply"
    if head[:2] == b"\x1f\x8b" or (len(head) >= 4 and struct.unpack_from("<I", head)[0] == 0x5053474E):
        return "spz"
    # Nothing recognisable inside: trust the extension, so that reader reports what is wrong.
    for ext, fmt in ((".splat", "splat"), (".ply", "ply"), (".spz", "spz")):
        if path.lower().endswith(ext):
            return fmt
    what = describe_bytes(head)
    raise FormatError(
        f"{path}: not a Gaussians file" + (f": this is {what}" if what else "")
        + " (expected a 3DGS or compressed PlayCanvas PLY, an SPZ or a .splat file)"
    )


def read_gaussians_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """Read any supported Gaussians file.

    Returns:
        (the Gaussians map in the file's own frame, the format id). SPZ files are in SPZ's RUB
        (Y-up) frame; the others as stored.

    Raises:
        FormatError: naming the format found, when the file cannot be read as it.
    """
    from . import playcanvas, ply, splat, spz

    fmt = detect_format(path)
    reader = {"ply": ply.read_ply, "compressed_ply": playcanvas.read_compressed_ply,
              "spz": spz.read_spz, "splat": splat.read_splat}[fmt]
    return reader(path), fmt
