"""2D keypoints and metric 3D landmarks per frame: MediaPipe Pose (BlazePose, Bazarevsky et al.
2020), the model inside the ``mediapipe==0.10.21`` wheel.

``model_complexity=1`` uses ``pose_landmark_full.tflite``, shipped in the wheel; 0 and 2 would
download their models, so they are never used. MediaPipe's video mode tracks one person from
frame to frame (its detector runs only when the track is lost), which keeps the chosen person;
a frame without a person gets confidence 0 and is filled by the fit.
"""

from __future__ import annotations

import logging

import numpy as np

from .keypoints import to_common

log = logging.getLogger(__name__)


class PoseDetector:
    """MediaPipe Pose in video mode (tracking the person across frames).

    Args:
        min_confidence: detection and tracking confidence thresholds (default 0.5).
    """

    def __init__(self, min_confidence: float = 0.5):
        import mediapipe as mp

        self._pose = mp.solutions.pose.Pose(
            static_image_mode=False, model_complexity=1, smooth_landmarks=True,
            enable_segmentation=False, min_detection_confidence=min_confidence,
            min_tracking_confidence=min_confidence)

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detect in one frame.

        Args:
            rgb: the frame, sRGB uint8, row 0 at the top. [H, W, 3]

        Returns:
            (keypoints2d [33, 3]: x, y pixels and visibility, zeros if no person;
             world [33, 4]: metric hip-centred landmarks in camera-aligned axes (x right,
             y down, z away from the camera) and visibility).
        """
        h, w = rgb.shape[:2]
        result = self._pose.process(np.ascontiguousarray(rgb))
        kp = np.zeros((33, 3), np.float32)
        world = np.zeros((33, 4), np.float32)
        if result.pose_landmarks is None:
            return kp, world
        for i, lm in enumerate(result.pose_landmarks.landmark):
            kp[i] = (lm.x * w, lm.y * h, lm.visibility)
        if result.pose_world_landmarks is not None:
            for i, lm in enumerate(result.pose_world_landmarks.landmark):
                world[i] = (lm.x, lm.y, lm.z, lm.visibility)
        return kp, world

    def close(self) -> None:
        self._pose.close()


def common_from_mediapipe(keypoints: np.ndarray, world: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """MediaPipe's 33 points [T, 33, 3] (and world [T, 33, 4]) in the common set of 23."""
    kp = to_common(keypoints, "mediapipe33", "keypoints2d")
    dirs = None if world is None else to_common(world, "mediapipe33", "world landmarks")
    return kp, dirs


def draw_keypoints(rgb: np.ndarray, keypoints: np.ndarray, radius: int = 3) -> np.ndarray:
    """The frame with keypoints drawn as green squares (a progress preview).

    Args:
        rgb: [H, W, 3] uint8.
        keypoints: x, y pixels and confidence. [K, 3]
    """
    out = np.array(rgb, np.uint8, copy=True)
    h, w = out.shape[:2]
    for x, y, c in keypoints:
        if c <= 0.1:
            continue
        xi, yi = int(x), int(y)
        out[max(0, yi - radius):min(h, yi + radius + 1), max(0, xi - radius):min(w, xi + radius + 1)] = (40, 255, 40)
    return out
