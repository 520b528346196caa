"""The Gaussian objects' display proxy (bpy layer): a Geometry Nodes group and its material.

Built once per .blend and shared by every Gaussian object (`addon.blender.importers.gaussians`
adds the modifier): oriented, scaled ico-spheres coloured by the SH DC colour with the Gaussian's
opacity, or plain points above a configurable count. The nodes read the raw POINT attributes
named by `addon.core.gaussians_layout`; a tree from an older version of this module
(``PROXY_VERSION``) is rebuilt in place.
"""

from __future__ import annotations

import logging

from . import compat
from ..core import gaussians_layout as layout
from ..core.formats.gaussians import SH_C0

log = logging.getLogger(__name__)

PROXY_GROUP_NAME = "NS Gaussian Proxy"
PROXY_MATERIAL_NAME = "NS Gaussian Display"
PROXY_MODIFIER_NAME = "Gaussian Proxy"
# Bumped whenever the node tree below changes; an older tree in a file is rebuilt in place.
PROXY_VERSION = 2
# Modifier input names (the node group's interface), with defaults.
INPUT_SCALE = "Scale Factor"
INPUT_THRESHOLD = "Point Threshold"
INPUT_SUBDIVISIONS = "Subdivisions"
DEFAULT_SCALE = 1.0
DEFAULT_THRESHOLD = 200_000
DEFAULT_SUBDIVISIONS = 2

# The shadow caster of final shots (:mod:`splat_shadow`): a node group on a separate object.
SHADOW_GROUP_NAME = "NS Gaussian Shadow"
SHADOW_MATERIAL_NAME = "NS Gaussian Shadow"
SHADOW_VERSION = 1
INPUT_SOURCE = "Gaussians"
INPUT_MIN_OPACITY = "Min Opacity"
INPUT_SIZE = "Size"
#: Gaussians less opaque than this cast no shadow.
DEFAULT_MIN_OPACITY = 0.5
#: Ellipsoid radius in standard deviations: an opaque Gaussian's own alpha, 0.99 exp(-r^2 / 2),
#: falls to 0.5 at r = 1.17.
DEFAULT_SHADOW_SIZE = 1.2


# ---------------------------------------------------------------- node helpers

def _link(tree, out_socket, in_socket) -> None:
    tree.links.new(out_socket, in_socket)


def _math(nodes, op: str, *values):
    node = nodes.new("ShaderNodeMath")
    node.operation = op
    for i, v in enumerate(values):
        if v is not None:
            node.inputs[i].default_value = v
    return node


def _sigmoid(tree, logit):
    """Math nodes of ``1 / (1 + exp(-logit))`` in a shader or geometry node tree; returns the
    output socket (``logit``: an output socket)."""
    neg = _math(tree.nodes, "MULTIPLY", None, -1.0)
    _link(tree, logit, neg.inputs[0])
    exp = _math(tree.nodes, "EXPONENT")
    _link(tree, neg.outputs[0], exp.inputs[0])
    one_plus = _math(tree.nodes, "ADD", None, 1.0)
    _link(tree, exp.outputs[0], one_plus.inputs[0])
    alpha = _math(tree.nodes, "DIVIDE", 1.0, None)
    _link(tree, one_plus.outputs[0], alpha.inputs[1])
    return alpha.outputs[0]


def _vector_math(nodes, op: str):
    node = nodes.new("ShaderNodeVectorMath")
    node.operation = op
    return node


def _named(nodes, name: str, data_type: str):
    node = nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node


def _group(name: str, version_key: str, version: int):
    """The geometry node group ``name``: (it, True) when it is already at ``version`` (its
    ``version_key`` property), else (it emptied of sockets and nodes, or made, False)."""
    import bpy

    ng = bpy.data.node_groups.get(name)
    if ng is not None and ng.get(version_key) == version:
        return ng, True
    if ng is None:
        ng = bpy.data.node_groups.new(name, "GeometryNodeTree")
    ng.interface.clear()
    ng.nodes.clear()
    return ng, False


