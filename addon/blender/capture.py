"""Capture a Blender scene as posed images for `splat.reconstruct` (the Blender layer).

`capture()` places temporary cameras around the chosen objects (layouts from `capture_layout`) or
renders from the user's own camera objects (their placement, lens, sensor and shift), renders each
view headless with the scene's own lights, world and materials (Cycles, EEVEE or Workbench,
transparent film so the alpha channel says where the objects are), also renders the Z pass,
samples initial points on the objects' evaluated surfaces and colours them from the renders.
Everything comes back as numpy arrays in the PROTOCOL.md contracts, ready for a submit.
`capture_steps()` is the same capture one view per step, for a modal operator.

One temporary camera renders every view: it takes each view's matrix and lens settings
(`camera.BlenderLens`), and the wire intrinsics come from those same settings through
`camera.lens_cameras_map`, so render and cameras map cannot disagree.

Why EXR files: in background mode the "Render Result" image has no readable pixels, so each view
is written as an uncompressed multilayer OpenEXR into a temporary folder (float32, linear, with
the Depth pass) and read back in bulk by `formats.exr.read_exr`. Scene settings that capture
changes are restored and the temporary camera and files are removed, also on errors.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from ..core import capture_layout, colour, surface_points
from ..core.formats.exr import read_exr
from ..core.camera import BlenderLens, lens_cameras_map
from .cameras import lens_of
from . import compat

log = logging.getLogger(__name__)

ENGINES = {"CYCLES": "CYCLES", "EEVEE": "BLENDER_EEVEE", "WORKBENCH": "BLENDER_WORKBENCH"}
#: Object types whose evaluated geometry is a surface: what capture renders and samples points on.
MESH_LIKE_TYPES = frozenset({"MESH", "CURVE", "SURFACE", "META", "FONT"})


@dataclass
class CaptureOptions:
    """How to capture.

    Attributes:
        layout: camera layout, "hemisphere" (default; objects on a ground), "sphere" or "ring"
            (unused when capture() is given the user's cameras).
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
    return [o for o in objects if o.type in MESH_LIKE_TYPES]


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
            # The generic attribute reads ~20x faster than vertices.foreach_get("co").
            mesh.attributes["position"].data.foreach_get("vector", co)
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
    # Training assumes sharp pinhole views of a still scene.
    saved.set(render, "use_motion_blur", False)
    saved.set(render, "filepath", path)
    settings = render.image_settings
    for name, value in compat.multilayer_exr_settings():
        saved.set(settings, name, value)
    saved.set(scene.view_layers[0], "use_pass_z", True)
    if opts.engine == "CYCLES":
        saved.set(scene.cycles, "samples", opts.samples)
        saved.set(scene.cycles, "use_denoising", opts.denoise)
        saved.set(scene.cycles, "device", "CPU")
    elif opts.engine == "EEVEE":
        saved.set(scene.eevee, "taa_render_samples", opts.samples)


def capture(objects=None, options: CaptureOptions | None = None, scene=None, cameras=None,
            on_view: Callable[[int, int], None] | None = None) -> dict:
    """Render posed views of objects (or the whole scene) for splat training.

    Renders every view in this call; :func:`capture_steps` is the same capture one view at a
    time (what the interactive operator uses).

    Args:
        objects: the objects to capture; None captures every visible mesh-like object. Other
            objects are hidden from the renders while capturing.
        options: CaptureOptions.
        scene: the scene (default: the context's).
        cameras: Blender camera objects to render from instead of a generated layout (the
            user's own cameras): each view uses its camera's matrix_world and lens, sensor and
            shift, at the capture resolution (options.width x options.height); options.layout,
            count, lens_mm and margin are then unused.
        on_view: called as ``on_view(i, total)`` after view i of total has been rendered
            (i = 1 .. total, in order).

    Returns:
        {"images": straight-alpha linear RGBA [T, H, W, 4] <f4,
         "depths": distance along -Z, metres, inf where empty [T, H, W] <f4,
         "cameras": PROTOCOL.md cameras map (T cameras; per-view fx/fy/cx/cy [T] for user cameras),
         "points": initial points on the surfaces, world frame [P, 3] <f4,
         "colors": their colours from the renders, linear [P, 3] <f4,
         "seconds": wall time of the capture}

    Raises:
        ValueError: bad options, a camera that cannot be used, or nothing to capture.
    """
    steps = capture_steps(objects, options, scene, cameras)
    try:
        while True:
            try:
                done, total = next(steps)
            except StopIteration as stop:
                return stop.value
            if on_view is not None:
                on_view(done, total)
    finally:
        steps.close()  # an on_view error: restore the scene now, not when the generator is collected


def capture_steps(objects=None, options: CaptureOptions | None = None, scene=None,
                  cameras=None) -> Generator[tuple[int, int], None, dict]:
    """The capture of :func:`capture`, one view per step.

    Checks the options and cameras and gathers the surfaces now (errors are raised by this call);
    the returned generator renders one view per ``next()`` and yields ``(i, total)`` after view i
    (1 .. total); its return value (``StopIteration.value``) is :func:`capture`'s dict.
    ``close()`` cancels: the scene settings are restored and the temporary camera and files are
    removed. Between steps Blender may run its event loop, so a modal operator stays responsive.

    Args:
        objects, options, scene, cameras: as :func:`capture`.

    Returns:
        The step generator.

    Raises:
        ValueError: as :func:`capture`.
    """
    import bpy

    opts = options or CaptureOptions()
    if opts.engine not in ENGINES:
        raise ValueError(f"options.engine must be one of {sorted(ENGINES)}, got {opts.engine!r}")
    if opts.width < 1 or opts.height < 1:
        raise ValueError(f"options.width/height must be >= 1, got {opts.width}x{opts.height}")
    if cameras is None and opts.count < 1:
        raise ValueError(f"options.count must be >= 1, got {opts.count}")
    t0 = time.monotonic()
    scene = scene or bpy.context.scene
    targets = _mesh_objects(scene, objects)
    if not targets:
        raise ValueError("nothing to capture: no mesh objects given or visible")

    # 1. Gather the surfaces (world space, modifiers applied) and the views.
    depsgraph = bpy.context.evaluated_depsgraph_get()
    vertices, faces = gather_triangles(targets, depsgraph)
    if len(faces) == 0:
        raise ValueError("nothing to capture: the objects have no faces")
    if cameras is None:
        cams = capture_layout.capture_cameras(
            vertices.min(axis=0), vertices.max(axis=0), layout=opts.layout, count=opts.count,
            width=opts.width, height=opts.height, lens_mm=opts.lens_mm, margin=opts.margin,
        )
        lenses = [capture_layout.layout_lens(opts.lens_mm)] * opts.count
        clips = [(cams["near"], cams["far"])] * opts.count
    else:
        cams, lenses, clips = _user_views(cameras, opts)
    return _render_views(scene, targets, vertices, faces, cams, lenses, clips, opts, t0)


def _user_views(cameras, opts: CaptureOptions):
    """Cameras map, lenses and clip ranges of the user's camera objects (checked)."""
    cameras = list(cameras)
    if not cameras:
        raise ValueError("cameras: the list of camera objects is empty")
    for obj in cameras:
        if getattr(obj, "type", None) != "CAMERA":
            raise ValueError(f"cameras: {getattr(obj, 'name', obj)!r} is not a camera object "
                             f"(type {getattr(obj, 'type', type(obj).__name__)})")
        if obj.data.type != "PERSP":
            raise ValueError(f"cameras: camera {obj.name!r} is {obj.data.type}; only perspective cameras "
                             f"can be captured")
    matrices = np.array([np.array(obj.matrix_world, dtype=np.float64) for obj in cameras])
    lenses = [lens_of(obj.data) for obj in cameras]  # square pixels: capture renders with them
    clips = [(float(obj.data.clip_start), float(obj.data.clip_end)) for obj in cameras]
    try:
        cams = lens_cameras_map(matrices, lenses, opts.width, opts.height,
                                near=min(c[0] for c in clips), far=max(c[1] for c in clips))
    except ValueError as exc:
        raise ValueError(f"cameras: {exc}") from exc
    return cams, lenses, clips


def _apply_lens(cam_data, lens: BlenderLens, clip: tuple[float, float]) -> None:
    cam_data.type = "PERSP"
    cam_data.lens_unit = "MILLIMETERS"
    cam_data.lens = lens.lens_mm
    cam_data.sensor_width = lens.sensor_width
    cam_data.sensor_height = lens.sensor_height
    cam_data.sensor_fit = lens.sensor_fit
    cam_data.shift_x = lens.shift_x
    cam_data.shift_y = lens.shift_y
    cam_data.clip_start, cam_data.clip_end = clip


def _render_views(scene, targets, vertices, faces, cams, lenses, clips, opts: CaptureOptions, t0: float):
    """The step generator of :func:`capture_steps`: one rendered view per step, then the result."""
    import bpy
    from mathutils import Matrix

    t = len(cams["world_from_camera"])
    saved = _Saved()
    cam_obj = cam_data = None
    with tempfile.TemporaryDirectory(prefix="nstudio-capture-") as tmp:
        path = os.path.join(tmp, "view.exr")
        try:
            # 2. Configure the render and hide what is not captured.
            _configure_render(saved, scene, opts, path)
            keep = set(targets)
            for obj in scene.objects:
                if obj.type in MESH_LIKE_TYPES and obj not in keep:
                    saved.set(obj, "hide_render", True)
            # A marker bound to a camera makes the renderer switch to that camera.
            for marker in scene.timeline_markers:
                if marker.camera is not None:
                    saved.set(marker, "camera", None)
            cam_data = bpy.data.cameras.new("nstudio_capture")
            cam_obj = bpy.data.objects.new("nstudio_capture", cam_data)
            scene.collection.objects.link(cam_obj)
            saved.set(scene, "camera", cam_obj)

            # 3. Render every view and read it back. The temporary camera gets each view's lens
            # settings: the same ones its wire intrinsics were computed from.
            images = np.empty((t, opts.height, opts.width, 4), dtype=np.float32)
            depths = np.empty((t, opts.height, opts.width), dtype=np.float32)
            for i, mat in enumerate(cams["world_from_camera"]):
                _apply_lens(cam_data, lenses[i], clips[i])
                # Matrix() takes rows; a plain nested list assigned to matrix_world is read as columns.
                cam_obj.matrix_world = Matrix(mat.astype(np.float64).tolist())
                if os.path.exists(path):
                    os.remove(path)  # never read an earlier view back as this one
                bpy.ops.render.render(write_still=True)
                if not os.path.exists(path):
                    raise RuntimeError(f"view {i + 1}/{t}: Blender did not write the render (interrupted?)")
                ch = read_exr(path)
                layer = _layer_prefix(ch)
                images[i] = np.stack([ch[f"{layer}Combined.{c}"] for c in "RGBA"], axis=-1)
                depths[i] = ch[f"{layer}Depth.Z"]
                yield i + 1, t
        finally:
            saved.restore()
            _remove_quietly(cam_obj, bpy.data.objects)
            _remove_quietly(cam_data, bpy.data.cameras)

    # 4. Blender writes premultiplied colour; the wire wants straight alpha. A trace of alpha
    # (below colour.COVERAGE_FLOOR) where no surface was hit is not coverage: Workbench in
    # Blender 4.2 leaves 2^-11 on the whole empty background.
    images[(images[..., 3] < colour.COVERAGE_FLOOR) & (depths >= 1e9)] = 0.0
    alpha = images[..., 3:4]
    images[..., :3] = colour.straight_alpha(images[..., :3], alpha)
    images[..., 3] = np.clip(images[..., 3], 0.0, 1.0)
    depths[(images[..., 3] < colour.COVERAGE_FLOOR) | (depths >= 1e9)] = np.inf

    # 5. Initial points on the surfaces, coloured by the renders where they are visible.
    points = np.zeros((0, 3), dtype=np.float32)
    colors = np.zeros((0, 3), dtype=np.float32)
    if opts.points > 0:
        pts, _ = surface_points.sample_surface(vertices, faces, opts.points, seed=opts.seed)
        cols, seen = surface_points.colour_points(pts, images, depths, cams, opts.depth_tolerance)
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


def _remove_quietly(datablock, collection) -> None:
    """Remove a temporary datablock; one already freed (a file was loaded meanwhile) is skipped."""
    if datablock is None:
        return
    try:
        collection.remove(datablock)
    except ReferenceError:
        log.debug("temporary %s was already freed", collection)


def _layer_prefix(channels: dict) -> str:
    for name in channels:
        if name.endswith("Combined.R"):
            return name[: -len("Combined.R")]
    raise RuntimeError(f"render has no Combined pass; channels: {sorted(channels)}")
