"""`motion.from_params`: SMPL-family parameters (an AMASS .npz's) -> a Motion map, exactly.

The add-on's AMASS import sends the parameters it read from the file; the server evaluates them
with the user's SMPL / SMPL-H / SMPL-X file through the ``smplx`` package (smpl_params.py) and
answers the same Motion map `motion.recover` does (no camera): the model's skeleton with its
shaped rest pose, local rotations, root translation, smplx's joints, COCO-17 keypoints, foot
contacts, the body parameters and the skinned rest mesh, in Blender's world.

A pipeline of its own rather than more inputs of `motion.recover`: recover's inputs are "exactly
one of video, frames or keypoints2d" and its run is detection and fitting; parameters need
neither, finish in a fraction of a second and have their own checks and body choice (the
family comes from the file, the default name from ``gender`` and ``model``).

Inputs: ``poses (T,3n)`` or ``root_orient (T,3)`` + ``pose_body (T,63)`` (+ ``pose_hand``,
``pose_jaw``, ``pose_eye``), ``trans (T,3)``, optional ``betas (B,)``.
Params: ``body`` (a name in the models folder, e.g. "smplh-male", or a server-side file path;
default ``model`` + ``gender``), ``gender``, ``model``, ``fps``, ``up`` ("z": AMASS's Z-up world,
the default; "y": SMPL's own Y-up world).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from addon.wire.contracts import FLOAT, MOTION_FIELDS
from addon.wire.schema import Array, PipelineError

from ..base import Job, ModelSource, ModelSpec, Pipeline

log = logging.getLogger(__name__)

GENDERS = ("neutral", "male", "female")
FAMILIES = ("smpl", "smplh", "smplx")
#: world_from_smpl per params.up.
UP = {"z": np.eye(3), "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])}


def default_body(model: str, gender: str) -> str:
    """The model name asked for when params.body is unset: "smplh-male", or "smplh" for neutral."""
    return model if gender == "neutral" else f"{model}-{gender}"


@dataclass
class Params:
    """Settings of `motion.from_params`.

    Attributes:
        body: the body model file: a name in the server's models folder (``nstudio models add
            smplh-male /path/SMPLH_MALE.pkl``) or a server-side path; default ``model`` and
            ``gender`` ("smplh-male"; "smplh" for neutral).
        gender: "neutral", "male" or "female" (AMASS's ``gender``).
        model: the family of the parameters: "smpl", "smplh" (AMASS's, the default) or "smplx".
        fps: frames per second (AMASS's ``mocap_framerate``).
        up: the parameters' world: "z" (AMASS, Blender: as is) or "y" (SMPL's Y-up world,
            turned +90 degrees about X into Blender's).
    """

    body: str = field(default="", metadata={"doc": "body model name or server-side file path (default: model-gender)"})
    gender: str = field(default="neutral", metadata={"doc": "neutral, male or female", "choices": GENDERS})
    model: str = field(default="smplh", metadata={"doc": "parameter family", "choices": FAMILIES})
    fps: float = field(default=30.0, metadata={"doc": "frames per second", "min": 0.001, "max": 1000.0})
    up: str = field(default="z", metadata={"doc": "the parameters' up axis: z (AMASS) or y (SMPL's own)", "choices": tuple(UP)})

    def __post_init__(self):
        if not self.body.strip():
            self.body = default_body(self.model, self.gender)


INPUTS = {
    "poses": Array(FLOAT, ("T", None), "axis-angle per joint in SMPL order (AMASS's poses). [T, 3n]", optional=True),
    "root_orient": Array(FLOAT, ("T", 3), "root axis-angle (AMASS SMPL-X split). [T, 3]", optional=True),
    "pose_body": Array(FLOAT, ("T", 63), "21 body joints' axis-angle. [T, 63]", optional=True),
    "pose_hand": Array(FLOAT, ("T", 90), "30 hand joints' axis-angle. [T, 90]", optional=True),
    "pose_jaw": Array(FLOAT, ("T", 3), "jaw axis-angle (SMPL-X). [T, 3]", optional=True),
    "pose_eye": Array(FLOAT, ("T", 6), "eyes' axis-angle (SMPL-X). [T, 6]", optional=True),
    "trans": Array(FLOAT, ("T", 3), "translation in the parameters' world, metres. [T, 3]"),
    "betas": Array(FLOAT, (None,), "shape coefficients. [B]", optional=True),
}
OUTPUTS = dict(MOTION_FIELDS)


def load_body(source: ModelSource, device: str):
    """ModelSpec loader: the SMPL-family file the registry found."""
    from . import smpl_params

    if source.path is None:
        raise PipelineError("unavailable", f"body {source.ref!r}: no model file", "params.body")
    return smpl_params.load_model(Path(source.path), device)


MODELS = (
    ModelSpec("body", "smplh", load_body, param="body", kinds=("file", "models-dir"),
              doc="the user's SMPL / SMPL-H / SMPL-X file (name in the models folder or a path)"),
)


def run(inputs: dict, params: Params, job: Job, models: Mapping) -> dict:
    """Evaluate the parameters with the body model; progress per chunk of frames."""
    from . import smpl_params

    model = models["body"]
    values = smpl_params.parameters(inputs, model, params.fps)
    outputs = smpl_params.evaluate(model, values, UP[params.up], job)
    log.info("motion.from_params: %d frames on %s (%s)", len(values.pose), model.path.name, model.kind)
    return outputs


def _check(inputs: dict, params: Params) -> None:
    if "poses" not in inputs and not ("root_orient" in inputs and "pose_body" in inputs):
        raise PipelineError("invalid_input", "inputs: give poses (T, 3n), or root_orient and "
                            "pose_body", "inputs.poses")


def probe() -> tuple[bool, str]:
    """Available where torch and smplx are installed (imports neither)."""
    import importlib.util

    for module in ("torch", "smplx"):
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed in the server's environment (pip install '.[server]')"
    return True, ""


PIPELINE = Pipeline(
    name="motion.from_params",
    summary="SMPL / SMPL-H / SMPL-X parameters (AMASS) -> body motion in Blender's world, with the user's model file",
    params=Params,
    inputs=INPUTS,
    outputs=OUTPUTS,
    run=run,
    probe=probe,
    check=_check,
    models=MODELS,
)