def _output_with_material(ng, geometry, material, group_out) -> None:
    """``geometry`` (an output socket) with ``material`` set, linked to the group's output."""
    set_mat = ng.nodes.new("GeometryNodeSetMaterial")
    set_mat.inputs["Material"].default_value = material
    _link(ng, geometry, set_mat.inputs["Geometry"])
    _link(ng, set_mat.outputs[0], group_out.inputs[0])


def _ellipsoids(ng, points, mesh, log_scale, factor):
    """Instance on Points of ``mesh`` (a unit sphere) on every Gaussian, rotated by its normalised
    quaternion and scaled by ``exp(log scale) * factor``: the ellipsoid ``factor`` standard
    deviations out. Returns the Instance on Points node (its "Selection" input is free)."""
    nodes = ng.nodes
    # Scale: exp(log scale) * factor. Per component: Vector Math "POWER" only exists from
    # Blender 4.5.
    split = nodes.new("ShaderNodeSeparateXYZ")
    _link(ng, log_scale, split.inputs[0])
    exp_scale = nodes.new("ShaderNodeCombineXYZ")
    for c in "XYZ":
        exp_c = _math(nodes, "EXPONENT")
        _link(ng, split.outputs[c], exp_c.inputs[0])
        _link(ng, exp_c.outputs[0], exp_scale.inputs[c])
    scaled = _vector_math(nodes, "SCALE")
    _link(ng, exp_scale.outputs[0], scaled.inputs[0])
    _link(ng, factor, scaled.inputs["Scale"])

    # Rotation: the stored quaternion is unnormalised (raw parameter); normalise it here.
    rot_attr = _named(nodes, layout.ROTATION, "QUATERNION")
    wxyz = nodes.new("FunctionNodeRotationToQuaternion")
    _link(ng, rot_attr.outputs["Attribute"], wxyz.inputs[0])
    xyz = nodes.new("ShaderNodeCombineXYZ")
    for i, c in enumerate("XYZ"):
        _link(ng, wxyz.outputs[c], xyz.inputs[i])
    dot = _vector_math(nodes, "DOT_PRODUCT")
    _link(ng, xyz.outputs[0], dot.inputs[0])
    _link(ng, xyz.outputs[0], dot.inputs[1])
    norm2 = _math(nodes, "MULTIPLY_ADD")
    _link(ng, wxyz.outputs["W"], norm2.inputs[0])
    _link(ng, wxyz.outputs["W"], norm2.inputs[1])
    _link(ng, dot.outputs["Value"], norm2.inputs[2])
    inv_norm = _math(nodes, "INVERSE_SQRT")
    _link(ng, norm2.outputs[0], inv_norm.inputs[0])
    to_rot = nodes.new("FunctionNodeQuaternionToRotation")
    for c in "WXYZ":
        mul = _math(nodes, "MULTIPLY")
        _link(ng, wxyz.outputs[c], mul.inputs[0])
        _link(ng, inv_norm.outputs[0], mul.inputs[1])
        _link(ng, mul.outputs[0], to_rot.inputs[c])

    instance = nodes.new("GeometryNodeInstanceOnPoints")
    _link(ng, points, instance.inputs["Points"])
    _link(ng, mesh, instance.inputs["Instance"])
    _link(ng, to_rot.outputs[0], instance.inputs["Rotation"])
    _link(ng, scaled.outputs[0], instance.inputs["Scale"])
    return instance


