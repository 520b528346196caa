"""Capture a Blender scene as posed images for `splat.reconstruct` (the Blender layer).

`capture()` places temporary cameras around the chosen objects (layouts from `capture_math`),
renders each view headless with the scene's own lights, world and materials (Cycles, EEVEE or
Workbench, transparent film so the alpha channel says where the objects are), also renders the Z
pass, samples initial points on the objects' evaluated surfaces and colours them from the renders.
Everything comes back as numpy arrays in the PROTOCOL.md contracts, ready for a submit.

Why EXR files: in background mode the "Render Result" image has no readable pixels, so each view
is written as an uncompressed multilayer OpenEXR into a temporary folder (float32, linear, with
the Depth pass) and read back in bulk by `capture_math.read_exr`. Scene settings that capture
changes are restored and the temporary camera and files are removed, also on errors.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from . import capture_math

log = logging.getLogger(__name__)

ENGINES = {"CYCLES": "CYCLES", "EEVEE": "BLENDER_EEVEE", "WORKBENCH": "BLENDER_WORKBENCH"}


@dataclass
class CaptureOptions:
    """How to capture.

    Attributes:
        layout: camera layout, "hemisphere" (default; objects on a ground), "sphere" or "ring".
        count: number of views T (default 48).
        width: image width in pixels (default 128).
        height: image height in pixels (default 128).
        lens_mm: focal length on a 36 mm sensor (default 50).
        margin: bounding-sphere scale that must fit the view (default 1.1).
        engine: "CYCLES" (default), "EEVEE" or "WORKBENCH".
        samples: render samples (Cycles/EEVEE), default 32.
        denoise: Cycles denoising (default False: training averages noise out).
        points: number of initial surface points (default 20000; 0 for none).
        seed: seed for the point sampling.
        depth_tolerance: relative depth agreement for a point to count as visible in a view.
    """

    layout: str = "hemisphere"
    count: int = 48
    width: int = 128
    height: int = 128
    lens_mm: float = 50.0
    margin: float = 1.1
    engine: str = "CYCLES"
    samples: int = 32
    denoise: bool = False
    points: int = 20000
    seed: int = 0
    depth_tolerance: float = 0.02


def _mesh_objects(scene, objects):
    if objects is None:
        objects = [o for o in scene.objects if o.visible_get()]
    return [o for o in objects if o.type in {"MESH", "CURVE", "SURFACE", "META", "FONT"}]


def gather_triangles(objects, depsgraph):
    """World-space triangles of the evaluated objects (modifiers applied), in bulk.

    Returns:
        vertices: world frame, metres. [V, 3] float64; faces: [F, 3] int64.
    """
    verts_all, faces_all, base = [], [], 0
    for obj in objects:
        ev = obj.evaluated_get(depsgraph)
        mesh = ev.to_mesh()
        try:
            mesh.calc_loop_triangles()
            nv, nt = len(mesh.vertices), len(mesh.loop_triangles)
            if nv == 0 or nt == 0:
                continue
            co = np.empty(nv * 3, dtype=np.float32)
            mesh.vertices.foreach_get("co", co)
            tri = np.empty(nt * 3, dtype=np.int32)
            mesh.loop_triangles.foreach_get("vertices", tri)
            mat = np.array(ev.matrix_world, dtype=np.float64)
            world = co.reshape(-1, 3).astype(np.float64) @ mat[:3, :3].T + mat[:3, 3]
            verts_all.append(world)
            faces_all.append(tri.reshape(-1, 3).astype(np.int64) + base)
            base += nv
        finally:
            ev.to_mesh_clear()
    if not verts_all:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return np.concatenate(verts_all), np.concatenate(faces_all)


class _Saved:
    """Remembers attributes it changes and puts them back (also after errors)."""

    def __init__(self):
        self._items = []

    def set(self, owner, name, value):
        self._items.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def restore(self):
        for owner, name, value in reversed(self._items):
            try:
                setattr(owner, name, value)
            except (AttributeError, TypeError, ValueError, ReferenceError) as exc:
                log.warning("could not restore %s: %s", name, exc)
        self._items.clear()


def _configure_render(saved: _Saved, scene, opts: CaptureOptions, path: str):
    render = scene.render
    saved.set(render, "engine", ENGINES[opts.engine])
    saved.set(render, "resolution_x", opts.width)
    saved.set(render, "resolution_y", opts.height)
    saved.set(render, "resolution_percentage", 100)
    saved.set(render, "pixel_aspect_x", 1.0)
    saved.set(render, "pixel_aspect_y", 1.0)
    saved.set(render, "film_transparent", True)
    saved.set(render, "use_border", False)
    saved.set(render, "filepath", path)
    settings = render.image_settings
    saved.set(settings, "media_type", "MULTI_LAYER_IMAGE")
    saved.set(settings, "file_format", "OPEN_EXR_MULTILAYER")
    saved.set(settings, "color_depth", "32")
    saved.set(settings, "exr_codec", "NONE")
    saved.set(scene.view_layers[0], "use_pass_z", True)
    if opts.engine == "CYCLES":
        saved.set(scene.cycles, "samples", opts.samples)
        saved.set(scene.cycles, "use_denoising", opts.denoise)
        saved.set(scene.cycles, "device", "CPU")
    elif opts.engine == "EEVEE":
        saved.set(scene.eevee, "taa_render_samples", opts.samples)


def capture(objects=None, options: CaptureOptions | None = None, scene=None) -> dict:
    """Render posed views of objects (or the whole scene) for splat training.

    Args:
        objects: the objects to capture; None captures every visible mesh-like object. Other
            objects are hidden from the renders while capturing.
        options: CaptureOptions.
        scene: the scene (default: the context's).

    Returns:
        {"images": straight-alpha linear RGBA [T, H, W, 4] <f4,
         "depths": distance along -Z, metres, inf where empty [T, H, W] <f4,
         "cameras": PROTOCOL.md cameras map (T cameras),
         "points": initial points on the surfaces, world frame [P, 3] <f4,
         "colors": their colours from the renders, linear [P, 3] <f4,
         "seconds": wall time of the capture}

    Raises:
        ValueError: bad options or nothing to capture.
    """
    import bpy
    from mathutils import Matrix

    opts = options or CaptureOptions()
    if opts.engine not in ENGINES:
        raise ValueError(f"options.engine must be one of {sorted(ENGINES)}, got {opts.engine!r}")
    if opts.count < 1:
        raise ValueError(f"options.count must be >= 1, got {opts.count}")
    t0 = time.monotonic()
    scene = scene or bpy.context.scene
    targets = _mesh_objects(scene, objects)
    if not targets:
        raise ValueError("nothing to capture: no mesh objects given or visible")

    # 1. Gather the surfaces (world space, modifiers applied) and frame them.
    depsgraph = bpy.context.evaluated_depsgraph_get()
    vertices, faces = gather_triangles(targets, depsgraph)
    if len(faces) == 0:
        raise ValueError("nothing to capture: the objects have no faces")
    cams = capture_math.capture_cameras(
        vertices.min(axis=0), vertices.max(axis=0), layout=opts.layout, count=opts.count,
        width=opts.width, height=opts.height, lens_mm=opts.lens_mm, margin=opts.margin,
    )

    saved = _Saved()
    cam_obj = cam_data = None
    with tempfile.TemporaryDirectory(prefix="nstudio-capture-") as tmp:
        path = os.path.join(tmp, "view.exr")
        try:
            # 2. Configure the render and hide what is not captured.
            _configure_render(saved, scene, opts, path)
            keep = set(targets)
            for obj in scene.objects:
                if obj.type in {"MESH", "CURVE", "SURFACE", "META", "FONT"} and obj not in keep:
                    saved.set(obj, "hide_render", True)
            cam_data = bpy.data.cameras.new("nstudio_capture")
            cam_data.lens = opts.lens_mm
            cam_data.sensor_width = capture_math.SENSOR_WIDTH_MM
            cam_data.sensor_fit = "AUTO"
            cam_data.clip_start = cams["near"]
            cam_data.clip_end = cams["far"]
            cam_obj = bpy.data.objects.new("nstudio_capture", cam_data)
            scene.collection.objects.link(cam_obj)
            saved.set(scene, "camera", cam_obj)

            # 3. Render every view and read it back.
            t = opts.count
            images = np.empty((t, opts.height, opts.width, 4), dtype=np.float32)
            depths = np.empty((t, opts.height, opts.width), dtype=np.float32)
            for i, mat in enumerate(cams["world_from_camera"]):
                # Matrix() takes rows; a plain nested list assigned to matrix_world is read as columns.
                cam_obj.matrix_world = Matrix(mat.astype(np.float64).tolist())
                bpy.ops.render.render(write_still=True)
                ch = capture_math.read_exr(path)
                layer = _layer_prefix(ch)
                rgba = np.stack([ch[f"{layer}Combined.{c}"] for c in "RGBA"], axis=-1)
                images[i] = rgba
                depths[i] = ch[f"{layer}Depth.Z"]
        finally:
            saved.restore()
            if cam_obj is not None:
                bpy.data.objects.remove(cam_obj)
            if cam_data is not None:
                bpy.data.cameras.remove(cam_data)

    # 4. Blender writes premultiplied colour; the wire wants straight alpha.
    alpha = images[..., 3:4]
    images[..., :3] = np.where(alpha > 1e-6, images[..., :3] / np.maximum(alpha, 1e-6), 0.0)
    images[..., 3] = np.clip(images[..., 3], 0.0, 1.0)
    depths[(images[..., 3] < 1.0 / 255.0) | (depths >= 1e9)] = np.inf

    # 5. Initial points on the surfaces, coloured by the renders where they are visible.
    points = np.zeros((0, 3), dtype=np.float32)
    colors = np.zeros((0, 3), dtype=np.float32)
    if opts.points > 0:
        pts, _ = capture_math.sample_surface(vertices, faces, opts.points, seed=opts.seed)
        cols, seen = capture_math.colour_points(pts, images, depths, cams, opts.depth_tolerance)
        # Points no camera sees (hidden faces, the inside of a closed shell) only add clutter.
        points, colors = pts[seen > 0], cols[seen > 0]
    seconds = time.monotonic() - t0
    log.info("captured %d views %dx%d, %d points in %.1f s", t, opts.width, opts.height, len(points), seconds)
    return {
        "images": images,
        "depths": depths,
        "cameras": cams,
        "points": np.ascontiguousarray(points, dtype=np.float32),
        "colors": np.ascontiguousarray(colors, dtype=np.float32),
        "seconds": seconds,
    }


def _layer_prefix(channels: dict) -> str:
    for name in channels:
        if name.endswith("Combined.R"):
            return name[: -len("Combined.R")]
    raise RuntimeError(f"render has no Combined pass; channels: {sorted(channels)}")
