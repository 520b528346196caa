"""The compositing constants of PROTOCOL.md's Gaussian rendering conventions, in one place.

Every backend (numba tiles, pure-torch tiles, the dense reference, the gsplat wrapper) reads
them from here, so the backends cannot drift apart.
"""

#: Contributions with alpha_i = opacity_i * G_i below this are skipped.
ALPHA_MIN = 1.0 / 255.0
#: alpha_i is capped here, so no single Gaussian makes a pixel fully opaque.
ALPHA_MAX = 0.99
#: A pixel stops once T_i * (1 - alpha_i) would fall to this transmittance or below; that
#: contribution and everything behind it are left out (gsplat's `next_T <= 1e-4`).
T_MIN = 1e-4
#: Fraction of the half field of view by which the direction at which the EWA Jacobian is
#: evaluated may leave the image (1.3 x tan(fov/2) for a centred principal point).
JACOBIAN_CLAMP = 0.3
#: Low-pass dilation added to the 2D covariance diagonal, pixels^2 ("every Gaussian at least
#: one pixel wide").
EPS2D = 0.3
#: Front-surface depth (``depth_front``): the depth (where that Gaussian peaks along the
#: pixel's ray) of the contribution at which the transmittance first falls to this value or
#: below (the median of the pixel's depth distribution); pixels whose alpha never reaches
#: 1 - T_FRONT take their largest-weight contribution's instead.
T_FRONT = 0.5
#: ``depth_front`` takes a Gaussian's depth where it peaks along the pixel's ray, kept within this
#: many of its largest standard deviations of its centre's depth: its support (where even an
#: opaque Gaussian's alpha reaches 1/255, sqrt(2 ln 255) = 3.33) lies within that distance of its
#: centre. Only pairs that exist through the EWA linearisation and the 0.3 px dilation reach the
#: bound (a flat Gaussian seen edge-on covers pixels whose rays pass beside it and cross its
#: plane anywhere, even hundreds of metres away).
PEAK_SUPPORT_SIGMA = 3.33
