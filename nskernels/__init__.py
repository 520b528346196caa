"""Numeric core of Neural Studio: cameras, spherical harmonics and Gaussian rasterization.

torch only; no I/O and no server knowledge. Importing this package does no work: the numba
kernels compile on first use and gsplat is imported only when its backend is asked for.

Modules:
    camera: `Cameras`, the only Blender -> OpenCV camera conversion.
    gaussians: quaternion -> rotation, covariance from quaternion and log scales.
    sh: real spherical harmonics (degrees 0-3) -> colours.
    projection: EWA projection of 3D Gaussians to the image plane.
    rasterize: `rasterize()`, `RenderOutput`, `backend_status()`.
    reference: `rasterize_dense()`, the brute-force twin of `rasterize()`.
"""
