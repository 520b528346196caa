"""3DGS PLY: bit-exact round trips, gsplat interop, malformed files."""

import struct

import numpy as np
import pytest
import torch
from gsplat.exporter import export_splats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from addon.core.formats import FormatError, ply
from tests.formats.conftest import make_gaussians

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def assert_bit_equal(a: dict, b: dict, keys=KEYS):
    for key in keys:
        assert a[key].dtype == b[key].dtype == np.float32, key
        assert a[key].shape == b[key].shape, key
        assert a[key].flags.c_contiguous, key
        # Compare bit patterns so NaN payloads and -0.0 count too.
        assert np.array_equal(a[key].view(np.uint32), b[key].view(np.uint32)), key


@pytest.mark.parametrize("k", [0, 3, 8, 15])
@pytest.mark.parametrize("n", [0, 1, 257])
def test_round_trip_bit_exact(tmp_path, n, k):
    g = make_gaussians(n, k, seed=n + k)
    path = tmp_path / "g.ply"
    ply.write_ply(path, g)
    back = ply.read_ply(path)
    assert_bit_equal(back, g)
    assert set(back) == set(KEYS)  # the zero normals are not returned as extras


def test_round_trip_special_values_and_extras(tmp_path):
    g = make_gaussians(6, 3)
    g["means"][0] = [np.nan, np.inf, -0.0]
    g["shN"][1, 2, 1] = np.float32(1e-45)  # denormal
    g["labels"] = np.arange(6, dtype=np.int32) - 3
    g["weight"] = np.linspace(0, 1, 6, dtype=np.float32)
    path = tmp_path / "g.ply"
    ply.write_ply(path, g)
    back = ply.read_ply(path)
    assert_bit_equal(back, g)
    assert back["labels"].dtype == np.int32 and np.array_equal(back["labels"], g["labels"])
    assert np.array_equal(back["weight"], g["weight"])


finite32 = hnp.arrays(np.float32, st.integers(0, 5), elements=st.floats(width=32, allow_nan=False))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 4), k=st.sampled_from([0, 3, 8, 15]), data=st.data())
def test_round_trip_hypothesis(tmp_path_factory, n, k, data):
    floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
    g = {
        key: data.draw(hnp.arrays(np.float32, shape, elements=floats))
        for key, shape in (("means", (n, 3)), ("quats", (n, 4)), ("scales", (n, 3)), ("opacities", (n,)),
                           ("sh0", (n, 3)), ("shN", (n, k, 3)))
    }
    path = tmp_path_factory.mktemp("h") / "g.ply"
    ply.write_ply(path, g)
    assert_bit_equal(ply.read_ply(path), g)


def test_writer_layout_independent_parse(tmp_path):
    """Parse our file with a hand-written reader of the documented 3DGS layout."""
    g = make_gaussians(5, 8)
    path = tmp_path / "g.ply"
    ply.write_ply(path, g)
    raw = path.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    names = [line.split()[-1].decode() for line in head.splitlines() if line.startswith(b"property float")]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(24)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                                        "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    rows = [struct.unpack(f"<{len(names)}f", body[i * 4 * len(names):(i + 1) * 4 * len(names)]) for i in range(5)]
    for i, row in enumerate(rows):
        rec = dict(zip(names, row))
        assert rec["x"] == g["means"][i, 0] and rec["rot_0"] == g["quats"][i, 0] and rec["opacity"] == g["opacities"][i]
        assert rec["nx"] == 0.0
        # channel-major f_rest: index c * K + k holds channel c of coefficient k
        for c in range(3):
            for kk in range(8):
                assert rec[f"f_rest_{c * 8 + kk}"] == g["shN"][i, kk, c]


@pytest.mark.parametrize("k", [0, 3, 15])
def test_reads_gsplat_export(tmp_path, k):
    g = make_gaussians(33, k, seed=7)
    path = tmp_path / "gsplat.ply"
    export_splats(
        means=torch.from_numpy(g["means"]), scales=torch.from_numpy(g["scales"]),
        quats=torch.from_numpy(g["quats"]), opacities=torch.from_numpy(g["opacities"]),
        sh0=torch.from_numpy(g["sh0"])[:, None, :], shN=torch.from_numpy(g["shN"]),
        format="ply", save_to=str(path),
    )
    assert_bit_equal(ply.read_ply(path), g)


