"""addon.core.colour: the one sRGB curve and the one alpha cut-off (bpy-free)."""

from __future__ import annotations

import numpy as np

from addon.core import colour


def test_srgb_curve_round_trips_and_hits_reference_points():
    x = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(colour.srgb_to_linear(colour.linear_to_srgb(x)), x, atol=1e-12)
    # IEC 61966-2-1: linear 0.5 encodes to ~0.7354; 0.0031308 is where the two pieces meet.
    assert abs(float(colour.linear_to_srgb(np.array(0.5))) - 0.735356983) < 1e-6
    lo = float(colour.linear_to_srgb(np.array(0.0031308)))
    assert abs(lo - 12.92 * 0.0031308) < 1e-6


def test_straight_alpha_uses_the_one_cut_off():
    rgb = np.array([[0.25, 0.25, 0.25], [1e-7, 1e-7, 1e-7], [2e-6, 0.0, 0.0]])
    alpha = np.array([[0.5], [colour.ALPHA_EPS], [2 * colour.ALPHA_EPS]])
    out = colour.straight_alpha(rgb, alpha)
    np.testing.assert_allclose(out[0], 0.5)
    assert (out[1] == 0.0).all()  # at the cut-off: empty
    np.testing.assert_allclose(out[2], [1.0, 0.0, 0.0])


def test_premultiplied_srgb_decodes_straight_colour():
    alpha = np.array([[0.5, 0.0]])
    rgb = np.stack([alpha * 0.735356983] * 3, axis=-1)
    lin = colour.srgb_to_linear_premultiplied(rgb, alpha)
    np.testing.assert_allclose(lin[0, 0], 0.25, atol=1e-6)  # 0.5 linear, premultiplied by 0.5
    assert (lin[0, 1] == 0.0).all()
