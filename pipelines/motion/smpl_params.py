"""SMPL / SMPL-H / SMPL-X parameters evaluated with the user's model file, as a Motion map.

The model comes from the user's file through :func:`pipelines.motion.body.load_smpl_file` (never
chumpy) and the ``smplx`` package's own layers and LBS functions, so the joints are exactly what
``smplx`` gives for the same parameters (the tests compare with its ``forward``). The family is read from the file itself (24 joints: SMPL; 52: SMPL-H, the
model AMASS uses; 55: SMPL-X, which ``smplx`` reads from its ``.npz`` itself).

Frames (PROTOCOL.md Motion):

- SMPL's own model frame is Y up, facing +Z (+X the body's left). AMASS's parameters already
  place the body in a Z-up world (its ``root_orient`` carries the turn), which is Blender's:
  ``world_from_smpl`` ``M`` is the identity. Parameters fitted in SMPL's Y-up world (``up="y"``)
  take ``M = C``, the +90 degree turn about X.
- The Motion's body frame is Z up, facing -Y: ``C`` maps SMPL's model frame onto it, so the rest
  skeleton is ``C J_rest`` lifted so the rest mesh's lowest vertex is at Z = 0, a child joint's
  local rotation is ``C r_j C^T`` and the root's world rotation ``M r_0 C^T`` (``r`` the
  axis-angle parameters as matrices). The root joint sits at ``M (J_0 + trans)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addon.wire.schema import PipelineError

log = logging.getLogger(__name__)

#: SMPL model frame (Y up, +Z front) -> body frame (Z up, -Y front).
C = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
BODY_JOINTS = 22
#: Joint count of each family's kinematic tree.
FAMILY_JOINTS = {24: "smpl", 52: "smplh", 55: "smplx"}
#: Frames per step (progress and cancel between steps).
CHUNK = 512
#: COCO-17 keypoint -> SMPL joint index (body points) or smplx vertex_ids name (face).
COCO_SOURCES = ("nose", "leye", "reye", "lear", "rear", 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)
#: The Motion map's contact points (left heel, left toe, right heel, right toe) as smplx vertex names.
CONTACT_VERTICES = ("LHeel", "LBigToe", "RHeel", "RBigToe")


@dataclass
class SmplModel:
    """A loaded SMPL-family model.

    Attributes:
        kind: "smpl", "smplh" or "smplx".
        layer: the smplx layer (float64).
        names: joint names. [J]
        parents: parent per joint, -1 for the root. [J]
        faces: triangles. [F, 3]
        vertex_ids: smplx's named vertices (nose, eyes, ears, toes, heels) of this topology.
        path: the model file.
    """

    kind: str
    layer: object = field(repr=False)
    names: list
    parents: list
    faces: np.ndarray
    vertex_ids: dict
    path: Path

    @property
    def joint_count(self) -> int:
        return len(self.names)


def joint_names(kind: str, count: int) -> list:
    """The family's joint names in smplx's order (SMPL's 24, SMPL-H's 52, SMPL-X's 55)."""
    from smplx.joint_names import JOINT_NAMES

    from .body import SMPL_NAMES

    if kind == "smpl":
        return list(SMPL_NAMES)
    if kind == "smplh":
        # SMPL-H: the body, then the left and right hands' 15 joints (SMPL-X's order without
        # the jaw and eyes).
        return list(JOINT_NAMES[:BODY_JOINTS]) + list(JOINT_NAMES[25:55])
    return list(JOINT_NAMES[:count])


def load_model(path: Path, device: str = "cpu", vertex_ids: dict | None = None) -> SmplModel:
    """The SMPL-family model in ``path`` (.pkl official pickle or .npz) as an smplx layer.

    Args:
        vertex_ids: named vertices; default smplx's table for the official topology.

    Raises:
        PipelineError: ``unavailable`` naming the file when it is missing, unreadable or not an
            SMPL-family model.
    """
    import smplx
    import torch
    from smplx.utils import Struct
    from smplx.vertex_ids import vertex_ids as official_ids

    from .body import read_smpl_model, smplx_layer

    path = Path(path)
    data = read_smpl_model(path)
    count = int(np.shape(data["J_regressor"])[0])
    kind = FAMILY_JOINTS.get(count)
    if kind is None:
        raise PipelineError("unavailable", f"body model file {path}: {count} joints; SMPL has 24, "
                            "SMPL-H 52, SMPL-X 55", "params.body")
    ids = dict(vertex_ids or official_ids["smplx" if kind == "smplx" else "smplh"])
    # SMPL's files carry 10 shape components, AMASS's SMPL-H 16 (SMPL-X: 16 of its 300 used).
    shape_dims = int(np.shape(data["shapedirs"])[-1])
    v_count = int(np.shape(data["v_template"])[0])
    common = dict(vertex_ids=ids, dtype=torch.float64, batch_size=1)
    if kind == "smplx":
        if path.suffix != ".npz":
            raise PipelineError("unavailable", f"body model file {path}: give SMPL-X as its .npz "
                                "(the .pkl needs chumpy)", "params.body")
        layer = smplx_layer(path, data, use_pca=False, flat_hand_mean=True, num_betas=16,
                            num_expression_coeffs=10, dtype=torch.float64, batch_size=1)
    else:
        # No pose correctives in the file (some conversions drop them): none applied.
        pose_dims = 9 * (count - 1)
        data.setdefault("posedirs", np.zeros((v_count, 3, pose_dims)))
        if kind == "smpl":
            layer = smplx.SMPL(model_path=str(path), data_struct=Struct(**data), num_betas=shape_dims, **common)
        else:
            # AMASS's hand poses are full axis-angle without PCA or the mean hand added.
            for side in "lr":
                data.setdefault(f"hands_components{side}", np.eye(45))
                data.setdefault(f"hands_mean{side}", np.zeros(45))
            layer = smplx.SMPLH(model_path=str(path), data_struct=Struct(**data), num_betas=shape_dims,
                                use_pca=False, flat_hand_mean=True, **common)
    layer = layer.to(device)
    missing = [name for name, index in ids.items() if int(index) >= v_count]
    if missing:
        raise PipelineError("unavailable", f"body model file {path}: {v_count} vertices, not the "
                            f"official {kind.upper()} topology (no vertex for {missing[:3]})", "params.body")
    parents = [int(p) for p in layer.parents.cpu()]
    parents[0] = -1
    return SmplModel(kind=kind, layer=layer, names=joint_names(kind, count), parents=parents,
                     faces=np.asarray(data["f"], np.int32).reshape(-1, 3), vertex_ids=ids, path=path)


@dataclass
class Parameters:
    """One clip's parameters, already checked: axis-angle per joint in the model's order.

    Attributes:
        pose: axis-angle of every model joint; joints the input did not give are 0. [T, J, 3]
        trans: translation in the parameters' world. [T, 3]
        betas: shape coefficients (cut or padded to the model's count). [B]
        fps: frames per second.
    """

    pose: np.ndarray
    trans: np.ndarray
    betas: np.ndarray
    fps: float


def evaluate(model: SmplModel, params: Parameters, world_from_smpl: np.ndarray, job=None) -> dict:
    """The Motion map of ``params`` on ``model`` (see the module's frames).

    Args:
        world_from_smpl: the parameters' world in Blender's. [3, 3]
        job: reports progress ("evaluate") and honours cancel between chunks; optional.

    Returns:
        The Motion map (fps, skeleton, rotations, root_translation, joints, keypoints3d,
        contacts, confidence, body, mesh); ``joints`` are smplx's own joints mapped by
        ``world_from_smpl``.
    """
    import torch
    from smplx.lbs import blend_shapes, vertices2joints

    from nskernels.rotations import axis_angle_to_matrix, matrix_to_quaternion

    layer = model.layer
    device = layer.v_template.device
    t, j_count = params.pose.shape[0], model.joint_count
    m = torch.as_tensor(world_from_smpl, dtype=torch.float64)
    c = torch.as_tensor(C, dtype=torch.float64)
    betas = torch.as_tensor(params.betas, dtype=torch.float64, device=device)[None]
    with torch.no_grad():
        rest_v = layer.v_template[None] + blend_shapes(betas, layer.shapedirs[..., :betas.shape[1]])
        rest_j = vertices2joints(layer.J_regressor, rest_v)[0].cpu()     # SMPL frame [J, 3]
        rest_v = rest_v[0].cpu()
        # Body frame: C turns SMPL's model frame to Z up facing -Y; the soles rest on Z = 0.
        body_v, body_j = rest_v @ c.T, rest_j @ c.T
        lift = torch.tensor([0.0, 0.0, float(body_v[:, 2].min())], dtype=torch.float64)
        body_v, body_j = body_v - lift, body_j - lift
        pose = torch.as_tensor(params.pose, dtype=torch.float64)
        local = axis_angle_to_matrix(pose)                                  # [T, J, 3, 3] SMPL frame
        local = c @ local @ c.T
        local[:, 0] = m @ axis_angle_to_matrix(pose[:, 0]) @ c.T
        trans = torch.as_tensor(params.trans, dtype=torch.float64)
        names = ["nose", "leye", "reye", "lear", "rear", *CONTACT_VERTICES]
        picked = torch.tensor([int(model.vertex_ids[n]) for n in names])
        joints = torch.empty(t, j_count, 3, dtype=torch.float64)
        points = torch.empty(t, len(names), 3, dtype=torch.float64)
        for start in range(0, t, CHUNK):
            if job is not None:
                job.check_cancel()
            stop = min(t, start + CHUNK)
            chunk_joints, chunk_points = _pose_chunk(layer, pose[start:stop].to(device), trans[start:stop].to(device),
                                                     betas, picked.to(device))
            joints[start:stop] = chunk_joints.cpu()
            points[start:stop] = chunk_points.cpu()
            if job is not None:
                job.progress("evaluate", stop, t, f"frames {stop}/{t}")
        joints, points = joints @ m.T, points @ m.T
        root = (rest_j[0] + trans) @ m.T
        quats = matrix_to_quaternion(local)
    coco = np.empty((t, 17, 3))
    for k, source in enumerate(COCO_SOURCES):
        coco[:, k] = joints[:, source].numpy() if isinstance(source, int) else points[:, names.index(source)].numpy()
    from .contact import world_contacts

    feet = points[:, 5:].numpy()
    rest_feet = (rest_v[picked[5:]] @ c.T - lift)[:, 2].numpy()
    weights = layer.lbs_weights.detach().cpu().float()
    top = min(4, weights.shape[1])
    skin_weight, skin_index = weights.topk(top, dim=1)
    skin_weight = skin_weight / skin_weight.sum(1, keepdim=True)
    body = {"model": model.kind, "betas": np.asarray(params.betas, np.float32),
            "global_orient": params.pose[:, 0].astype(np.float32),
            "body_pose": params.pose[:, 1:BODY_JOINTS if model.kind != "smpl" else 24].reshape(t, -1).astype(np.float32),
            "transl": np.asarray(params.trans, np.float32),
            "world_from_body": _homogeneous(world_from_smpl)}
    if model.kind != "smpl":
        hands = params.pose[:, j_count - 30:].reshape(t, 2, 45).astype(np.float32)
        body.update(left_hand_pose=hands[:, 0], right_hand_pose=hands[:, 1])
    return {
        "fps": float(params.fps),
        "skeleton": {"names": list(model.names), "parents": np.asarray(model.parents, np.int32),
                     "rest": body_j.numpy().astype(np.float32)},
        "rotations": quats.numpy().astype(np.float32),
        "root_translation": root.numpy().astype(np.float32),
        "joints": joints.numpy().astype(np.float32),
        "keypoints3d": coco.astype(np.float32),
        "contacts": world_contacts(feet, float(params.fps), rest_feet),
        "confidence": np.ones(t, np.float32),
        "body": body,
        "mesh": {"vertices": body_v.numpy().astype(np.float32), "faces": model.faces,
                 "skin_index": skin_index.numpy().astype(np.int32),
                 "skin_weight": skin_weight.numpy().astype(np.float32)},
    }


def _homogeneous(rotation: np.ndarray) -> np.ndarray:
    out = np.eye(4, dtype=np.float32)
    out[:3, :3] = rotation
    return out


def _pose_chunk(layer, pose, trans, betas, picked):
    """smplx's forward pass for a chunk of frames, on the joints and a few vertices only.

    The same smplx functions and buffers as the layer's own ``forward`` (``batch_rodrigues``,
    ``batch_rigid_transform``, pose blend shapes, linear blend skinning), but the pose
    correctives and skinning are evaluated on the ``picked`` vertices instead of all of them:
    the joints do not depend on the vertices, and a clip needs only the named ones. 3000
    frames of SMPL-H took 67 s through ``layer()`` (all 6890 vertices, 459 pose directions).

    Args:
        pose: axis-angle of every joint, the model's order. [N, J, 3]
        trans: translation. [N, 3]
        betas: shape. [1, B]
        picked: vertex indices. [P]

    Returns:
        (joints [N, J, 3], picked vertices [N, P, 3]), the model's frame plus ``trans``.
    """
    import torch
    from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints

    n, j_count = pose.shape[:2]
    full = pose.reshape(n, -1)
    if hasattr(layer, "pose_mean"):      # SMPL-H/SMPL-X add it (zeros with flat hands)
        full = full + layer.pose_mean
    shape = betas
    shapedirs = layer.shapedirs
    if hasattr(layer, "expr_dirs"):      # SMPL-X: zero expression, as smplx concatenates it
        zeros = torch.zeros(1, layer.expr_dirs.shape[-1], dtype=betas.dtype, device=betas.device)
        shape = torch.cat([betas, zeros], 1)
        shapedirs = torch.cat([layer.shapedirs, layer.expr_dirs], -1)
    v_shaped = layer.v_template[None] + blend_shapes(shape, shapedirs)          # [1, V, 3]
    rest_joints = vertices2joints(layer.J_regressor, v_shaped)                  # [1, J, 3]
    rot = batch_rodrigues(full.reshape(-1, 3)).reshape(n, j_count, 3, 3)
    posed, transforms = batch_rigid_transform(rot, rest_joints.expand(n, -1, -1), layer.parents,
                                              dtype=full.dtype)
    eye = torch.eye(3, dtype=full.dtype, device=full.device)
    feature = (rot[:, 1:] - eye).reshape(n, -1)
    columns = (3 * picked[:, None] + torch.arange(3, device=picked.device)).reshape(-1)
    v_posed = v_shaped[:, picked] + (feature @ layer.posedirs[:, columns]).reshape(n, -1, 3)
    skin = (layer.lbs_weights[picked] @ transforms.reshape(n, j_count, 16)).reshape(n, -1, 4, 4)
    vertices = (skin[..., :3, :3] @ v_posed[..., None])[..., 0] + skin[..., :3, 3]
    return posed + trans[:, None], vertices + trans[:, None]


def parameters(arrays: dict, model: SmplModel, fps: float) -> Parameters:
    """Check AMASS-style arrays and lay them out per model joint.

    Accepts ``poses (T, 3n)`` (SMPL order: 24 joints for SMPL, 52 for SMPL-H as AMASS stores
    them, 55 for SMPL-X) or AMASS's SMPL-X split ``root_orient (T,3)``, ``pose_body (T,63)``,
    optional ``pose_hand (T,90)``, ``pose_jaw (T,3)``, ``pose_eye (T,6)``; ``trans (T,3)``;
    optional ``betas (B,)``. The 22 body joints always come through; hands (and SMPL's two hand
    joints, SMPL-X's jaw and eyes) only where the input has the model's own layout.

    Raises:
        PipelineError: ``invalid_input`` naming the input.
    """
    j_count = model.joint_count
    if "poses" in arrays:
        poses = np.asarray(arrays["poses"], np.float64)
        if poses.ndim != 2 or poses.shape[1] % 3 or poses.shape[1] < 3 * BODY_JOINTS:
            raise PipelineError("invalid_input", f"inputs.poses: (T, 3n) with n >= {BODY_JOINTS} "
                                f"joints expected, got {poses.shape}", "inputs.poses")
        given = poses.reshape(len(poses), -1, 3)
        pose = np.zeros((len(poses), j_count, 3))
        pose[:, :BODY_JOINTS] = given[:, :BODY_JOINTS]
        n = given.shape[1]
        if n == j_count:
            pose[:] = given
        elif model.kind == "smplx" and n == 52:          # SMPL-H layout on SMPL-X: hands follow
            pose[:, 25:] = given[:, 22:]
        elif model.kind == "smplh" and n == 55:
            pose[:, 22:] = given[:, 25:]
    elif "root_orient" in arrays and "pose_body" in arrays:
        root = np.asarray(arrays["root_orient"], np.float64)
        body = np.asarray(arrays["pose_body"], np.float64)
        t = len(root)
        for key, width, value in (("root_orient", 3, root), ("pose_body", 63, body)):
            if value.shape != (t, width):
                raise PipelineError("invalid_input", f"inputs.{key}: ({t}, {width}) expected, got "
                                    f"{value.shape}", f"inputs.{key}")
        pose = np.zeros((t, j_count, 3))
        pose[:, 0], pose[:, 1:BODY_JOINTS] = root, body.reshape(t, 21, 3)
        for key, width, where in (("pose_hand", 90, slice(j_count - 30, j_count)),
                                  ("pose_jaw", 3, slice(22, 23)), ("pose_eye", 6, slice(23, 25))):
            if key not in arrays or model.kind == "smpl" or (model.kind == "smplh" and key != "pose_hand"):
                continue
            value = np.asarray(arrays[key], np.float64)
            if value.shape != (t, width):
                raise PipelineError("invalid_input", f"inputs.{key}: ({t}, {width}) expected, got "
                                    f"{value.shape}", f"inputs.{key}")
            pose[:, where] = value.reshape(t, -1, 3)
    else:
        raise PipelineError("invalid_input", "inputs: give poses (T, 3n), or root_orient and "
                            "pose_body", "inputs.poses")
    t = len(pose)
    if t == 0:
        raise PipelineError("invalid_input", "inputs.poses: zero frames", "inputs.poses")
    trans = np.asarray(arrays["trans"], np.float64)
    if trans.shape != (t, 3):
        raise PipelineError("invalid_input", f"inputs.trans: ({t}, 3) expected, got {trans.shape}",
                            "inputs.trans")
    betas = np.zeros(int(model.layer.num_betas))
    if arrays.get("betas") is not None:
        given = np.asarray(arrays["betas"], np.float64).reshape(-1)
        count = min(len(given), len(betas))
        betas[:count] = given[:count]
        if np.abs(given[count:]).max(initial=0.0) > 0:
            log.info("%d betas given, the model %s has %d: the rest ignored", len(given),
                     model.path.name, len(betas))
    if not (np.isfinite(pose).all() and np.isfinite(trans).all() and np.isfinite(betas).all()):
        raise PipelineError("invalid_input", "inputs: poses, trans or betas contain NaN or infinity",
                            "inputs.poses")
    return Parameters(pose=pose, trans=trans, betas=betas, fps=fps)
