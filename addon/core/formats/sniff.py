"""Name a file's format from its first bytes, for error messages (imports no other format)."""

from __future__ import annotations

import struct


def describe_bytes(head: bytes) -> str | None:
    """Name the format the first bytes of a file announce (for error messages), or None."""
    if head[:2] == b"\x1f\x8b":
        return "a gzip file (an SPZ file of version 1-3, or another gzip'd file)"
    if len(head) >= 4 and struct.unpack_from("<I", head)[0] == 0x5053474E:
        return "an SPZ file (version 4, 'NGSP' header)"
    if head[:3] == b"ply":
        return "a PLY file"
    if head[:4] == b"glTF":
        return "a glTF binary (.glb)"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "a PNG image"
    return None
