"""File formats for Gaussians, camera paths and images: numpy only, no bpy (the add-on's first layer).

Modules: ``ply`` (3DGS PLY read/write), ``playcanvas`` (compressed PlayCanvas PLY), ``spz`` (Niantic
SPZ), ``splat`` (antimatter15 .splat), ``detect`` (format by content, one reader), ``camera_path``
(nerfstudio camera_path.json), ``axes`` (Y-up <-> Z-up conversion incl. SH rotation),
``gaussians`` (the Gaussians-map checks shared by all of them), ``png`` (8-bit RGBA writer) and
``exr`` (uncompressed OpenEXR reader).
"""

from .errors import FormatError

__all__ = ["FormatError"]
