"""Splats cast shadows onto meshes in a final shot (Cycles, F12 through the compositor, a real server).

A ball of a few hundred Gaussians floats above a mesh floor lit by a sun from the side. Rendered
with the object's shadow toggle on and off: the floor where the ball's shadow falls (found from the
rays analytically) is dark with it on and lit with it off; the floor elsewhere and the ball's own
pixels are the same in both frames.
"""

from __future__ import annotations

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

import final_shot_helpers as h  # noqa: E402

ORANGE = (0.9, 0.45, 0.1)
W, H = 80, 60
LENS = 35.0
EYE = (0.0, -3.0, 3.0)
TARGET = (-0.2, 0.0, 0.35)
CENTRE = np.array([0.0, 0.0, 0.8])  # of the ball of Gaussians
RADIUS = 0.3
TO_SUN = np.array([0.6, 0.1, 1.0]) / np.linalg.norm([0.6, 0.1, 1.0])


def _ball(n=300, seed=0):
    """Opaque round Gaussians filling a ball (spacing ~7 cm, sigma 7 cm)."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    radii = RADIUS * rng.random(n) ** (1 / 3)
    return {
        "means": (CENTRE + directions * radii[:, None]).astype(np.float32),
        "quats": np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        "scales": np.full((n, 3), np.log(0.07), np.float32),
        "opacities": np.full(n, 4.0, np.float32),
        "sh0": np.tile(h.sh0_for(ORANGE), (n, 1)),
        "shN": np.zeros((n, 0, 3), np.float32),
    }


def _aim(obj, direction):
    from mathutils import Vector

    obj.rotation_euler = Vector(direction).to_track_quat("-Z", "Y").to_euler()


def _build(server):
    from addon.blender import compat, final_shot
    from addon.blender.importers.gaussians import create_gaussian_object

    scene = bpy.context.scene
    for obj in list(scene.objects):
        bpy.data.objects.remove(obj)
    h.set_resolution(scene, W, H)
    h.use_cycles(scene, samples=4)
    h.black_world(scene)
    cam = h.add_camera(scene, location=EYE, lens=LENS)
    _aim(cam, np.subtract(TARGET, EYE))
    bpy.ops.mesh.primitive_plane_add(size=8.0, location=(0.0, 0.0, 0.0))
    floor = bpy.context.active_object
    mat = bpy.data.materials.new("Floor")
    tree = compat.node_tree(mat)
    tree.nodes.clear()
    diffuse = tree.nodes.new("ShaderNodeBsdfDiffuse")
    diffuse.inputs["Color"].default_value = (0.8, 0.8, 0.8, 1.0)
    out = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(diffuse.outputs[0], out.inputs["Surface"])
    floor.data.materials.append(mat)
    sun_data = bpy.data.lights.new("Sun", "SUN")
    sun_data.energy = 3.0
    sun_data.angle = 0.01
    sun = bpy.data.objects.new("Sun", sun_data)
    _aim(sun, -TO_SUN)
    scene.collection.objects.link(sun)
    ball = create_gaussian_object("Ball", _ball(), collection=scene.collection)
    companion = final_shot.setup_final_shot(scene)
    if server is not None:
        companion.nstudio_final_shot.endpoint = server.endpoint
    return scene, companion, cam, ball


def _regions(cam):
    """Masks [H, W] of floor pixels in the ball's shadow core, floor pixels far from it, and
    pixels whose ray passes through the ball's core (fully covered by Gaussians)."""
    m = np.array(cam.matrix_world)
    eye = m[:3, 3]
    f = LENS / cam.data.sensor_width * W
    r, c = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    d = np.stack([(c - W / 2) / f, -(r - H / 2) / f, -np.ones_like(c)], -1) @ m[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)

    def miss_distance(origin, direction):  # of the ball's centre from the line
        v = CENTRE - origin
        return np.linalg.norm(v - (v * direction).sum(-1, keepdims=True) * direction, axis=-1)

    t_floor = -eye[2] / np.minimum(d[..., 2], -1e-12)
    q = eye + t_floor[..., None] * d
    on_floor = (d[..., 2] < 0) & (np.abs(q[..., :2]) < 3.5).all(-1)
    view_miss = miss_distance(eye, d)
    shadow_miss = miss_distance(q, np.broadcast_to(TO_SUN, q.shape))
    free = on_floor & (view_miss > 0.6)  # the ball does not hide this floor point
    return free & (shadow_miss < 0.18), free & (shadow_miss > 0.6), view_miss < 0.12


