"""``nstudio demo motion``: a clip rendered in Blender -> motion.recover on the server -> Rigify.

Runs headless on this machine:

1. starts ``nstudio serve`` on a free loopback port (as `tools.demo` does);
2. builds the clip: the Anny body (its rest mesh, 104-bone skeleton and skinning weights from
   the ``anny`` package) as a skinned Blender armature, animated by a procedural walk
   (`addon.core.motion.synthetic.walk`) retargeted onto it, filmed by a static camera and
   rendered with Workbench to frames;
3. submits ``motion.recover`` with the frames, their fps and the camera's intrinsics through
   the add-on's session and job manager; the result handler imports the recovered body;
4. retargets the recovered motion onto a freshly generated Rigify rig (FK controls, NLA strip);
5. renders one frame of the Rigify rig over the footage (compositor alpha over);
6. prints the accuracy against the known motion (joint errors after aligning the recovered
   camera with the true one, and root-relative) and the time per stage.

``--no-server`` skips 1 and 3 and uses the known motion in place of the recovered one, to check
the Blender side alone. The server subprocess is stopped on success, failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import signal
import sys
import time
from pathlib import Path

import numpy as np

from tools import demo

log = logging.getLogger(__name__)
say = demo.say

#: Canonical joints compared for accuracy.
COMPARED = ("left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "left_shoulder",
            "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nstudio demo motion", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/demo_motion"), help="output folder (default %(default)s)")
    parser.add_argument("--frames", type=int, default=48, help="clip length in frames (default %(default)s)")
    parser.add_argument("--fps", type=float, default=24.0, help="clip frame rate (default %(default)s)")
    parser.add_argument("--width", type=int, default=384, help="clip width (default %(default)s)")
    parser.add_argument("--height", type=int, default=384, help="clip height (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="server device (default %(default)s)")
    parser.add_argument("--no-server", action="store_true", help="skip motion.recover; use the known motion")
    parser.add_argument("--server-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.frames < 8:
        parser.error(f"--frames must be >= 8, got {args.frames}")
    return args


# ---------------------------------------------------------------------------------------------
# The clip: an Anny body walking
# ---------------------------------------------------------------------------------------------


def anny_body():
    """The Anny body at rest (default phenotype): vertices, triangles, bones, skinning (numpy).

    Returns:
        dict: vertices [V, 3], faces [F, 3] int32, names [B], parents [B], bone_rest [B, 4, 4]
        (Y along each bone, Blender's bone convention), skin_index/skin_weight [V, I]. Z up,
        facing -Y, feet on Z = 0.
    """
    import anny
    import torch

    model = anny.Anny()
    with torch.no_grad():
        rest = model.get_rest_model(model.get_phenotype_blendshape_coefficients())
    vertices = rest["rest_vertices"][0].numpy()
    poses = rest["rest_bone_poses"][0].numpy()
    lift = -vertices[:, 2].min()
    vertices = vertices + [0.0, 0.0, lift]
    poses = poses.copy()
    poses[:, 2, 3] += lift
    faces = model.get_triangular_faces() if hasattr(model, "get_triangular_faces") else model.faces
    return {"vertices": vertices.astype(np.float32), "faces": np.asarray(faces, np.int32),
            "names": list(model.bone_labels), "parents": [int(p) for p in model.bone_parents],
            "bone_rest": poses, "skin_index": model.vertex_bone_indices.numpy().astype(np.int32),
            "skin_weight": model.vertex_bone_weights.numpy().astype(np.float32)}


def build_anny_armature(body: dict, name: str = "Anny"):
    """A skinned Blender armature of the Anny body (bones from its rest poses)."""
    import bpy

    from addon.blender import motion_import

    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    heads = body["bone_rest"][:, :3, 3]
    children = {}
    for j, p in enumerate(body["parents"]):
        if p >= 0:
            children.setdefault(p, []).append(j)
    bones = []
    for j, bname in enumerate(body["names"]):
        bone = data.edit_bones.new(bname)
        y = body["bone_rest"][j, :3, 1]
        kids = children.get(j, [])
        length = max((float(np.dot(heads[k] - heads[j], y)) for k in kids), default=0.05)
        bone.head = heads[j].tolist()
        bone.tail = (heads[j] + y * max(length, 0.02)).tolist()
        bone.align_roll(body["bone_rest"][j, :3, 2].tolist())
        if body["parents"][j] >= 0:
            bone.parent = bones[body["parents"][j]]
        bones.append(bone)
    bpy.ops.object.mode_set(mode="OBJECT")
    motion_import.build_skinned_mesh(body, obj, body["names"], f"{name} Body")
    return obj


def film(scene, target, width: int, height: int):
    """A static camera 4.5 m in front-left of the walk's middle, looking at it; returns its cameras map."""
    import bpy
    from mathutils import Vector

    cam_data = bpy.data.cameras.new("Clip Camera")
    cam_data.lens, cam_data.sensor_width, cam_data.sensor_fit = 35.0, 36.0, "HORIZONTAL"
    cam = bpy.data.objects.new("Clip Camera", cam_data)
    scene.collection.objects.link(cam)
    cam.location = Vector(target) + Vector((2.2, -2.8, 0.2))
    cam.rotation_euler = (Vector(target) - cam.location).to_track_quat("-Z", "Y").to_euler()
    scene.camera = cam
    scene.render.resolution_x, scene.render.resolution_y = width, height
    bpy.context.view_layer.update()
    fx = cam_data.lens / cam_data.sensor_width * width
    return cam, {"fx": float(fx), "fy": float(fx), "cx": width / 2.0, "cy": height / 2.0,
                 "world_from_camera": np.array(cam.matrix_world, np.float32)}


def walk_clip(frames: int, fps: float, width: int, height: int):
    """The demo's clip in a new, empty Blender file: the Anny body walking, filmed.

    Starts from an empty file on purpose: the default startup file's 2 m cube stands at the
    origin, between this camera and the walk, and hid the body from the waist down in most
    frames of a clip built over it (MediaPipe then found no person in 18 of 24 frames).

    Returns:
        (scene, Anny armature object, the template walk `Motion`, the retarget result on Anny,
        camera object, its cameras map as `film` returns it)
    """
    import bpy

    from addon.blender import retarget
    from addon.core.motion import synthetic

    bpy.ops.wm.read_homefile(app_template="", use_empty=True)
    scene = bpy.context.scene
    scene.render.fps = int(round(fps))
    scene.frame_start, scene.frame_end = 1, frames
    anny_obj = build_anny_armature(anny_body())
    walk = synthetic.walk(frames, fps=fps)
    _, on_anny = retarget.retarget_onto(walk, anny_obj, frame_start=1)
    mid = walk.root_translation[frames // 2].astype(float)
    cam, camera = film(scene, (mid[0], mid[1], 0.9), width, height)
    return scene, anny_obj, walk, on_anny, cam, camera


def clip_truth(anny_obj, on_anny) -> dict:
    """{canonical joint of the walk: world position [T, 3]}: the retargeted Anny bones' heads,
    the joints the clip shows (its skinned mesh follows them)."""
    to_world = np.array(anny_obj.matrix_world)[:3, :3]
    return {src: on_anny.matrices[dst][:, :3, 3] @ to_world.T
            for src, dst in on_anny.pairs if dst in on_anny.matrices}


def mannequin(rig, colour=(0.9, 0.45, 0.1, 1.0)) -> int:
    """Rigid cylinders on a Rigify rig's main DEF bones (a generated rig has no mesh to render)."""
    import bpy

    material = bpy.data.materials.new("Mannequin")
    material.diffuse_color = colour
    count = 0
    for bone in rig.data.bones:
        base = bone.name[4:].split(".")[0] if bone.name.startswith("DEF-") else ""
        if base not in ("spine", "thigh", "shin", "foot", "upper_arm", "forearm", "hand", "shoulder"):
            continue
        radius = 0.09 if base == "spine" else 0.045
        mesh = bpy.data.meshes.new(bone.name)
        # An 8-sided tube along the bone's Y axis (bone space: head at the origin).
        angles = np.linspace(0, 2 * np.pi, 9)[:-1]
        ring = np.stack([np.cos(angles) * radius, np.zeros(8), np.sin(angles) * radius], axis=1)
        verts = np.concatenate([ring, ring + [0.0, bone.length, 0.0]])
        faces = [(i, (i + 1) % 8, 8 + (i + 1) % 8, 8 + i) for i in range(8)]
        mesh.from_pydata(verts.tolist(), [], faces)
        part = bpy.data.objects.new(f"Mannequin {bone.name}", mesh)
        part.data.materials.append(material)
        rig.users_collection[0].objects.link(part)
        part.parent = rig
        part.parent_type = "BONE"
        part.parent_bone = bone.name
        # Bone parenting puts the child at the bone's tail; move it back to the head.
        part.matrix_parent_inverse.identity()
        part.location = (0.0, -bone.length, 0.0)
        count += 1
    return count


def render_frames(scene, out: Path, frames: int, set_frame=None) -> np.ndarray:
    """Render the clip with Workbench; returns sRGB frames, row 0 at the top. [T, H, W, 3] uint8

    ``set_frame(f)`` poses frame ``f`` (0-based) before its render (default: the scene's frame
    ``frame_start + f``)."""
    import bpy

    scene.render.engine = "BLENDER_WORKBENCH"
    if scene.world is None:
        scene.world = bpy.data.worlds.new("Clip World")
    scene.world.color = (0.35, 0.38, 0.42)  # a plain studio backdrop
    scene.display.shading.light = "STUDIO"
    scene.display.shading.color_type = "MATERIAL"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    folder = out / "clip"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for f in range(frames):
        if set_frame is None:
            scene.frame_set(scene.frame_start + f)
        else:
            set_frame(f)
        path = folder / f"frame_{f:04d}.png"
        scene.render.filepath = str(path)
        with contextlib.redirect_stdout(io.StringIO()):
            bpy.ops.render.render(write_still=True)
        image = bpy.data.images.load(str(path))
        w, h = image.size
        px = np.empty(w * h * 4, np.float32)
        image.pixels.foreach_get(px)
        bpy.data.images.remove(image)
        images.append((px.reshape(h, w, 4)[::-1, :, :3] * 255 + 0.5).astype(np.uint8))
    return np.stack(images)


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------


def joints_by_canonical(names, parents, positions) -> dict:
    """{canonical joint: positions [T, 3]} of a skeleton's posed joints."""
    from addon.core.motion import bone_maps

    canon = bone_maps.canonical_names(names, parents, positions[0])
    return {k: positions[:, list(names).index(v)] for k, v in canon.items()}


def accuracy(truth: dict, recovered: dict, world_align: np.ndarray | None = None) -> dict:
    """Mean joint errors, millimetres: world (after ``world_align``, recovered world -> true world)
    and root-relative (both centred on their hip midpoints)."""
    keys = [k for k in COMPARED if k in truth and k in recovered]
    t = np.stack([truth[k] for k in keys], axis=1)
    r = np.stack([recovered[k] for k in keys], axis=1).astype(np.float64)
    if world_align is not None:
        r = r @ world_align[:3, :3].T + world_align[:3, 3]
    hips = [keys.index(k) for k in ("left_hip", "right_hip") if k in keys]
    rel = (t - t[:, hips].mean(axis=1, keepdims=True)) - (r - r[:, hips].mean(axis=1, keepdims=True))
    return {"world_mm": float(np.linalg.norm(t - r, axis=-1).mean() * 1000),
            "relative_mm": float(np.linalg.norm(rel, axis=-1).mean() * 1000), "joints": len(keys)}


def rig_size(source, metarig) -> float:
    """Scale that gives a Rigify metarig the leg length (thigh + shin) of ``source``'s body."""
    from addon.core.motion import bone_maps, retarget as rt

    canon = bone_maps.canonical_names(source.names, source.parents, source.rest)
    legs = rt.leg_length({k: source.rest[source.index(v)] for k, v in canon.items()})
    bones = metarig.data.bones
    rig_legs = np.mean([bones[f"thigh.{s}"].length + bones[f"shin.{s}"].length for s in "LR"])
    return float(legs / rig_legs) if legs else 1.0


def camera_error(true_world_from_camera: np.ndarray, recovered_world_from_camera: np.ndarray) -> str:
    """The recovered camera's pitch and height against the true one's (Blender cameras, Z-up
    worlds whose ground is Z = 0; yaw and ground position are the world's gauge)."""
    def pitch(m):
        return float(np.degrees(np.arcsin(np.clip(-m[2, 2], -1.0, 1.0))))

    t, r = np.asarray(true_world_from_camera), np.asarray(recovered_world_from_camera)
    return (f"camera: pitch {pitch(r):.1f} degrees (true {pitch(t):.1f}), height {r[2, 3]:.2f} m "
            f"(true {t[2, 3]:.2f})")


def worst_direction(source, result, world_from_armature: np.ndarray) -> float:
    """Worst angle, degrees, between a retargeted bone and the recovered bone it follows.

    A target bone's direction runs from its head to the head of the bone mapped to its source
    joint's main child (as `addon.core.motion.retarget` aligns them); leaves and bones whose
    child is unmapped are compared along their Y axis.
    """
    from addon.core.motion import retarget as rt, rotations as rot

    mains, directions = rt.source_directions(source)
    target_of = {source.index(s): d for s, d in result.pairs}
    rotation = world_from_armature[:3, :3]
    worst = 0.0
    for s, d in result.pairs:
        j = source.index(s)
        if j not in mains or s == source.names[0]:
            continue
        m = result.matrices[d]
        child = target_of.get(mains[j])
        axis = m[:, :3, 1]
        if child is not None and child in result.matrices:
            span = result.matrices[child][:, :3, 3] - m[:, :3, 3]
            if np.linalg.norm(span, axis=-1).min() > 0.02:
                axis = span
        worst = max(worst, float(rot.angle_between(axis @ rotation.T, directions[:, j]).max()))
    return worst


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=str(out / "demo.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stages = demo.Stages()
    endpoint = f"tcp://127.0.0.1:{demo.free_loopback_port()}"
    server = demo.ServerProcess(endpoint, out / "store", args.device, out / "server.log")
    t0 = time.monotonic()
    previous = signal.signal(signal.SIGTERM, demo._interrupt)
    try:
        with (contextlib.nullcontext() if args.no_server else server):
            try:
                summary = _run(args, out, endpoint, server, stages)
            finally:
                demo.ensure_unregistered()
    except KeyboardInterrupt:
        say("interrupted: server stopped")
        return 130
    except Exception as exc:  # the CLI boundary
        log.exception("motion demo failed")
        say(f"motion demo failed: {exc}")
        say(f"logs: {out / 'demo.log'}, {out / 'server.log'}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    say("")
    say("== summary")
    for name, seconds in stages.seconds.items():
        say(f"   {name:<28s} {seconds:7.1f} s")
    say(f"   {'total':<28s} {time.monotonic() - t0:7.1f} s")
    for line in summary:
        say(f"   {line}")
    return 0


def _run(args, out: Path, endpoint: str, server, stages) -> list[str]:
    import bpy
    import addon_utils  # noqa: I001  (exists once bpy is imported)

    from addon.blender import compat, motion_import, retarget

    live = None
    overlay_camera = None
    camera_line = None
    if not args.no_server:
        with stages.stage("start server"):
            demo.ensure_registered()
            live = demo.connect(endpoint, server, args.server_timeout)
            info = ((live.client.welcome or {}).get("pipelines") or {}).get("motion.recover")
            if info is None or not info.get("available"):
                raise RuntimeError("the server cannot run motion.recover: "
                                   f"{(info or {}).get('reason', 'no such pipeline (is pipelines/motion merged?)')}")

    with stages.stage("build clip"):
        scene, anny_obj, walk, on_anny, cam, camera = walk_clip(args.frames, args.fps, args.width, args.height)
        skin = next(c for c in anny_obj.children if c.type == "MESH")
        say(f"   Anny body: {len(skin.data.vertices)} vertices, {len(anny_obj.data.bones)} bones; "
            f"walk of {args.frames} frames retargeted onto it ({len(on_anny.pairs)} bones)")

    with stages.stage("render clip"):
        frames = render_frames(scene, out, args.frames)
        say(f"   {len(frames)} frames {args.width}x{args.height} in {out / 'clip'}")
    truth = clip_truth(anny_obj, on_anny)  # the posed Anny joints the clip shows

    if args.no_server:
        recovered_obj = motion_import.import_motion(bpy.context, walk, "Recovered", frame_start=1)
        world_align = np.eye(4)
        say("   --no-server: the known walk stands in for the recovered motion (the accuracy then compares "
            "the template skeleton with the Anny body it drove: their proportions differ)")
    else:
        with stages.stage("recover on server"):
            inputs = {"frames": frames, "fps": float(args.fps),
                      "camera": {k: camera[k] for k in ("fx", "fy", "cx", "cy")}}
            record = live.submit(scene, "motion.recover", params={}, inputs=inputs, target="Recovered")
            demo.drive_job(live, record, server)
            recovered_obj = bpy.data.objects["Recovered"]
            # The recovered camera says where the recovered world sits relative to the true one.
            cams = [o for o in bpy.data.objects if o.type == "CAMERA" and o.name.startswith("Recovered")]
            world_align = np.eye(4)
            if cams:
                scene.frame_set(1)
                world_align = np.array(cam.matrix_world) @ np.linalg.inv(np.array(cams[0].matrix_world))
                camera_line = camera_error(np.array(cam.matrix_world), np.array(cams[0].matrix_world))
                say(f"   {camera_line}")
                # The overlay is seen through the recovered camera: the recovered motion lives
                # in the recovered world (origin under the body's first position, X along the
                # camera's x), which is the true world moved by ``world_align``; seen through
                # the true camera it would stand off to the side.
                overlay_camera = cams[0]
    recovered = motion_import.motion_from_armature(recovered_obj, frames=args.frames, fps=args.fps)
    scores = accuracy(truth, joints_by_canonical(recovered.names, recovered.parents, recovered.joints), world_align)

    with stages.stage("retarget onto Rigify"):
        addon_utils.enable("rigify", default_set=True, handle_error=None)
        bpy.ops.object.armature_human_metarig_add()
        # Rigify's human is taller than the recovered body (legs ~1.3x): retargeting scales its
        # root motion by the leg ratio about the world origin, so it would walk 1.3x as far and
        # stand off the footage. Sized to the body, it overlays it.
        size = rig_size(recovered, bpy.context.object)
        bpy.context.object.scale = (size, size, size)
        bpy.ops.object.transform_apply(location=False, rotation=False, scale=True)
        with contextlib.redirect_stdout(io.StringIO()):
            bpy.ops.pose.rigify_generate()
        rig = bpy.data.objects["rig"]
        parts = mannequin(rig)
        t = time.monotonic()
        _, result = retarget.retarget_onto(recovered, rig, frame_start=1)
        seconds = time.monotonic() - t
        worst = worst_direction(recovered, result, np.array(rig.matrix_world))
        say(f"   {len(result.pairs)} bones in {seconds:.2f} s (retarget + bake); worst bone direction "
            f"{worst:.2f} degrees from the recovered motion (legs bend on contact frames for foot pinning); "
            f"{parts} mannequin parts on its DEF bones")

    with stages.stage("render frame"):
        frame = args.frames // 2
        scene.camera = overlay_camera or cam
        scene.frame_set(1 + frame)
        anny_obj.hide_render = True
        for child in anny_obj.children:
            child.hide_render = True
        recovered_obj.hide_render = True
        for child in recovered_obj.children:
            child.hide_render = True
        scene.render.film_transparent = True
        tree, image_in = compat.compositor_tree(scene, "NS Motion Demo", "nstudio_motion_demo")
        nodes, links = tree.nodes, tree.links
        footage = nodes.new("CompositorNodeImage")
        footage.image = bpy.data.images.load(str(out / "clip" / f"frame_{frame:04d}.png"))
        layers = nodes.new("CompositorNodeRLayers")
        over, background, foreground = compat.compositor_alpha_over(nodes)
        links.new(footage.outputs["Image"], background)
        links.new(layers.outputs["Image"], foreground)
        links.new(over.outputs["Image"], image_in)
        scene.render.use_compositing = True
        shot = out / "retargeted.png"
        scene.render.filepath = str(shot)
        with contextlib.redirect_stdout(io.StringIO()):
            bpy.ops.render.render(write_still=True)
        say(f"   {shot}")

    with stages.stage("save blend"):
        bpy.ops.wm.save_as_mainfile(filepath=str(out / "demo_motion.blend"))
    if live is not None:
        from addon.blender import session

        session.disconnect()
    return [f"accuracy over {scores['joints']} joints: {scores['world_mm']:.0f} mm in the world (cameras "
            f"aligned), {scores['relative_mm']:.0f} mm root-relative",
            *([camera_line] if camera_line else []),
            f"outputs: {shot}, {out / 'clip'}, {out / 'demo_motion.blend'}"]


if __name__ == "__main__":
    sys.exit(main())