def ensure_proxy_material():
    """The display material (built once per file): emission of the SH DC colour, with alpha.

    colour = max(C0 * sh0 + 0.5, 0), alpha = sigmoid(opacity). The attributes are read both as
    GEOMETRY (points branch: they live on the points) and INSTANCER (ellipsoid branch: Instance
    on Points moves them to the instance domain); the lookup that does not apply returns 0,
    so the sum is the value that does.
    """
    import bpy

    mat = bpy.data.materials.get(PROXY_MATERIAL_NAME)
    if mat is not None and mat.get("nstudio_proxy_version") == PROXY_VERSION:
        return mat
    if mat is None:
        mat = bpy.data.materials.new(PROXY_MATERIAL_NAME)
    tree = compat.node_tree(mat)
    nodes = tree.nodes
    nodes.clear()

    def attribute_sum(name: str, socket: str):
        add = _vector_math(nodes, "ADD") if socket == "Vector" else _math(nodes, "ADD")
        for i, kind in enumerate(("GEOMETRY", "INSTANCER")):
            node = nodes.new("ShaderNodeAttribute")
            node.attribute_type = kind
            node.attribute_name = name
            _link(tree, node.outputs[socket], add.inputs[i])
        return add.outputs[0]

    sh0 = attribute_sum(layout.SH0, "Vector")
    color = _vector_math(nodes, "MULTIPLY_ADD")
    _link(tree, sh0, color.inputs[0])
    color.inputs[1].default_value = (SH_C0,) * 3
    color.inputs[2].default_value = (0.5,) * 3
    clamp = _vector_math(nodes, "MAXIMUM")
    _link(tree, color.outputs[0], clamp.inputs[0])
    clamp.inputs[1].default_value = (0.0, 0.0, 0.0)

    alpha = _sigmoid(tree, attribute_sum(layout.OPACITY, "Fac"))

    emission = nodes.new("ShaderNodeEmission")
    _link(tree, clamp.outputs[0], emission.inputs["Color"])
    transparent = nodes.new("ShaderNodeBsdfTransparent")
    mix = nodes.new("ShaderNodeMixShader")
    _link(tree, alpha, mix.inputs[0])
    _link(tree, transparent.outputs[0], mix.inputs[1])
    _link(tree, emission.outputs[0], mix.inputs[2])
    out = nodes.new("ShaderNodeOutputMaterial")
    _link(tree, mix.outputs[0], out.inputs["Surface"])
    mat.surface_render_method = "DITHERED"
    mat["nstudio_proxy_version"] = PROXY_VERSION
    return mat


