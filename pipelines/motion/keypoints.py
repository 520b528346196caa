"""The common keypoint set the fit works in, and the maps from detector formats into it.

The common set is COCO-WholeBody's body and feet (23 points): COCO-17 in COCO's order, then big
toe, small toe and heel per foot, the labels of Anny's keypoint regressor. Client keypoints in
``coco17``, ``mediapipe33``, ``halpe26`` or ``openpose25`` are mapped into it; points a format
lacks get confidence 0.
"""

from __future__ import annotations

import numpy as np

from addon.wire.schema import PipelineError

COMMON = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle", "left_big_toe", "right_big_toe",
    "left_small_toe", "right_small_toe", "left_heel", "right_heel",
)
INDEX = {name: i for i, name in enumerate(COMMON)}
COCO17 = tuple(range(17))
#: The four foot contact points of the Motion map's ``contacts``: left heel, left toe, right heel, right toe.
CONTACT_POINTS = (INDEX["left_heel"], INDEX["left_big_toe"], INDEX["right_heel"], INDEX["right_big_toe"])

#: format -> (number of points K, {common index: source index}).
FORMATS: dict[str, tuple[int, dict[int, int]]] = {
    "coco17": (17, {i: i for i in range(17)}),
    "halpe26": (26, {**{i: i for i in range(17)}, 17: 20, 18: 21, 19: 22, 20: 23, 21: 24, 22: 25}),
    "mediapipe33": (33, {0: 0, 1: 2, 2: 5, 3: 7, 4: 8, 5: 11, 6: 12, 7: 13, 8: 14, 9: 15, 10: 16,
                         11: 23, 12: 24, 13: 25, 14: 26, 15: 27, 16: 28, 17: 31, 18: 32, 21: 29, 22: 30}),
    "openpose25": (25, {0: 0, 1: 16, 2: 15, 3: 18, 4: 17, 5: 5, 6: 2, 7: 6, 8: 3, 9: 7, 10: 4,
                        11: 12, 12: 9, 13: 13, 14: 10, 15: 14, 16: 11, 17: 19, 18: 22, 19: 20,
                        20: 23, 21: 21, 22: 24}),
}

#: Limb bones (pairs of common points) whose directions the detector's 3D landmarks constrain.
#: Not the feet: MediaPipe's heel and foot-index world landmarks point the foot 20-80 degrees
#: off on clips Blender rendered (bench_motion_rendered, median per clip), its limbs 8-19; with
#: the feet left to the 2D keypoints, PA-MPJPE 49.4 -> 47.5 mm, WA-MPJPE 83.0 -> 76.9 mm and
#: acceleration error 6.8 -> 6.2 mm/frame^2 (mean of 8 rendered clips).
BONES = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (5, 6),
         (11, 12), (5, 11), (6, 12))


def to_common(keypoints: np.ndarray, fmt: str, field: str = "inputs.keypoints2d") -> np.ndarray:
    """Map a detector's keypoints into the common set.

    Args:
        keypoints: points per frame, last axis (x, y, confidence) or (x, y, z, confidence). [T, K, C]
        fmt: one of :data:`FORMATS`.
        field: the request field named in errors.

    Returns:
        The common set, missing points zero with confidence 0. [T, 23, C]

    Raises:
        PipelineError: an unknown format, or K not that format's count.
    """
    if fmt not in FORMATS:
        raise PipelineError("invalid_params", f"params.keypoint_format: {fmt!r} is not one of "
                            f"{sorted(FORMATS)}", "params.keypoint_format")
    count, mapping = FORMATS[fmt]
    if keypoints.ndim != 3 or keypoints.shape[1] != count:
        raise PipelineError("invalid_input", f"{field}: shape {list(keypoints.shape)} does not "
                            f"match keypoint_format {fmt!r}, which has {count} points per frame "
                            f"(expected [T, {count}, 3])", field)
    out = np.zeros((keypoints.shape[0], len(COMMON), keypoints.shape[2]), np.float32)
    for dst, src in mapping.items():
        out[:, dst] = keypoints[:, src]
    return out
