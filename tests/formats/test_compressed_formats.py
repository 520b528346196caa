"""PlayCanvas compressed PLY and Niantic SPZ: hand-packed layouts, round trips, gsplat's own
compressed-PLY writer, the real files in ../shared/realsplat-data, and errors that name formats."""

import gzip
import struct

import numpy as np
import pytest
import torch
from gsplat.exporter import export_splats

from addon.core.formats import FormatError, detect, playcanvas, ply, splat, spz
from tests.formats.conftest import make_gaussians

C0 = 0.28209479177387814


def unit_quats(q):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q * np.sign(q[:, :1] + 1e-12)


def assert_same_rotation(a, b, atol):
    a, b = unit_quats(a.astype(np.float64)), unit_quats(b.astype(np.float64))
    dot = np.abs(np.sum(a * b, axis=1))
    assert np.all(dot > 1 - atol), float(dot.min())


# ---------------------------------------------------------------- SPZ

def test_spz_hand_packed_v3(tmp_path):
    # One point packed by hand from the README's layout, independent of our encoder.
    frac = 12
    pos = [1.5, -2.25, 0.0]
    fixed = b"".join(int(round(v * (1 << frac))).to_bytes(4, "little", signed=True)[:3] for v in pos)
    # Quaternion (x, y, z, w) = (0, 0.6, 0, 0.8): largest index 3 (w); others x, y, z from the high bits.
    comp = 3
    for v in (0.0, 0.6, 0.0):
        comp = (comp << 10) | ((v < 0) << 9) | int(511 * abs(v) / np.sqrt(0.5) + 0.5)
    body = (struct.pack("<IIIBBBB", 0x5053474E, 3, 1, 1, frac, 0, 0) + fixed + bytes([191])
            + bytes([128 + 38, 128, 255]) + bytes([160, 0, 255]) + struct.pack("<I", comp)
            + bytes([128, 192, 64, 128, 128, 128, 0, 255, 128]))
    path = tmp_path / "one.spz"
    path.write_bytes(gzip.compress(body))
    g = spz.read_spz(path)
    np.testing.assert_allclose(g["means"], [pos], atol=1 / 4096)
    np.testing.assert_allclose(g["scales"], [[0.0, -10.0, 255 / 16 - 10]], atol=1e-6)
    a = 191 / 255
    np.testing.assert_allclose(g["opacities"], [np.log(a / (1 - a))], rtol=1e-5)
    np.testing.assert_allclose(g["sh0"], [[(166 / 255 - 0.5) / 0.15, (128 / 255 - 0.5) / 0.15, 0.5 / 0.15]], rtol=1e-5)
    np.testing.assert_allclose(g["quats"], [[0.8, 0.0, 0.6, 0.0]], atol=2e-3)  # (w, x, y, z)
    # SH: coefficient-major, channel fastest: coefficient 0 = (0, 0.5, -0.5), 2 = (-1, 127/128, 0)
    np.testing.assert_allclose(g["shN"][0], [[0, 0.5, -0.5], [0, 0, 0], [-1, 127 / 128, 0]], atol=1e-6)


@pytest.mark.parametrize("version", [2, 3, 4])
@pytest.mark.parametrize("k", [0, 3, 15])
def test_spz_round_trip(tmp_path, version, k):
    g = make_gaussians(300, k, seed=version + k)
    g["scales"] = np.clip(g["scales"], -9.9, 5.0)
    g["sh0"] = np.clip(g["sh0"], -3.2, 3.2)
    g["shN"] = np.clip(g["shN"], -0.99, 0.99)
    path = tmp_path / "g.spz"
    spz.write_spz(path, g, version=version)
    assert detect.detect_format(path) == "spz"
    back = spz.read_spz(path)
    np.testing.assert_allclose(back["means"], g["means"], atol=0.5 / 4096 + 1e-6)
    np.testing.assert_allclose(back["scales"], g["scales"], atol=0.5 / 16 + 1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-back["opacities"])), 1 / (1 + np.exp(-g["opacities"])), atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(back["sh0"], g["sh0"], atol=0.5 / 255 / 0.15 + 1e-5)
    assert_same_rotation(back["quats"], g["quats"], atol=2e-3 if version >= 3 else 2e-2)
    assert back["shN"].shape == g["shN"].shape
    if k:
        # 5 bits for degree 1 (bucket 8/128), 4 bits for the rest (bucket 16/128)
        np.testing.assert_allclose(back["shN"][:, :3], g["shN"][:, :3], atol=4.5 / 128)
        np.testing.assert_allclose(back["shN"][:, 3:], g["shN"][:, 3:], atol=8.5 / 128)


