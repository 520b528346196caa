"""3D Gaussian Splatting PLY files: read and write, numpy only.

The layout is the one the original 3DGS code and gsplat's ``export_splats`` write: one
``vertex`` element, binary little-endian, float32 properties
``x y z [nx ny nz] f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3``.
``f_rest`` is channel-major: all K coefficients of red, then green, then blue (gsplat permutes
its ``shN [N, K, 3]`` to ``[N, 3, K]`` before flattening; we do the same).
Values are the raw optimisation parameters: log scales, logit opacities, (w, x, y, z) quaternions.

Reading is vectorised (one ``np.fromfile`` of the vertex block with a structured dtype), takes
properties in any order, keeps unknown vertex properties as extra per-Gaussian arrays, skips
other fixed-size elements, and reads small ascii files. Writing then reading is bit-exact.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np

from .errors import FormatError
from .gaussians import DEGREE_BY_K, check_gaussians, extras
from .ply_header import _Element, read_header
from . import playcanvas

log = logging.getLogger(__name__)

# numpy dtype -> PLY name, for writing extra arrays.
_PLY_NAMES: dict[str, str] = {
    "int8": "char", "uint8": "uchar", "int16": "short", "uint16": "ushort",
    "int32": "int", "uint32": "uint", "float32": "float", "float64": "double",
}
# The 3DGS reference writer stores all-zero normals; they carry nothing, so reading drops them.
_FILLER_PROPERTIES = ("nx", "ny", "nz")
_F_REST = re.compile(r"f_rest_(\d+)$")


def _vertex_layout(path: str, elements: list[_Element]) -> tuple[_Element, int]:
    """The vertex element and the byte offset of its data from the start of the body."""
    offset = 0
    for el in elements:
        if el.name == "vertex":
            if not el.fixed_size:
                raise FormatError(f"{path}: 'vertex' element has a list property; 3DGS PLYs have none")
            names = [n for n, _ in el.props]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise FormatError(f"{path}: 'vertex' element repeats properties {dupes}")
            return el, offset
        if not el.fixed_size:
            raise FormatError(
                f"{path}: element '{el.name}' before 'vertex' has list properties; cannot locate the vertex data"
            )
        offset += el.count * el.dtype().itemsize
    raise FormatError(f"{path}: no 'vertex' element in the PLY header")


def _required_names(path: str, el: _Element) -> tuple[list[str], int]:
    """Check the required 3DGS properties exist and are floats; return (f_rest names, K)."""
    types = dict(el.props)
    rest = sorted((int(m.group(1)), n) for n, _ in el.props if (m := _F_REST.match(n)))
    if [i for i, _ in rest] != list(range(len(rest))):
        raise FormatError(f"{path}: f_rest_* properties are not numbered 0..{len(rest) - 1} without gaps")
    if len(rest) % 3 or len(rest) // 3 not in DEGREE_BY_K:
        raise FormatError(
            f"{path}: {len(rest)} f_rest properties; expected 0, 9, 24 or 45 (3 x K for SH degree 0-3)"
        )
    required = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [n for n in required if n not in types]
    if missing:
        what = describe_vertex(set(types))
        if what:
            raise FormatError(f"{path}: this is {what} (it lacks the 3DGS properties {missing})")
        raise FormatError(f"{path}: vertex element lacks required 3DGS properties {missing}")
    rest_names = [n for _, n in rest]
    not_float = [f"{n} ({types[n]})" for n in required + rest_names if types[n] not in ("<f4", "<f8")]
    if not_float:
        raise FormatError(f"{path}: 3DGS properties must be float or double, got {not_float}")
    return rest_names, len(rest) // 3


def _read_body(path: str, fmt: str, elements: list[_Element], body_offset: int) -> tuple[_Element, np.ndarray]:
    """Read the vertex block as a structured array [N]."""
    vertex, offset = _vertex_layout(path, elements)
    dtype = vertex.dtype()
    n = vertex.count
    if fmt == "ascii":
        with open(path, "rb") as f:
            f.seek(body_offset)
            text = f.read()
        if elements[0] is not vertex:
            raise FormatError(f"{path}: ascii PLY must have 'vertex' as its first element")
        values = np.array(text.split()[: n * len(vertex.props)], dtype=np.float64)
        if values.size != n * len(vertex.props):
            raise FormatError(
                f"{path}: truncated ascii PLY: {values.size} values for {n} vertices x "
                f"{len(vertex.props)} properties"
            )
        table = values.reshape(n, len(vertex.props))
        data = np.empty(n, dtype)
        for j, (name, _) in enumerate(vertex.props):
            data[name] = table[:, j]
        return vertex, data
    size = os.path.getsize(path)
    start = body_offset + offset
    need = start + n * dtype.itemsize
    if size < need:
        raise FormatError(
            f"{path}: truncated: header declares {n} vertices of {dtype.itemsize} bytes "
            f"({need} bytes with header), file has {size} bytes"
        )
    if all(el.fixed_size for el in elements):
        expected = body_offset + sum(el.count * el.dtype().itemsize for el in elements)
        if size != expected:
            raise FormatError(
                f"{path}: file has {size} bytes but the header's element counts add up to {expected}; "
                "wrong element count or trailing data"
            )
    with open(path, "rb") as f:
        f.seek(start)
        data = np.fromfile(f, dtype=dtype, count=n)
    if data.shape[0] != n:
        raise FormatError(f"{path}: truncated: read {data.shape[0]} of {n} vertices")
    return vertex, data


def _columns(data: np.ndarray, names: list[str], channel_major_k: int | None = None) -> np.ndarray:
    """Gather named fields of a structured array into a C-contiguous float32 array.

    Args:
        data: the vertex records. [N]
        names: fields to take, in order.
        channel_major_k: when given, the fields are f_rest (channel-major, 3 x K) and the
            result is reordered to [N, K, 3] in the same single copy.

    Returns:
        float32 [N, len(names)], or [N, K, 3] with ``channel_major_k``.
    """
    def shaped(table: np.ndarray) -> np.ndarray:
        if channel_major_k is None:
            return np.ascontiguousarray(table)
        return np.ascontiguousarray(table.reshape(table.shape[0], 3, channel_major_k).transpose(0, 2, 1))

    n = data.shape[0]
    fields = data.dtype.fields
    if all(fields[nm][0] == np.float32 for nm in names) and data.dtype.itemsize % 4 == 0:
        # All-float32 records: view the block as a 2-D float32 table and take columns in one go.
        flat = np.ndarray((n, data.dtype.itemsize // 4), np.float32, data.data if n else b"")
        cols = [fields[nm][1] // 4 for nm in names]
        if all(fields[nm][1] % 4 == 0 for nm in names):
            if cols and cols == list(range(cols[0], cols[0] + len(cols))):
                # The usual case: the properties sit side by side, a strided slice copy.
                return shaped(flat[:, cols[0]:cols[0] + len(cols)])
            return shaped(flat[:, cols])
    out = np.empty((n, len(names)), np.float32)
    for j, nm in enumerate(names):
        out[:, j] = data[nm]
    return shaped(out)


def vertex_properties(path: str | os.PathLike) -> list[str]:
    """The vertex property names of a PLY file, in order (e.g. to tell whether it had normals)."""
    _, elements, _ = read_header(path)
    return [name for el in elements if el.name == "vertex" for name, _ in el.props]


def describe_vertex(names: set[str]) -> str | None:
    """Name the kind of non-3DGS PLY a vertex property set belongs to, or None."""
    if {"value", "weight"} <= names:
        return "a volume-Gaussian PLY (x y z value weight ...), not 3D Gaussian Splatting"
    if {"red", "green", "blue"} <= names or {"r", "g", "b"} <= names:
        return "a coloured point cloud (x y z + colours), not 3D Gaussian Splatting"
    if not names - {"x", "y", "z", "nx", "ny", "nz"}:
        return "a plain point cloud (x y z), not 3D Gaussian Splatting"
    return None


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a 3DGS PLY file into a Gaussians map.

    Args:
        path: file to read.

    Returns:
        The PROTOCOL.md Gaussians map: ``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z),
        ``scales [N, 3]`` (log), ``opacities [N]`` (logit), ``sh0 [N, 3]``, ``shN [N, K, 3]``,
        all C-contiguous float32, plus one ``[N]`` array per extra vertex property (its own
        dtype; the 3DGS zero normals ``nx ny nz`` are dropped).

    Raises:
        FormatError: bad magic, unsupported format, missing or non-float required properties,
            truncated data, or element counts that do not match the file size.
    """
    path = os.fspath(path)
    fmt, elements, body_offset = read_header(path)
    if playcanvas.is_compressed_layout(elements):
        # The same extension, a different layout: read it rather than report missing properties.
        return playcanvas.read_compressed_ply(path)
    # Check the properties before reading any data.
    rest_names, k = _required_names(path, _vertex_layout(path, elements)[0])
    vertex, data = _read_body(path, fmt, elements, body_offset)

    g: dict[str, np.ndarray] = {
        "means": _columns(data, ["x", "y", "z"]),
        "quats": _columns(data, ["rot_0", "rot_1", "rot_2", "rot_3"]),
        "scales": _columns(data, ["scale_0", "scale_1", "scale_2"]),
        "opacities": _columns(data, ["opacity"]).reshape(-1),
        "sh0": _columns(data, ["f_dc_0", "f_dc_1", "f_dc_2"]),
        # Channel-major on disk: [N, 3, K] -> [N, K, 3].
        "shN": _columns(data, rest_names, channel_major_k=k),
    }
    known = set(rest_names) | {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0",
                               "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", *_FILLER_PROPERTIES}
    for name, _ in vertex.props:
        if name not in known and name not in g:
            g[name] = np.array(data[name], dtype=data.dtype.fields[name][0].newbyteorder("="))
    log.debug("read %d Gaussians (SH degree %d) from %s", data.shape[0], DEGREE_BY_K[k], path)
    return g


