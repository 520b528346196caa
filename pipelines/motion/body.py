"""Body models for the fit: Anny (the default, inside its wheel) and SMPL / SMPL-X (user files).

Every body is reduced to the same form, in the body's own frame of the Motion contract (Z up,
metres, feet on Z = 0, facing -Y, joint frames axis-aligned at rest):

- a joint tree (names, parents) and which joints the fit rotates (the rest stay at rest);
- ``rest(shape)``: rest joints [J, 3] and the 23 common keypoints as anchors on the joints
  (`nskernels.skinning.anchor_points`), differentiable in the shape parameters;
- for Anny, the rest mesh with its skin weights.

Anny (Brégier et al., "Human Mesh Modeling for Anny Body", 2025; Apache-2.0 code, CC0 data):
shape = its 6 phenotype values in [0, 1]; keypoints from its COCO-WholeBody regressor. Its
optional "smplx" topology downloads non-commercial assets and is never used. SMPL / SMPL-X
(Loper et al. 2015; Pavlakos et al. 2019) go through the ``smplx`` package from the user's model
file, read by :func:`load_smpl_file`, which never imports chumpy.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from addon.wire.schema import PipelineError

from .keypoints import COMMON

log = logging.getLogger(__name__)

ANNY_FREE = ("root", "upperleg01.L", "lowerleg01.L", "foot.L", "upperleg01.R", "lowerleg01.R",
             "foot.R", "spine04", "spine02", "neck01", "head", "upperarm01.L", "lowerarm01.L",
             "upperarm01.R", "lowerarm01.R")
ANNY_KNEES = ("lowerleg01.L", "lowerleg01.R")
SMPL_NAMES = ("pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
              "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
              "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hand", "right_hand")
SMPL_FREE = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 16, 17, 18, 19)
#: common keypoint -> SMPL joint index (body points) or smplx vertex_ids key (face and feet).
SMPL_KEYPOINTS = {
    "nose": "nose", "left_eye": "leye", "right_eye": "reye", "left_ear": "lear", "right_ear": "rear",
    "left_shoulder": 16, "right_shoulder": 17, "left_elbow": 18, "right_elbow": 19,
    "left_wrist": 20, "right_wrist": 21, "left_hip": 1, "right_hip": 2, "left_knee": 4,
    "right_knee": 5, "left_ankle": 7, "right_ankle": 8, "left_big_toe": "LBigToe",
    "right_big_toe": "RBigToe", "left_small_toe": "LSmallToe", "right_small_toe": "RSmallToe",
    "left_heel": "LHeel", "right_heel": "RHeel",
}


@dataclass
class Rest:
    """A body at rest for one shape, in the body frame (Z up, metres, feet on Z = 0).

    Attributes:
        joints: rest joint positions. [J, 3]
        anchor_weight: weight of each common keypoint on each joint. [23, J]
        anchor_offset: rest offset of each keypoint from each joint. [23, J, 3]
        vertices: rest mesh vertices, or None. [V, 3]
    """

    joints: "torch.Tensor"
    anchor_weight: "torch.Tensor"
    anchor_offset: "torch.Tensor"
    vertices: "torch.Tensor | None" = None


@dataclass
class Body:
    """A body model reduced for fitting.

    Attributes:
        model: "anny", "smpl" or "smplx".
        names: joint names. [J]
        parents: parent per joint, -1 for the root. [J]
        free: joints the fit rotates (index 0 is the root).
        knees: joints bending about +X only (knee hinges).
        shape_init: initial shape parameters. [S]
        shape_bounds: (low, high) of each shape parameter, or None for unbounded. [S] each
        shape_labels: names of the shape parameters. [S]
        rest: ``rest(shape [S], full=False) -> Rest``, differentiable; ``full`` adds the
            rest mesh vertices (the fit does without them).
        faces: mesh faces for the output mesh, or None. [F, 3]
        skin_index: influencing joints per vertex. [V, I]
        skin_weight: their weights. [V, I]
        to_body_params: ``(rotations [T,J,3,3] local with the root's in the world,
            root_translation [T,3] world, shape [S]) -> dict``: the model's own parameters
            (the Motion map's ``body``).
        feet: the left and right foot (ankle) joints, whose frames are flat at rest.
    """

    model: str
    names: list
    parents: list
    free: list
    knees: list
    shape_init: np.ndarray
    shape_bounds: tuple | None
    shape_labels: list
    rest: Callable
    faces: np.ndarray | None = None
    skin_index: np.ndarray | None = None
    skin_weight: np.ndarray | None = None
    to_body_params: Callable | None = field(default=None, repr=False)
    feet: list = field(default_factory=list)


def _anchors_from_vertices(pairs_k, pairs_v, pairs_w, vertices, joints, bone_index, bone_weight, k_count):
    """Anchors of keypoints regressed from skinned vertices (exact under LBS).

    Args:
        pairs_k, pairs_v, pairs_w: keypoint index, vertex index and regression weight of every
            nonzero regressor entry. [P] each
        vertices: rest vertices. [V, 3]
        joints: rest joints. [J, 3]
        bone_index, bone_weight: skin weights. [V, I] each

    Returns:
        (anchor_weight [K, J], anchor_offset [K, J, 3]).
    """
    import torch

    j_count = joints.shape[0]
    b = bone_index[pairs_v]                                  # [P, I]
    w = pairs_w[:, None] * bone_weight[pairs_v]              # [P, I]
    rel = vertices[pairs_v][:, None, :] - joints[b]          # [P, I, 3]
    flat = (pairs_k[:, None] * j_count + b).reshape(-1)
    weight = torch.zeros(k_count * j_count, dtype=vertices.dtype).index_add(0, flat, w.reshape(-1))
    moment = torch.zeros(k_count * j_count, 3, dtype=vertices.dtype).index_add(
        0, flat, (w[..., None] * rel).reshape(-1, 3))
    offset = moment / weight.clamp_min(1e-12)[:, None]
    return weight.reshape(k_count, j_count), offset.reshape(k_count, j_count, 3)


# ---------------------------------------------------------------------------------------------
# Anny
# ---------------------------------------------------------------------------------------------

def load_anny(device: str = "cpu") -> Body:
    """The Anny body from its wheel (rig "anny", topology "anny": 104 joints, 13718 vertices).

    The first instantiation on a machine parses the MakeHuman assets (about 2 minutes on one
    CPU core) and caches them under ``$ANNY_CACHE_DIR`` (default ~/.cache/anny); later ones
    take about a second.
    """
    import anny
    import torch
    from anny.keypoints import KeypointsRegressor
    from anny.skinning import skinning

    model = anny.Anny(rig="anny", topology="anny").to(dtype=torch.float32)
    names = list(model.bone_labels)
    parents = [int(p) for p in model.bone_parents]
    regressor = KeypointsRegressor.coco(model, labels=list(COMMON)).regression_weights.detach()
    pairs_k, pairs_v = torch.nonzero(regressor > 0, as_tuple=True)
    pairs_w = regressor[pairs_k, pairs_v]
    bone_index = model.vertex_bone_indices.long()
    bone_weight = model.vertex_bone_weights.float()
    labels = list(model.phenotype_labels)
    # The fit needs only the regressor's vertices and the soles (for the floor): blending
    # that subset instead of all 13718 vertices makes a shape update several times cheaper.
    lowest = torch.argsort(model.template_vertices[:, 2])[:300]
    subset, inverse = torch.unique(torch.cat([pairs_v, lowest]), return_inverse=True)
    sub_pairs_v = inverse[: len(pairs_v)]
    sub_template = model.template_vertices[subset].detach()
    sub_blendshapes = model.blendshapes[:, subset].detach()

    def rest(shape, full: bool = False):
        coeffs = model.get_phenotype_blendshape_coefficients(
            **{label: shape[None, i] for i, label in enumerate(labels)})
        if full:
            vertices = model.get_rest_vertices(coeffs)[0]
        else:
            vertices = skinning.apply_linear_blendshape(sub_template, sub_blendshapes, coeffs)[0]
        heads = skinning.apply_linear_blendshape(model.template_bone_heads,
                                                 model.bone_heads_blendshapes, coeffs)[0]
        floor = vertices[:, 2].min()
        shift = torch.stack([torch.zeros_like(floor), torch.zeros_like(floor), floor])
        vertices, heads = vertices - shift, heads - shift
        if full:
            weight, offset = _anchors_from_vertices(pairs_k, pairs_v, pairs_w, vertices, heads,
                                                    bone_index, bone_weight, len(COMMON))
            return Rest(heads, weight, offset, vertices)
        weight, offset = _anchors_from_vertices(pairs_k, sub_pairs_v, pairs_w, vertices, heads,
                                                bone_index[subset], bone_weight[subset], len(COMMON))
        return Rest(heads, weight, offset, None)

    def to_body_params(rotations, root_translation, shape):
        return {"model": "anny",
                "phenotype_labels": labels,
                "phenotype": np.asarray(shape, np.float32)}

    return Body(
        model="anny", names=names, parents=parents,
        free=[names.index(n) for n in ANNY_FREE], knees=[names.index(n) for n in ANNY_KNEES],
        shape_init=np.full(len(labels), 0.5, np.float32), shape_bounds=(0.0, 1.0),
        shape_labels=labels, rest=rest,
        faces=model.get_triangular_faces().cpu().numpy().astype(np.int32),
        skin_index=bone_index.cpu().numpy().astype(np.int32),
        skin_weight=bone_weight.cpu().numpy().astype(np.float32),
        to_body_params=to_body_params, feet=[names.index("foot.L"), names.index("foot.R")],
    )


# ---------------------------------------------------------------------------------------------
# SMPL / SMPL-X from the user's files
# ---------------------------------------------------------------------------------------------

class _ChumpyFree(pickle.Unpickler):
    """Unpickles the official SMPL pickles without chumpy: a chumpy array becomes a numpy one.

    The official files store some arrays as ``chumpy.ch.Ch`` objects whose state holds the
    numpy value under ``x``; scipy sparse matrices (J_regressor) are allowed as they are. Any
    other class is refused, so a pickle cannot run code.
    """

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("scipy.sparse.csc", "csc_matrix"),
                ("scipy.sparse._csc", "csc_matrix"), ("scipy.sparse.csr", "csr_matrix"),
                ("scipy.sparse._csr", "csr_matrix"), ("builtins", "object"), ("copy_reg", "_reconstructor"),
                ("copyreg", "_reconstructor"), ("__builtin__", "object"),
                ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 wrap bytes so

    def find_class(self, module, name):
        if module.startswith("chumpy"):
            return _ChArray
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an SMPL file")


class _ChArray:
    """Stand-in for chumpy's Ch: keeps the state so the value can be read back."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"x": state})


def _plain(value):
    if isinstance(value, _ChArray):
        return np.asarray(value.__dict__.get("x"))
    return value


def load_smpl_file(path: Path) -> dict:
    """Read an SMPL-family model file (.pkl official pickle, or .npz) into plain arrays.

    Raises:
        PipelineError: ``unavailable`` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError("unavailable", f"body model file not found: {path} (the SMPL files "
                            "come from https://smpl.is.tue.mpg.de after accepting its licence)",
                            "params.body")
    try:
        if path.suffix == ".npz":
            out = {}
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    try:
                        out[key] = data[key]
                    except ValueError:
                        # Pickled object arrays (the official SMPL-X files' joint2num/part2num
                        # dicts) are never unpickled; the body needs none of them.
                        log.debug("%s: skipping the pickled entry %r", path, key)
            return out
        with open(path, "rb") as handle:
            raw = _ChumpyFree(io.BytesIO(handle.read()), encoding="latin1").load()
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as error:
        raise PipelineError("unavailable", f"body model file {path} could not be read: {error}",
                            "params.body") from None
    return {k: _plain(v) for k, v in raw.items()}


def read_smpl_model(path: Path) -> dict:
    """:func:`load_smpl_file`, checked to hold an SMPL-family model, with a dense J_regressor.

    Raises:
        PipelineError: ``unavailable`` naming the file and the first missing array.
    """
    data = load_smpl_file(path)
    for key in ("v_template", "shapedirs", "J_regressor", "weights", "kintree_table", "f"):
        if key not in data:
            raise PipelineError("unavailable", f"body model file {path} has no {key!r}: not an "
                                "SMPL-family model", "params.body")
    if hasattr(data["J_regressor"], "toarray"):
        data["J_regressor"] = data["J_regressor"].toarray()
    return data


def smplx_layer(path: Path, data: dict, **kwargs):
    """An ``smplx.SMPLX`` layer built from the arrays already read from the user's ``path``.

    smplx.SMPLX reads its file itself (``np.load(allow_pickle=True)``) and takes no data_struct:
    it gets the arrays rewritten as a plain .npz, so nothing of the user's file is unpickled. It
    picks smplx's own vertex_ids (passing them again is a TypeError); callers keep theirs.

    Raises:
        PipelineError: ``unavailable`` naming the file when smplx cannot build the model.
    """
    import tempfile

    import smplx

    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / "SMPLX_NEUTRAL.npz"
        np.savez(plain, **{k: np.asarray(v) for k, v in data.items() if np.asarray(v).dtype != object})
        try:
            return smplx.SMPLX(model_path=str(plain), ext="npz", **kwargs)
        except (KeyError, AttributeError, ValueError, RuntimeError, TypeError) as error:
            raise PipelineError("unavailable", f"body model file {path} is not an SMPL-X model "
                                f"smplx can read: {error!r}", "params.body") from None


def load_smpl(path: Path, kind: str = "smpl", vertex_ids: dict | None = None) -> Body:
    """SMPL or SMPL-X through the ``smplx`` package from the user's model file.

    Args:
        path: SMPL_*.pkl / SMPLX_*.npz|pkl.
        kind: "smpl" or "smplx".
        vertex_ids: smplx's named vertices (nose, eyes, ears, toes, heels); default: smplx's
            table for the official topology.
    """
    import smplx
    import torch
    from smplx.utils import Struct
    from smplx.vertex_ids import vertex_ids as official_ids

    data = read_smpl_model(path)
    ids = vertex_ids or official_ids["smplh" if kind == "smpl" else "smplx"]
    num_betas = min(10, np.asarray(data["shapedirs"]).shape[-1])
    if kind == "smpl":
        data.setdefault("posedirs", np.zeros((*np.shape(data["v_template"]), 207), np.float32))
        layer = smplx.SMPL(model_path=str(path), data_struct=Struct(**data), vertex_ids=ids,
                           num_betas=num_betas)
    else:
        layer = smplx_layer(path, data, num_betas=num_betas, use_pca=False)
    j_count = int(layer.J_regressor.shape[0])
    parents = [int(p) for p in layer.parents]
    parents[0] = -1
    names = list(SMPL_NAMES[:22]) + [f"joint{j}" for j in range(22, j_count)] if j_count != 24 else list(SMPL_NAMES)
    # SMPL's frame is Y up facing +Z; the body frame is Z up facing -Y: a +90 degree turn about X.
    to_body = torch.tensor([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    v_template = layer.v_template.detach().float()
    shapedirs = layer.shapedirs.detach().float()
    j_regressor = layer.J_regressor.detach().float()
    weights = layer.lbs_weights.detach().float()
    top = min(4, weights.shape[1])
    skin_weight, skin_index = weights.topk(top, dim=1)
    skin_weight = skin_weight / skin_weight.sum(1, keepdim=True)
    k_rows, v_rows, w_rows = [], [], []
    joint_keypoints = {}
    for k, name in enumerate(COMMON):
        source = SMPL_KEYPOINTS[name]
        if isinstance(source, int):
            joint_keypoints[k] = source
        else:
            k_rows.append(k), v_rows.append(int(ids[source])), w_rows.append(1.0)
    pairs_k, pairs_v, pairs_w = torch.tensor(k_rows), torch.tensor(v_rows), torch.tensor(w_rows)

    def rest(shape, full: bool = False):
        v = v_template + torch.einsum("vcb,b->vc", shapedirs[..., :shape.shape[0]], shape)
        joints = j_regressor @ v
        v, joints = v @ to_body.T, joints @ to_body.T
        floor = v[:, 2].min()
        shift = torch.stack([torch.zeros_like(floor), torch.zeros_like(floor), floor])
        v, joints = v - shift, joints - shift
        weight, offset = _anchors_from_vertices(pairs_k, pairs_v, pairs_w, v, joints,
                                                skin_index, skin_weight, len(COMMON))
        for k, j in joint_keypoints.items():
            weight = weight.index_put((torch.tensor([k]),), torch.nn.functional.one_hot(
                torch.tensor([j]), j_count).float())
            offset = offset.index_put((torch.tensor([k]),), torch.zeros(1, j_count, 3))
        return Rest(joints, weight, offset, v)

    def to_body_params(rotations, root_translation, shape):
        """SMPL's own parameters in SMPL's Y-up world, which ``world_from_body`` (the turn C
        from Y up to Z up) maps into Blender's: ``R_smpl = C^T R C`` for every rotation."""
        from nskernels.rotations import matrix_to_axis_angle

        c = to_body.to(rotations.dtype)
        axis = matrix_to_axis_angle(c.T @ rotations @ c)      # [T, J, 3]
        rest_v = v_template + torch.einsum("vcb,b->vc", shapedirs[..., :shape.shape[0]], shape)
        pelvis = (j_regressor @ rest_v)[0]                    # SMPL frame, unshifted
        world_from_body = np.eye(4, dtype=np.float32)
        world_from_body[:3, :3] = c.numpy()
        last = 22 if kind == "smplx" else 24
        return {
            "model": kind,
            "betas": np.asarray(shape, np.float32),
            "global_orient": axis[:, 0].numpy().astype(np.float32),
            "body_pose": axis[:, 1:last].reshape(len(axis), -1).numpy().astype(np.float32),
            "transl": (root_translation @ c - pelvis).numpy().astype(np.float32),
            "world_from_body": world_from_body,
        }

    return Body(
        model=kind, names=names, parents=parents, free=list(SMPL_FREE), knees=[4, 5],
        shape_init=np.zeros(num_betas, np.float32), shape_bounds=None,
        shape_labels=[f"beta{i}" for i in range(num_betas)], rest=rest,
        faces=None, skin_index=skin_index.numpy().astype(np.int32),
        skin_weight=skin_weight.numpy().astype(np.float32), to_body_params=to_body_params,
        feet=[7, 8],
    )