def test_spz_real_v4_file(realsplat, tmp_path):
    path = realsplat("biker.spz")
    g, fmt = detect.read_gaussians_file(path)
    assert fmt == "spz" and g["means"].shape == (152746, 3) and g["shN"].shape == (152746, 0, 3)
    np.testing.assert_allclose(np.linalg.norm(g["quats"], axis=1), 1.0, atol=1e-5)
    # RUB (Y up): a person on a bike stands on y = 0 and is taller along y than it is wide.
    lo, hi = np.percentile(g["means"], [1, 99], axis=0)
    assert (hi - lo)[1] > max((hi - lo)[0], (hi - lo)[2])
    # Re-encoding the decoded values reproduces them (every stream is at its quantisation grid).
    for version in (3, 4):
        out = tmp_path / f"b{version}.spz"
        spz.write_spz(out, g, version=version)
        back = spz.read_spz(out)
        for key in ("means", "scales", "opacities", "sh0"):
            np.testing.assert_allclose(back[key], g[key], atol=1e-5, rtol=1e-6, err_msg=key)
        assert_same_rotation(back["quats"], g["quats"], atol=1e-5)
    assert (tmp_path / "b4.spz").stat().st_size < 1.2 * path.stat().st_size


def test_spz_errors_name_the_format(tmp_path):
    g = make_gaussians(10, 0)
    p = tmp_path / "x.ply"  # an SPZ under a .ply name
    spz.write_spz(p, g, version=4)
    with pytest.raises(FormatError, match="this is an SPZ file"):
        ply.read_ply(p)
    with pytest.raises(FormatError, match="this is an SPZ file"):
        splat.read_splat(p)
    assert detect.read_gaussians_file(p)[1] == "spz"
    blob = p.read_bytes()
    (tmp_path / "t.spz").write_bytes(blob[:-20])
    with pytest.raises(FormatError, match="this is an SPZ file"):
        spz.read_spz(tmp_path / "t.spz")
    (tmp_path / "z.spz").write_bytes(gzip.compress(b"NGSQ" + bytes(40)))
    with pytest.raises(FormatError, match="not an SPZ file"):
        spz.read_spz(tmp_path / "z.spz")


# ---------------------------------------------------------------- compressed PLY

def _compressed_header(n_chunks, n, sh_props=0):
    lines = ["ply", "format binary_little_endian 1.0", f"element chunk {n_chunks}"]
    lines += [f"property float {p}" for p in playcanvas.CHUNK_PROPS + playcanvas.COLOR_PROPS]
    lines += [f"element vertex {n}"] + [f"property uint {p}" for p in playcanvas.VERTEX_PROPS]
    if sh_props:
        lines += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(sh_props)]
    return ("\n".join(lines) + "\nend_header\n").encode()