def ply_header(n: int, k: int, extra: dict[str, np.dtype] | None = None, normals: bool = True) -> bytes:
    """The header bytes :func:`write_ply` writes for N Gaussians with K rest coefficients."""
    props = ["x", "y", "z"] + (list(_FILLER_PROPERTIES) if normals else [])
    props += [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(3 * k)]
    props += ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {p}" for p in props]
    for name, dt in (extra or {}).items():
        lines.append(f"property {_PLY_NAMES[np.dtype(dt).name]} {name}")
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


def write_ply(path: str | os.PathLike, gaussians: dict[str, np.ndarray], normals: bool = True) -> None:
    """Write a Gaussians map as a 3DGS PLY (binary little-endian, float32).

    Args:
        path: file to write (replaced).
        gaussians: the Gaussians map (see :func:`read_ply`); extra ``[N]`` arrays of a PLY scalar
            dtype are written as extra vertex properties after the 3DGS ones; others are skipped
            with a warning.
        normals: write the zero ``nx ny nz`` properties of the original 3DGS layout.

    Raises:
        FormatError: the map does not follow the Gaussians data contract.
    """
    path = os.fspath(path)
    n, k = check_gaussians(gaussians, path)
    extra_arrays = {}
    for name, arr in extras(gaussians).items():
        if arr.ndim == 1 and arr.dtype.name in _PLY_NAMES and re.fullmatch(r"[A-Za-z_][\w]*", name):
            extra_arrays[name] = arr
        else:
            log.warning("%s: not writing extra array '%s' %s %s (not a [N] PLY scalar)", path, name, arr.shape, arr.dtype)

    fields = [("means", 3)] + ([("normals", 3)] if normals else []) + [("sh0", 3), ("shN", 3 * k),
              ("opacities", 1), ("scales", 3), ("quats", 4)]
    width = sum(w for _, w in fields)
    table = np.empty((n, width), "<f4")
    col = 0
    for key, w in fields:
        if key == "normals":
            table[:, col:col + w] = 0.0
        elif key == "shN":
            # [N, K, 3] -> channel-major [N, 3, K], as gsplat and 3DGS store f_rest.
            table[:, col:col + w] = gaussians["shN"].transpose(0, 2, 1).reshape(n, w)
        else:
            table[:, col:col + w] = gaussians[key].reshape(n, w)
        col += w
    header = ply_header(n, k, {nm: a.dtype for nm, a in extra_arrays.items()}, normals)
    if extra_arrays:
        dtype = np.dtype([("f", "<f4", (width,))] + [(nm, a.dtype.newbyteorder("<")) for nm, a in extra_arrays.items()])
        records = np.empty(n, dtype)
        records["f"] = table
        for nm, a in extra_arrays.items():
            records[nm] = a
        body = records
    else:
        body = table
    with open(path, "wb") as f:
        f.write(header)
        f.write(np.ascontiguousarray(body).view(np.uint8).reshape(-1).data)
