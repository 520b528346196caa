"""Gaussian splatting pipelines: `splat.render` (render.py) and `splat.reconstruct`
(reconstruct.py, 3D Gaussian Splatting training), with their helpers: `metrics` (L1, SSIM,
PSNR), `init` (initial Gaussians), `densify` (adaptive density control on gsplat's
DefaultStrategy), `wire` (Gaussians/cameras/images between numpy and torch).

Importing this package imports neither torch nor kernels; the pipelines do that inside run().
"""