def test_compressed_ply_hand_packed(tmp_path):
    chunk = struct.pack("<18f", 0, 0, 0, 2, 4, 8, -5, -5, -5, -1, -1, -1, 0, 0, 0, 1, 1, 1)
    pos = (2047 << 21) | (0 << 11) | 1023          # x = max, y = min, z = 1023/2047
    scl = (0 << 21) | (1023 << 11) | 2047          # -5, -1, -1
    # rot: largest index 0 (w); x, y, z unorm 10 bits: 0.5 -> 0, (u - 0.5) * sqrt(2)
    rot = (0 << 30) | (511 << 20) | (1023 << 10) | 511
    col = (255 << 24) | (0 << 16) | (128 << 8) | 191
    sh = bytes([0, 255, 128] * 3)
    path = tmp_path / "h.compressed.ply"
    path.write_bytes(_compressed_header(1, 1, 9) + chunk + struct.pack("<4I", pos, rot, scl, col) + sh)
    g = ply.read_ply(path)  # the 3DGS reader hands it over to the compressed one
    np.testing.assert_allclose(g["means"], [[2, 0, 8 * 1023 / 2047]], rtol=1e-6)
    np.testing.assert_allclose(g["scales"], [[-5, -1, -1]], rtol=1e-6)
    x = (1023 / 1023 - 0.5) * np.sqrt(2)
    small = (511 / 1023 - 0.5) * np.sqrt(2)
    w = np.sqrt(1 - x * x - 2 * small * small)
    np.testing.assert_allclose(g["quats"], [[w, small, x, small]], atol=1e-6)
    np.testing.assert_allclose(g["sh0"] * C0 + 0.5, [[1.0, 0.0, 128 / 255]], atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-g["opacities"])), [191 / 255], rtol=1e-5)
    # channel-major: f_rest 0..2 are red's 3 coefficients = (0 -> -4, 255 -> 4, 128 -> centre)
    np.testing.assert_allclose(g["shN"][0, :, 0], [-4, 4, (128.5 / 256 - 0.5) * 8], atol=1e-6)


def test_reads_gsplat_compressed_export(tmp_path):
    g = make_gaussians(700, 3, seed=3)
    g["shN"] = np.clip(g["shN"], -3.9, 3.9)
    t = {k: torch.from_numpy(v) for k, v in g.items()}
    blob = export_splats(t["means"], t["scales"], t["quats"], t["opacities"], t["sh0"][:, None], t["shN"], format="ply_compressed")
    path = tmp_path / "gs.compressed.ply"
    path.write_bytes(blob)
    back, fmt = detect.read_gaussians_file(path)
    # gsplat sorts splats (Morton order) and drops a few it deems invalid: match by nearest mean.
    assert fmt == "compressed_ply" and 600 <= back["means"].shape[0] <= 700
    d = np.linalg.norm(back["means"][:, None] - g["means"][None], axis=2)
    idx = d.argmin(axis=1)
    assert len(set(idx.tolist())) == back["means"].shape[0]
    ext = g["means"].max(0) - g["means"].min(0)
    assert np.all(np.abs(back["means"] - g["means"][idx]) <= ext / 1023 + 1e-5)
    assert_same_rotation(back["quats"], g["quats"][idx], atol=2e-3)
    np.testing.assert_allclose(back["shN"], g["shN"][idx], atol=8 / 256 + 1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-back["opacities"])), 1 / (1 + np.exp(-g["opacities"][idx])), atol=1 / 255)


@pytest.mark.parametrize("k", [0, 8])
def test_compressed_ply_round_trip(tmp_path, k):
    g = make_gaussians(600, k, seed=k)
    g["shN"] = np.clip(g["shN"], -3.9, 3.9)
    path = tmp_path / "g.compressed.ply"
    playcanvas.write_compressed_ply(path, g)
    back = ply.read_ply(path)
    ext = g["means"].max(0) - g["means"].min(0)
    assert np.all(np.abs(back["means"] - g["means"]) <= ext / 2 / 1023 + 1e-5)
    sext = g["scales"].max(0) - g["scales"].min(0)
    assert np.all(np.abs(back["scales"] - g["scales"]) <= sext / 2 / 1023 + 1e-5)
    assert_same_rotation(back["quats"], g["quats"], atol=2e-3)
    cext = (g["sh0"].max(0) - g["sh0"].min(0))
    assert np.all(np.abs(back["sh0"] - g["sh0"]) <= cext / 2 / 255 + 1e-5)
    assert back["shN"].shape == g["shN"].shape
    if k:
        np.testing.assert_allclose(back["shN"], g["shN"], atol=8 / 256 + 1e-6)