def test_gaussians_shadow_the_floor(blender_addon, server, tmp_path):
    scene, _companion, cam, ball = _build(server)
    h.render_exr(scene, tmp_path / "on.exr")
    ball.nstudio_splat_shadow.cast = False
    h.render_exr(scene, tmp_path / "off.exr")
    on, off = h.read_exr(tmp_path / "on.exr")[..., :3], h.read_exr(tmp_path / "off.exr")[..., :3]
    shadow, lit, core = _regions(cam)
    assert shadow.sum() >= 15 and lit.sum() >= 500 and core.sum() >= 4

    # In the shadow: lit without the caster, dark with it.
    assert off[shadow].mean() > 0.2
    assert (on[shadow].sum(-1) <= 0.1 * off[shadow].sum(-1)).all()
    # Elsewhere on the floor: the same frame (the same samples; the caster is not hit).
    np.testing.assert_allclose(on[lit], off[lit], atol=1e-5)
    # The Gaussians' own colour is the server's, untouched by the caster.
    np.testing.assert_allclose(on[core], off[core], atol=1e-5)
    np.testing.assert_allclose(on[core], np.broadcast_to(ORANGE, on[core].shape), atol=0.02)


def test_caster_is_shadow_only_and_follows_its_object(blender_addon):
    from addon.blender import gaussian_nodes, splat_shadow

    scene, companion, _cam, ball = _build(None)
    (caster,) = splat_shadow.casters(scene)
    assert splat_shadow.source_of(caster) == ball
    assert caster.name in scene.objects and caster.name not in companion.objects
    assert caster.visible_shadow and not any(
        (caster.visible_camera, caster.visible_diffuse, caster.visible_glossy, caster.visible_transmission))
    assert not caster.hide_render  # on by default

    # What Cycles sees: one ellipsoid per Gaussian at least Min Opacity opaque.
    def instance_count():
        depsgraph = bpy.context.evaluated_depsgraph_get()
        return sum(1 for inst in depsgraph.object_instances
                   if inst.is_instance and inst.parent is not None and inst.parent.original == caster)

    modifier = caster.modifiers[splat_shadow.MODIFIER_NAME]
    modifier.show_viewport = True  # evaluate it here, as a render would
    assert instance_count() == 300
    ball.nstudio_splat_shadow.min_opacity = 0.99  # above every Gaussian's 0.982
    assert instance_count() == 0
    ball.nstudio_splat_shadow.min_opacity = 0.5
    ids = {i.name: i.identifier for i in modifier.node_group.interface.items_tree
           if i.item_type == "SOCKET" and i.in_out == "INPUT"}
    ball.nstudio_splat_shadow.size = 2.0
    assert modifier[ids[gaussian_nodes.INPUT_SIZE]] == pytest.approx(2.0)

    ball.nstudio_splat_shadow.cast = False
    assert caster.hide_render
    ball.nstudio_splat_shadow.cast = True
    ball.hide_render = True  # a Gaussian object left out of renders casts nothing either
    bpy.context.view_layer.update()  # the final-shot depsgraph handler syncs the caster
    assert caster.hide_render
    ball.hide_render = False
    bpy.context.view_layer.update()
    assert not caster.hide_render

    # The object deleted: its caster reads nothing and is left out of renders.
    bpy.data.objects.remove(ball)
    bpy.context.view_layer.update()
    assert splat_shadow.source_of(caster) is None and caster.hide_render
