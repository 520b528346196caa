""".splat import against values computed independently."""

import struct

import numpy as np
import pytest
import torch
from gsplat.exporter import export_splats

from addon.core.formats import FormatError, splat

C0 = 0.28209479177387814


def test_hand_packed_records(tmp_path):
    # Two splats packed by hand with struct, values chosen so the expected raw parameters are exact.
    recs = [
        ((1.0, -2.0, 3.5), (0.5, 1.0, 2.0), (255, 0, 128, 191), (255, 128, 128, 128)),
        ((0.0, 0.0, 0.0), (1e-3, 1e-3, 1e-3), (64, 32, 16, 0), (128, 0, 128, 255)),
    ]
    blob = b"".join(struct.pack("<3f3f4B4B", *p, *s, *c, *q) for p, s, c, q in recs)
    path = tmp_path / "a.splat"
    path.write_bytes(blob)
    g = splat.read_splat(path)
    assert g["means"].tolist() == [[1.0, -2.0, 3.5], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(np.exp(g["scales"]), [[0.5, 1.0, 2.0], [1e-3] * 3], rtol=1e-6)
    np.testing.assert_allclose(g["sh0"] * C0 + 0.5, [[1.0, 0.0, 128 / 255], [64 / 255, 32 / 255, 16 / 255]], atol=1e-6)
    # opacity 191/255 -> logit; 0 is clamped half a step up, to 0.5/255
    a = np.array([191 / 255, 0.5 / 255])
    np.testing.assert_allclose(g["opacities"], np.log(a / (1 - a)), rtol=1e-5)
    np.testing.assert_allclose(g["quats"], [[127 / 128, 0, 0, 0], [0, -1.0, 0, 127 / 128]], atol=1e-7)
    assert g["shN"].shape == (2, 0, 3)
    for key in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        assert g[key].dtype == np.float32 and g[key].flags.c_contiguous


def test_reads_gsplat_splat_export(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    means = rng.standard_normal((n, 3)).astype(np.float32)
    scales = (rng.standard_normal((n, 3)) - 2).astype(np.float32)
    quats = rng.standard_normal((n, 4)).astype(np.float32)
    opac = rng.standard_normal(n).astype(np.float32)
    sh0 = (rng.standard_normal((n, 3)) * 0.5).astype(np.float32)
    path = tmp_path / "g.splat"
    export_splats(torch.from_numpy(means), torch.from_numpy(scales), torch.from_numpy(quats), torch.from_numpy(opac),
                  torch.from_numpy(sh0)[:, None], torch.zeros(n, 0, 3), format="splat", save_to=str(path))
    g = splat.read_splat(path)
    # gsplat reorders splats (Morton order); match them by position, which is stored exactly.
    order = [int(np.flatnonzero((means == m).all(axis=1))[0]) for m in g["means"]]
    assert sorted(order) == list(range(n))
    np.testing.assert_allclose(g["scales"], scales[order], atol=1e-5)
    # 8-bit colour and alpha: within one quantisation step, computed independently here
    rgb = np.clip(sh0[order] * C0 + 0.5, 0, 1)
    np.testing.assert_allclose(g["sh0"] * C0 + 0.5, rgb, atol=1 / 255 + 1e-6)
    alpha = 1 / (1 + np.exp(-opac[order]))
    alpha_back = 1 / (1 + np.exp(-g["opacities"].astype(np.float64)))
    assert np.all(np.abs(alpha_back - alpha) <= 1 / 255 + 1e-6)
    qn = quats[order] / np.linalg.norm(quats[order], axis=1, keepdims=True)
    qb = g["quats"] / np.linalg.norm(g["quats"], axis=1, keepdims=True)
    assert np.all(np.abs(np.abs(np.sum(qn * qb, axis=1)) - 1) < 2e-2)


def test_truncated(tmp_path):
    path = tmp_path / "t.splat"
    path.write_bytes(b"\0" * 70)
    with pytest.raises(FormatError, match=r"t\.splat: truncated .*70 bytes is not a multiple of the 32-byte"):
        splat.read_splat(path)


def test_empty_file_is_zero_splats(tmp_path):
    path = tmp_path / "e.splat"
    path.write_bytes(b"")
    assert splat.read_splat(path)["means"].shape == (0, 3)