def test_property_order_and_double_and_other_elements(tmp_path):
    """Properties in another order, a double property, an element before 'vertex' and one after."""
    n = 3
    g = make_gaussians(n, 3, seed=3)
    order = ["opacity"] + [f"rot_{i}" for i in range(4)] + ["z", "y", "x"] + [f"f_rest_{i}" for i in range(9)]
    order += ["scale_2", "scale_1", "scale_0", "f_dc_0", "f_dc_1", "f_dc_2", "red"]
    cols = {"x": g["means"][:, 0], "y": g["means"][:, 1], "z": g["means"][:, 2], "opacity": g["opacities"],
            "red": np.array([1, 2, 3], np.uint8)}
    for i in range(4):
        cols[f"rot_{i}"] = g["quats"][:, i]
    for i in range(3):
        cols[f"scale_{i}"] = g["scales"][:, i]
        cols[f"f_dc_{i}"] = g["sh0"][:, i]
    for c in range(3):
        for kk in range(3):
            cols[f"f_rest_{c * 3 + kk}"] = g["shN"][:, kk, c]
    types = {name: ("<f8" if name == "y" else "u1" if name == "red" else "<f4") for name in order}
    rec = np.empty(n, np.dtype([(nm, types[nm]) for nm in order]))
    for nm in order:
        rec[nm] = cols[nm]
    plytype = {"<f4": "float", "<f8": "double", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment made by a test", "element camera 2",
              "property int id", "property short flag", "element vertex 3"]
    header += [f"property {plytype[types[nm]]} {nm}" for nm in order]
    header += ["element face 1", "property list uchar int vertex_indices", "end_header"]
    cam = np.zeros(2, np.dtype([("id", "<i4"), ("flag", "<i2")]))
    face = b"\x03" + struct.pack("<3i", 0, 1, 2)
    path = tmp_path / "odd.ply"
    path.write_bytes(("\n".join(header) + "\n").encode() + cam.tobytes() + rec.tobytes() + face)
    back = ply.read_ply(path)
    assert_bit_equal(back, g)
    assert back["red"].dtype == np.uint8 and back["red"].tolist() == [1, 2, 3]


def test_ascii_ply(tmp_path):
    g = make_gaussians(2, 0, seed=5)
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3"]
    table = np.concatenate([g["means"], g["sh0"], g["opacities"][:, None], g["scales"], g["quats"]], axis=1)
    lines = ["ply", "format ascii 1.0", "element vertex 2"] + [f"property float {nm}" for nm in names]
    lines += ["end_header"] + [" ".join(repr(float(v)) for v in row) for row in table]
    path = tmp_path / "a.ply"
    path.write_text("\n".join(lines) + "\n")
    # repr of the float64 value of a float32 parses back to that exact float32
    assert_bit_equal(ply.read_ply(path), g)


def _valid_bytes(n=4, k=3) -> bytes:
    return ply.ply_header(n, k) + np.zeros((n, 17 + 3 * k), "<f4").tobytes()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"plx\n" + b[4:], "bad magic"),
        (lambda b: b.replace(b"binary_little_endian", b"binary_big_endian"), "unsupported PLY format 'binary_big_endian'"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\0" * 8, "element counts add up"),
        (lambda b: b.replace(b"element vertex 4", b"element vertex 5"), "truncated"),
        (lambda b: b.replace(b"property float opacity\n", b"property float opacity_x\n"), "lacks required 3DGS properties ['opacity']"),
        (lambda b: b.replace(b"property float rot_3", b"property int rot_3"), "must be float or double, got ['rot_3 (<i4)']"),
        (lambda b: b.replace(b"property float f_rest_8\n", b"property float zz\n"), "8 f_rest properties"),
        (lambda b: b.replace(b"end_header", b"end_headr"), "no 'end_header'"),
        (lambda b: b.replace(b"element vertex", b"element points"), "no 'vertex' element"),
        (lambda b: b.replace(b"property float x\n", b"property wobble x\n"), "unknown property type"),
    ],
)
def test_malformed_files(tmp_path, mutate, message):
    path = tmp_path / "bad.ply"
    path.write_bytes(mutate(_valid_bytes()))
    with pytest.raises(FormatError) as info:
        ply.read_ply(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        ply.read_ply(tmp_path / "nope.ply")


def test_write_rejects_bad_maps(tmp_path):
    g = make_gaussians(3, 3)
    g["quats"] = g["quats"].astype(np.float64)
    with pytest.raises(FormatError, match="'quats' must be a float32"):
        ply.write_ply(tmp_path / "x.ply", g)
    g = make_gaussians(3, 4)
    with pytest.raises(FormatError, match="4 SH rest coefficients"):
        ply.write_ply(tmp_path / "x.ply", g)
    g = make_gaussians(3, 3)
    del g["sh0"]
    with pytest.raises(FormatError, match="missing Gaussian arrays \\['sh0'\\]"):
        ply.write_ply(tmp_path / "x.ply", g)