def ensure_proxy_node_group():
    """The Geometry Nodes display proxy (built once per file, rebuilt if from an older version).

    Inputs: Geometry, "Scale Factor" (ellipsoid radius in standard deviations, default 1),
    "Point Threshold" (above this many Gaussians show points, default 200k), "Subdivisions"
    (ico-sphere detail, default 2: 42 vertices). Output: oriented ellipsoids ``R diag(exp(scales)) * factor``
    instanced on the Gaussians' means, or points of radius ``factor * exp(mean log scale)``;
    both with the display material.
    """
    ng, current = _group(PROXY_GROUP_NAME, "nstudio_proxy_version", PROXY_VERSION)
    if current:
        return ng
    ng.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    scale_in = ng.interface.new_socket(INPUT_SCALE, in_out="INPUT", socket_type="NodeSocketFloat",
                                       description="Ellipsoid / point size in standard deviations")
    scale_in.default_value, scale_in.min_value = DEFAULT_SCALE, 0.0
    thr_in = ng.interface.new_socket(INPUT_THRESHOLD, in_out="INPUT", socket_type="NodeSocketInt",
                                     description="Show plain points when there are more Gaussians than this")
    thr_in.default_value, thr_in.min_value = DEFAULT_THRESHOLD, 0
    sub_in = ng.interface.new_socket(INPUT_SUBDIVISIONS, in_out="INPUT", socket_type="NodeSocketInt",
                                     description="Ico-sphere subdivisions of each ellipsoid")
    sub_in.default_value, sub_in.min_value, sub_in.max_value = DEFAULT_SUBDIVISIONS, 1, 4
    ng.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes = ng.nodes
    group_in = nodes.new("NodeGroupInput")
    group_out = nodes.new("NodeGroupOutput")
    geometry, factor = group_in.outputs[0], group_in.outputs[INPUT_SCALE]

    # Switch to points above the threshold.
    size = nodes.new("GeometryNodeAttributeDomainSize")
    size.component = "MESH"
    _link(ng, geometry, size.inputs[0])
    compare = nodes.new("FunctionNodeCompare")
    compare.data_type, compare.operation = "INT", "GREATER_THAN"
    _link(ng, size.outputs["Point Count"], compare.inputs[2])
    _link(ng, group_in.outputs[INPUT_THRESHOLD], compare.inputs[3])

    # Ellipsoids: a unit ico-sphere per Gaussian.
    log_scale = _named(nodes, layout.SCALE, "FLOAT_VECTOR")
    ico = nodes.new("GeometryNodeMeshIcoSphere")
    ico.inputs["Radius"].default_value = 1.0
    _link(ng, group_in.outputs[INPUT_SUBDIVISIONS], ico.inputs["Subdivisions"])
    instance = _ellipsoids(ng, geometry, ico.outputs["Mesh"], log_scale.outputs["Attribute"], factor)

    # Points: radius from the geometric mean of the three scales.
    mean_log = _vector_math(nodes, "DOT_PRODUCT")
    _link(ng, log_scale.outputs["Attribute"], mean_log.inputs[0])
    mean_log.inputs[1].default_value = (1.0 / 3.0,) * 3
    radius_exp = _math(nodes, "EXPONENT")
    _link(ng, mean_log.outputs["Value"], radius_exp.inputs[0])
    radius = _math(nodes, "MULTIPLY")
    _link(ng, radius_exp.outputs[0], radius.inputs[0])
    _link(ng, factor, radius.inputs[1])
    points = nodes.new("GeometryNodeMeshToPoints")
    points.mode = "VERTICES"
    _link(ng, geometry, points.inputs["Mesh"])
    _link(ng, radius.outputs[0], points.inputs["Radius"])

    switch = nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    _link(ng, compare.outputs[0], switch.inputs["Switch"])
    _link(ng, instance.outputs[0], switch.inputs["False"])
    _link(ng, points.outputs[0], switch.inputs["True"])
    _output_with_material(ng, switch.outputs[0], ensure_proxy_material(), group_out)
    ng["nstudio_proxy_version"] = PROXY_VERSION
    return ng


def input_ids(modifier) -> dict:
    """{input socket name: identifier} of a Geometry Nodes modifier's group (the identifier is
    the modifier's key for that input's value)."""
    return {item.name: item.identifier for item in modifier.node_group.interface.items_tree
            if item.item_type == "SOCKET" and item.in_out == "INPUT"}


def set_proxy_inputs(obj, scale_factor: float | None = None, point_threshold: int | None = None,
                     subdivisions: int | None = None) -> None:
    """Set the display proxy's modifier inputs on a Gaussian object (None keeps a value)."""
    modifier = obj.modifiers.get(PROXY_MODIFIER_NAME)
    if modifier is None or modifier.node_group is None:
        raise ValueError(f"object '{obj.name}' has no '{PROXY_MODIFIER_NAME}' modifier")
    ids = input_ids(modifier)
    for name, value in ((INPUT_SCALE, scale_factor), (INPUT_THRESHOLD, point_threshold),
                        (INPUT_SUBDIVISIONS, subdivisions)):
        if value is not None:
            modifier[ids[name]] = value
    obj.update_tag()


def ensure_shadow_material():
    """The shadow caster's material: a plain opaque diffuse (built once per file). Camera, diffuse and
    glossy rays never see the caster (:mod:`splat_shadow` sets its ray visibility), so only its
    opacity to shadow rays matters."""
    import bpy

    mat = bpy.data.materials.get(SHADOW_MATERIAL_NAME)
    if mat is None:
        mat = bpy.data.materials.new(SHADOW_MATERIAL_NAME)
        mat.diffuse_color = (0.2, 0.2, 0.2, 1.0)
    return mat


