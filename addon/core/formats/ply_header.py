"""PLY headers: parse the ``element``/``property`` lines shared by the 3DGS PLY reader
(``ply``) and the compressed PlayCanvas one (``playcanvas``)."""

from __future__ import annotations

import os
import re

import numpy as np

from .errors import FormatError
from .sniff import describe_bytes

# PLY scalar type names (both spellings the spec allows) -> numpy little-endian dtype.
_PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2",
    "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}
_MAX_HEADER_BYTES = 1 << 20


class _Element:
    """One ``element`` of a PLY header: name, count and ordered (name, dtype or None) props."""

    def __init__(self, name: str, count: int):
        self.name = name
        self.count = count
        self.props: list[tuple[str, str | None]] = []  # dtype None marks a list property

    @property
    def fixed_size(self) -> bool:
        return all(dt is not None for _, dt in self.props)

    def dtype(self) -> np.dtype:
        return np.dtype([(name, dt) for name, dt in self.props])


def _parse_header(path: str, head: bytes) -> tuple[str, list[_Element], int]:
    """Parse the header bytes; return (format, elements, byte offset of the body)."""
    if not head.startswith(b"ply\n") and not head.startswith(b"ply\r\n"):
        raise FormatError(f"{path}: not a PLY file (bad magic {head[:4]!r}, expected b'ply\\n')")
    end = re.search(rb"end_header\r?\n", head)
    if end is None:
        raise FormatError(f"{path}: PLY header has no 'end_header' line within {len(head)} bytes")
    fmt = None
    elements: list[_Element] = []
    lines = head[: end.start()].decode("ascii", errors="replace").splitlines()
    for lineno, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3:
                raise FormatError(f"{path}: header line {lineno}: malformed format line {line!r}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise FormatError(f"{path}: header line {lineno}: malformed element line {line!r}")
            elements.append(_Element(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise FormatError(f"{path}: header line {lineno}: property before any element")
            if len(words) == 5 and words[1] == "list":
                elements[-1].props.append((words[4], None))
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise FormatError(f"{path}: header line {lineno}: unknown property type in {line!r}")
        else:
            raise FormatError(f"{path}: header line {lineno}: unknown keyword {words[0]!r}")
    if fmt is None:
        raise FormatError(f"{path}: PLY header has no 'format' line")
    if fmt not in ("binary_little_endian", "ascii"):
        raise FormatError(
            f"{path}: unsupported PLY format '{fmt}' (only binary_little_endian, and ascii for small files)"
        )
    return fmt, elements, end.end()


def read_header(path: str | os.PathLike) -> tuple[str, list[_Element], int]:
    """Read and parse a PLY header: (format, elements, byte offset of the body).

    Raises:
        FormatError: the file cannot be read, is not a PLY (the message names the format it is
            when it recognises one, e.g. an SPZ file), or its header is malformed.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            while b"end_header" not in head and len(head) < _MAX_HEADER_BYTES:
                more = f.read(65536)
                if not more:
                    break
                head += more
    except OSError as exc:
        raise FormatError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not head.startswith(b"ply"):
        what = describe_bytes(head[:64])
        if what:
            raise FormatError(f"{path}: not a PLY file: this is {what}")
    return _parse_header(path, head)