def test_compressed_ply_real_file(realsplat, tmp_path):
    path = realsplat("guitar.compressed.ply")
    g, fmt = detect.read_gaussians_file(path)
    assert fmt == "compressed_ply" and g["means"].shape == (90854, 3)
    np.testing.assert_allclose(np.linalg.norm(g["quats"], axis=1), 1.0, atol=1e-5)
    assert np.all(np.isfinite(g["opacities"])) and np.all(np.isfinite(g["scales"]))
    # Round trip through our writer in the file's own order: within half a quantisation step.
    out = tmp_path / "guitar.compressed.ply"
    playcanvas.write_compressed_ply(out, g)
    back = playcanvas.read_compressed_ply(out)
    np.testing.assert_allclose(back["means"], g["means"], atol=2e-3)
    assert_same_rotation(back["quats"], g["quats"], atol=2e-3)
    # and to a 3DGS PLY and back: exact
    ply.write_ply(tmp_path / "g.ply", g, normals=False)
    again = ply.read_ply(tmp_path / "g.ply")
    for key in g:
        assert np.array_equal(again[key], g[key]), key


def test_compressed_ply_errors_name_the_format(tmp_path, realsplat):
    chunk = struct.pack("<18f", *range(18))
    path = tmp_path / "bad.ply"
    path.write_bytes(_compressed_header(2, 1) + chunk * 2 + bytes(16))  # 2 chunks for 1 splat
    with pytest.raises(FormatError, match="this is a compressed PlayCanvas PLY"):
        ply.read_ply(path)
    path.write_bytes(_compressed_header(1, 1) + chunk + bytes(8))  # truncated
    with pytest.raises(FormatError, match="this is a compressed PlayCanvas PLY"):
        ply.read_ply(path)
    with pytest.raises(FormatError, match="this is a PLY file"):
        splat.read_splat(realsplat("guitar.compressed.ply"))


# ---------------------------------------------------------------- .splat export, PLY normals, others

def test_splat_export_matches_gsplat(tmp_path):
    g = make_gaussians(200, 3, seed=5)
    path = tmp_path / "ours.splat"
    splat.write_splat(path, g)
    ours = np.fromfile(path, splat.SPLAT_DTYPE)
    t = {k: torch.from_numpy(v) for k, v in g.items()}
    theirs = np.frombuffer(export_splats(t["means"], t["scales"], t["quats"], t["opacities"], t["sh0"][:, None], t["shN"],
                                         format="splat"), splat.SPLAT_DTYPE)
    o, th = ours[np.lexsort(ours["position"].T)], theirs[np.lexsort(theirs["position"].T)]
    assert np.array_equal(o["position"], th["position"])
    np.testing.assert_allclose(o["scale"], th["scale"], rtol=1e-6)
    # gsplat truncates to 8 bits, we round: at most one step apart
    assert np.abs(o["rgba"].astype(int) - th["rgba"]).max() <= 1
    assert np.abs(o["rot"].astype(int) - th["rot"]).max() <= 1
    back = splat.read_splat(path)
    np.testing.assert_allclose(back["means"], g["means"])
    np.testing.assert_allclose(back["sh0"] * C0 + 0.5, np.clip(g["sh0"] * C0 + 0.5, 0, 1), atol=0.5 / 255 + 1e-6)


def test_splat_real_file_round_trip(realsplat, tmp_path):
    g = splat.read_splat(realsplat("luma-seal.splat"))
    splat.write_splat(tmp_path / "s.splat", g)
    assert (tmp_path / "s.splat").read_bytes() == realsplat("luma-seal.splat").read_bytes()


def test_ply_without_normals(tmp_path, realsplat):
    src = realsplat("donut_fused_sh0.ply")
    assert "nx" not in ply.vertex_properties(src)
    g = ply.read_ply(src)
    ply.write_ply(tmp_path / "d.ply", g, normals=False)
    assert "nx" not in ply.vertex_properties(tmp_path / "d.ply")
    assert "nx" in ply.vertex_properties(realsplat("plane3_edited_sh3.ply"))
    for key, arr in ply.read_ply(tmp_path / "d.ply").items():
        assert np.array_equal(arr, g[key]), key


@pytest.mark.parametrize("name, words", [
    ("donut_color_pointcloud.ply", "this is a coloured point cloud"),
    ("cudagauss_volume.ply", "this is a volume-Gaussian PLY"),
])
def test_non_gaussian_plys_are_named(realsplat, name, words):
    with pytest.raises(FormatError, match=words):
        detect.read_gaussians_file(realsplat(name))


def test_unknown_file(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(FormatError, match="this is a PNG image"):
        detect.read_gaussians_file(p)
