"""A small procedural sample scene for the splat workflow and the demo (bpy layer).

Everything is built from code: meshes from bmesh operators (and a numpy torus), procedural
material node trees (checker, noise, brick, wave textures with distinct colours), two lights,
a world colour and a scene camera orbiting the set on a short keyframed path. Nothing is
downloaded or read from disk, and the same ``seed`` always gives the same scene.

Layout (Blender world, Z up, metres): a textured ground disc of radius 3 at z=0; a torus, a UV
sphere and a cone stand near the centre (the "subjects", meant to be captured as Gaussians); a
cube stands between the camera's first position and the subjects (the "foreground", meant to
stay a mesh so a final shot has a mesh partly in front of the splats). The camera starts on the
-Y side and orbits 60 degrees about the Z axis over frames 1-24.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from addon.blender import compat

log = logging.getLogger(__name__)

#: Name of the collection the sample scene is built in.
COLLECTION_NAME = "NS Sample"
#: Frame range of the camera's orbit.
FRAME_START, FRAME_END = 1, 24


@dataclass
class SampleScene:
    """What :func:`build_sample_scene` made.

    Attributes:
        scene: the scene it was built in.
        collection: the collection holding every object of the sample.
        subjects: textured meshes meant to be captured as Gaussians (torus, sphere, cone).
        foreground: meshes meant to stay meshes in a final shot, partly in front of the subjects.
        ground: the textured ground disc.
        camera: the scene camera (``scene.camera``), child of an orbiting rig empty.
        lights: the light objects.
    """

    scene: object
    collection: object
    subjects: list = field(default_factory=list)
    foreground: list = field(default_factory=list)
    ground: object = None
    camera: object = None
    lights: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Meshes
# ---------------------------------------------------------------------------------------------


def _torus_mesh(name: str, major: float, minor: float, n_major: int = 40, n_minor: int = 16):
    """A torus about the Z axis built in one ``from_pydata`` call (no per-vertex bpy calls)."""
    import bpy

    u = np.linspace(0.0, 2.0 * np.pi, n_major, endpoint=False)
    v = np.linspace(0.0, 2.0 * np.pi, n_minor, endpoint=False)
    uu, vv = np.meshgrid(u, v, indexing="ij")  # [n_major, n_minor]
    ring = major + minor * np.cos(vv)
    verts = np.stack([ring * np.cos(uu), ring * np.sin(uu), minor * np.sin(vv)], axis=-1).reshape(-1, 3)
    i = np.arange(n_major)[:, None]
    j = np.arange(n_minor)[None, :]
    a = i * n_minor + j
    b = ((i + 1) % n_major) * n_minor + j
    c = ((i + 1) % n_major) * n_minor + (j + 1) % n_minor
    d = i * n_minor + (j + 1) % n_minor
    faces = np.stack([a, b, c, d], axis=-1).reshape(-1, 4)
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(verts.tolist(), [], faces.tolist())
    mesh.update()
    return mesh


def _bmesh_mesh(name: str, build):
    """A mesh made by one bmesh operator; ``build(bm)`` fills the BMesh."""
    import bmesh
    import bpy

    bm = bmesh.new()
    build(bm)
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    return mesh


def _smooth(mesh) -> None:
    """Smooth shading for every face, in one foreach_set."""
    n = len(mesh.polygons)
    mesh.polygons.foreach_set("use_smooth", np.ones(n, dtype=bool))
    mesh.update()


# ---------------------------------------------------------------------------------------------
# Materials: procedural node trees, object-space texture coordinates (no UVs needed)
# ---------------------------------------------------------------------------------------------


def _material(name: str, texture: str, colors: tuple, scale: float, offset, roughness: float = 0.5):
    """A Principled BSDF material whose base colour is one procedural texture.

    Args:
        name: material name.
        texture: "checker", "noise", "brick" or "wave".
        colors: two (or three, for brick: mortar last) linear RGB colours.
        scale: texture scale.
        offset: object-space offset of the texture coordinates (from the seed). [3]
        roughness: Principled roughness.
    """
    import bpy

    mat = bpy.data.materials.new(name)
    tree = compat.node_tree(mat)
    nodes, links = tree.nodes, tree.links
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = roughness
    coord = nodes.new("ShaderNodeTexCoord")
    mapping = nodes.new("ShaderNodeMapping")
    mapping.inputs["Location"].default_value = tuple(float(x) for x in offset)
    links.new(coord.outputs["Object"], mapping.inputs["Vector"])
    rgba = lambda c: (*c, 1.0)  # noqa: E731 - node colour sockets are RGBA

    if texture == "checker":
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Color1"].default_value = rgba(colors[0])
        tex.inputs["Color2"].default_value = rgba(colors[1])
        tex.inputs["Scale"].default_value = scale
        color_out = tex.outputs["Color"]
    elif texture == "brick":
        tex = nodes.new("ShaderNodeTexBrick")
        tex.inputs["Color1"].default_value = rgba(colors[0])
        tex.inputs["Color2"].default_value = rgba(colors[1])
        tex.inputs["Mortar"].default_value = rgba(colors[2])
        tex.inputs["Scale"].default_value = scale
        color_out = tex.outputs["Color"]
    elif texture in ("noise", "wave"):
        # Noise and wave give a scalar pattern; a two-stop ramp turns it into the two colours.
        if texture == "noise":
            tex = nodes.new("ShaderNodeTexNoise")
            tex.inputs["Detail"].default_value = 3.0
        else:
            tex = nodes.new("ShaderNodeTexWave")
            tex.inputs["Distortion"].default_value = 2.0
        tex.inputs["Scale"].default_value = scale
        ramp = nodes.new("ShaderNodeValToRGB")
        ramp.color_ramp.elements[0].color = rgba(colors[0])
        ramp.color_ramp.elements[1].color = rgba(colors[1])
        links.new(tex.outputs["Fac"], ramp.inputs["Fac"])
        color_out = ramp.outputs["Color"]
    else:
        raise ValueError(f"texture: unknown procedural texture {texture!r}")
    links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
    links.new(color_out, bsdf.inputs["Base Color"])
    return mat


# ---------------------------------------------------------------------------------------------
# Scene
# ---------------------------------------------------------------------------------------------


def _link_mesh_object(collection, name: str, mesh, material, location, rotation=(0.0, 0.0, 0.0)):
    import bpy

    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    obj.rotation_euler = rotation
    collection.objects.link(obj)
    return obj


def _clear_scene(scene) -> None:
    """Remove every object linked to the scene (their data stays until Blender purges orphans)."""
    import bpy

    for obj in list(scene.objects):
        bpy.data.objects.remove(obj, do_unlink=True)


def configure_fast_cycles(scene, samples: int = 16) -> None:
    """Cycles settings for quick, deterministic CPU renders of small images.

    Args:
        scene: the scene to configure.
        samples: path-tracing samples per pixel.
    """
    scene.render.engine = "CYCLES"
    cyc = scene.cycles
    cyc.device = "CPU"
    cyc.samples = int(samples)
    cyc.use_adaptive_sampling = True
    cyc.adaptive_threshold = 0.05
    cyc.use_denoising = False  # noise at 16 spp is fine for training views; denoising costs more
    cyc.seed = 0
    cyc.max_bounces = 4
    cyc.diffuse_bounces = 2
    cyc.glossy_bounces = 2
    cyc.transmission_bounces = 2
    cyc.volume_bounces = 0
    cyc.transparent_max_bounces = 4
    cyc.caustics_reflective = False
    cyc.caustics_refractive = False
    # "Standard" keeps the displayed image a plain sRGB encoding of the linear render, which is
    # what the Gaussians (trained on linear images) are compared against.
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"


def build_sample_scene(scene=None, seed: int = 0, clear: bool = True) -> SampleScene:
    """Build the procedural sample scene.

    Args:
        scene: the scene to build in (default: the context scene).
        seed: varies texture offsets and object spins; the same seed always gives the same scene.
        clear: first remove every object already in the scene (e.g. the default cube).

    Returns:
        The objects made, by role.
    """
    import bmesh
    import bpy

    from addon.blender.importers.camera_path import put_fcurve

    scene = scene if scene is not None else bpy.context.scene
    rng = np.random.default_rng(seed)
    if clear:
        _clear_scene(scene)
    collection = bpy.data.collections.new(COLLECTION_NAME)
    scene.collection.children.link(collection)
    offsets = rng.uniform(-0.5, 0.5, size=(5, 3))
    spins = rng.uniform(0.0, 2.0 * math.pi, size=5)

    # 1. Materials (linear RGB colours, clearly distinct hues)
    m_ground = _material("NS Ground Bricks", "brick", ((0.42, 0.12, 0.05), (0.25, 0.20, 0.16), (0.70, 0.68, 0.62)),
                         scale=3.0, offset=offsets[0], roughness=0.8)
    m_torus = _material("NS Torus Checker", "checker", ((0.80, 0.05, 0.04), (0.90, 0.85, 0.75)),
                        scale=6.0, offset=offsets[1], roughness=0.4)
    m_sphere = _material("NS Sphere Wave", "wave", ((0.02, 0.10, 0.60), (0.30, 0.75, 0.90)),
                         scale=2.5, offset=offsets[2], roughness=0.3)
    m_cone = _material("NS Cone Noise", "noise", ((0.85, 0.60, 0.02), (0.25, 0.05, 0.35)),
                       scale=4.0, offset=offsets[3], roughness=0.5)
    m_cube = _material("NS Cube Checker", "checker", ((0.05, 0.45, 0.08), (0.02, 0.05, 0.02)),
                       scale=3.0, offset=offsets[4], roughness=0.6)

    # 2. Meshes and objects
    ground = _link_mesh_object(
        collection, "Ground",
        _bmesh_mesh("Ground", lambda bm: bmesh.ops.create_circle(bm, cap_ends=True, segments=48, radius=3.0)),
        m_ground, (0.0, 0.0, 0.0))
    torus_mesh = _torus_mesh("Torus", major=0.45, minor=0.17)
    _smooth(torus_mesh)
    torus = _link_mesh_object(collection, "Torus", torus_mesh, m_torus, (-0.75, 0.35, 0.55),
                              (math.radians(70.0), 0.0, spins[0]))
    sphere_mesh = _bmesh_mesh("Sphere", lambda bm: bmesh.ops.create_uvsphere(
        bm, u_segments=32, v_segments=16, radius=0.5))
    _smooth(sphere_mesh)
    sphere = _link_mesh_object(collection, "Sphere", sphere_mesh, m_sphere, (0.6, 0.55, 0.5), (0.0, 0.0, spins[1]))
    cone = _link_mesh_object(
        collection, "Cone",
        _bmesh_mesh("Cone", lambda bm: bmesh.ops.create_cone(
            bm, cap_ends=True, segments=32, radius1=0.4, radius2=0.0, depth=1.0)),
        m_cone, (0.0, -0.15, 0.5), (0.0, 0.0, spins[2]))
    cube = _link_mesh_object(
        collection, "Cube",
        _bmesh_mesh("Cube", lambda bm: bmesh.ops.create_cube(bm, size=0.55)),
        m_cube, (0.35, -1.45, 0.275), (0.0, 0.0, math.radians(25.0) + 0.2 * spins[3]))

    # 3. Lights and world
    sun_data = bpy.data.lights.new("NS Sun", "SUN")
    sun_data.energy = 3.0
    sun_data.angle = math.radians(10.0)
    sun = bpy.data.objects.new("Sun", sun_data)
    sun.rotation_euler = (math.radians(40.0), math.radians(15.0), math.radians(30.0))
    collection.objects.link(sun)
    area_data = bpy.data.lights.new("NS Fill", "AREA")
    area_data.energy = 150.0
    area_data.size = 2.0
    area = bpy.data.objects.new("Fill", area_data)
    area.location = (-3.0, -2.5, 3.0)
    area.rotation_euler = (math.radians(50.0), 0.0, math.radians(-50.0))
    collection.objects.link(area)
    if scene.world is None:
        scene.world = bpy.data.worlds.new("NS World")
    background = next(n for n in compat.node_tree(scene.world).nodes if n.type == "BACKGROUND")
    background.inputs["Color"].default_value = (0.05, 0.06, 0.08, 1.0)
    background.inputs["Strength"].default_value = 1.0

    # 4. Camera on an orbiting rig: rotating the rig about Z moves the camera on an exact circle
    rig = bpy.data.objects.new("Camera Rig", None)
    rig.location = (0.0, 0.0, 0.35)
    collection.objects.link(rig)
    cam_data = bpy.data.cameras.new("NS Camera")
    cam_data.lens = 40.0
    cam_data.sensor_width = 36.0
    cam_data.clip_start = 0.1
    cam_data.clip_end = 50.0
    camera = bpy.data.objects.new("Camera", cam_data)
    camera.parent = rig
    distance, height = 5.2, 2.0
    camera.location = (0.0, -distance, height)
    # Look at the rig's origin: pitch up from straight down by the elevation complement.
    camera.rotation_euler = (math.atan2(distance, height), 0.0, 0.0)
    collection.objects.link(camera)
    scene.camera = camera
    # The whole fcurve at once, Bezier keys as keyframe_insert would make them.
    put_fcurve(compat.new_action(rig, f"{rig.name}Action", "OBJECT"), "rotation_euler", 2,
               np.array([1.0, 9.0, 17.0, 24.0]), np.radians([0.0, 20.0, 40.0, 60.0]), "Object Transforms",
               interpolation="BEZIER")
    scene.frame_start, scene.frame_end = FRAME_START, FRAME_END
    scene.render.fps = 24
    scene.frame_set(FRAME_START)

    # 5. Render settings
    configure_fast_cycles(scene)
    scene.render.resolution_x, scene.render.resolution_y = 192, 144
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = False

    for obj in (ground, torus, sphere, cone, cube):
        obj["nstudio_role"] = "foreground" if obj is cube else ("ground" if obj is ground else "subject")
    log.info("built sample scene in %r (seed %d)", scene.name, seed)
    return SampleScene(scene=scene, collection=collection, subjects=[torus, sphere, cone], foreground=[cube],
                       ground=ground, camera=camera, lights=[sun, area])