def ensure_shadow_node_group():
    """The final shots' shadow caster (built once per file, rebuilt if from an older version).

    Inputs: "Gaussians" (the Gaussian object, read through Object Info in the caster's own space,
    so the caster needs no parent and follows every move), "Min Opacity" (default 0.5: less
    opaque Gaussians cast nothing) and "Size" (ellipsoid radius in standard deviations, default
    1.2). Output: an ico-sphere ellipsoid ``R diag(exp(scales)) * size`` on every Gaussian with
    ``sigmoid(opacity) >= min opacity``, as instances (Cycles instances them; nothing is
    realised, so a million Gaussians cost a million transforms, not a million meshes), with the
    shadow material.
    """
    ng, current = _group(SHADOW_GROUP_NAME, "nstudio_shadow_version", SHADOW_VERSION)
    if current:
        return ng
    ng.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    ng.interface.new_socket(INPUT_SOURCE, in_out="INPUT", socket_type="NodeSocketObject",
                            description="The Gaussian object whose shadow this casts")
    opacity_in = ng.interface.new_socket(INPUT_MIN_OPACITY, in_out="INPUT", socket_type="NodeSocketFloat",
                                         description="Gaussians less opaque than this cast no shadow")
    opacity_in.default_value, opacity_in.min_value, opacity_in.max_value = DEFAULT_MIN_OPACITY, 0.0, 1.0
    size_in = ng.interface.new_socket(INPUT_SIZE, in_out="INPUT", socket_type="NodeSocketFloat",
                                      description="Shadow ellipsoid radius in standard deviations")
    size_in.default_value, size_in.min_value = DEFAULT_SHADOW_SIZE, 0.0
    ng.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes = ng.nodes
    group_in = nodes.new("NodeGroupInput")
    group_out = nodes.new("NodeGroupOutput")
    info = nodes.new("GeometryNodeObjectInfo")
    info.transform_space = "RELATIVE"  # the Gaussians' placement, in the caster's space
    _link(ng, group_in.outputs[INPUT_SOURCE], info.inputs["Object"])
    # The object's evaluated geometry: its loose points when the display proxy is off (final
    # shots turn it off for renders); with the proxy on, its ellipsoid instances or its point
    # cloud, both carrying the Gaussian attributes. Back to one point per Gaussian in every case.
    parts = nodes.new("GeometryNodeSeparateComponents")
    _link(ng, info.outputs["Geometry"], parts.inputs[0])
    from_instances = nodes.new("GeometryNodeInstancesToPoints")
    _link(ng, parts.outputs["Instances"], from_instances.inputs["Instances"])
    points = nodes.new("GeometryNodeJoinGeometry")
    for socket in (parts.outputs["Mesh"], parts.outputs["Point Cloud"], from_instances.outputs["Points"]):
        _link(ng, socket, points.inputs[0])

    # Selection: sigmoid(opacity logit) >= min opacity.
    alpha = _sigmoid(ng, _named(nodes, layout.OPACITY, "FLOAT").outputs["Attribute"])
    opaque = nodes.new("FunctionNodeCompare")
    opaque.data_type, opaque.operation = "FLOAT", "GREATER_EQUAL"
    _link(ng, alpha, opaque.inputs["A"])
    _link(ng, group_in.outputs[INPUT_MIN_OPACITY], opaque.inputs["B"])

    ico = nodes.new("GeometryNodeMeshIcoSphere")
    ico.inputs["Radius"].default_value = 1.0
    ico.inputs["Subdivisions"].default_value = DEFAULT_SUBDIVISIONS
    log_scale = _named(nodes, layout.SCALE, "FLOAT_VECTOR")
    instance = _ellipsoids(ng, points.outputs[0], ico.outputs["Mesh"], log_scale.outputs["Attribute"],
                           group_in.outputs[INPUT_SIZE])
    _link(ng, opaque.outputs[0], instance.inputs["Selection"])
    _output_with_material(ng, instance.outputs[0], ensure_shadow_material(), group_out)
    ng["nstudio_shadow_version"] = SHADOW_VERSION
    return ng
