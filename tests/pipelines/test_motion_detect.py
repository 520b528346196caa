"""Decode (PyAV) and detect (MediaPipe Pose from its wheel) on real images."""

from __future__ import annotations

import numpy as np
import pytest

from addon.wire.schema import PipelineError
from pipelines.motion import decode
from pipelines.motion.detect import PoseDetector, common_from_mediapipe, draw_keypoints
from pipelines.motion.keypoints import INDEX


def test_landmarks_land_on_the_astronaut():
    """scikit-image's astronaut (Eileen Collins, 512x512, NASA): her face is in the upper
    middle of the photo, her shoulders below it across the frame, her left shoulder on the
    image's right (she faces the camera)."""
    from skimage import data

    image = data.astronaut()
    detector = PoseDetector()
    try:
        kp, world = detector(image)
    finally:
        detector.close()
    common, dirs = common_from_mediapipe(kp[None], world[None])
    c = common[0]
    for name in ("nose", "left_eye", "right_eye"):
        x, y, conf = c[INDEX[name]]
        assert conf > 0.8, name
        assert 150 < x < 300 and 60 < y < 170, (name, x, y)        # the face
    ls, rs = c[INDEX["left_shoulder"]], c[INDEX["right_shoulder"]]
    assert ls[2] > 0.8 and rs[2] > 0.8
    assert ls[0] > rs[0] + 100                                      # facing the camera, shoulders apart
    assert 180 < ls[1] < 330 and 180 < rs[1] < 330                  # below the face
    assert ls[1] > c[INDEX["nose"], 1] + 50
    # Metric world landmarks: shoulder width of an adult, hips at the origin.
    width = np.linalg.norm(dirs[0, INDEX["left_shoulder"], :3] - dirs[0, INDEX["right_shoulder"], :3])
    assert 0.2 < width < 0.5
    hips = (dirs[0, INDEX["left_hip"], :3] + dirs[0, INDEX["right_hip"], :3]) / 2
    assert np.linalg.norm(hips) < 0.05
    preview = draw_keypoints(image, kp)
    assert preview.shape == image.shape and (preview != image).any()


def test_no_person_gives_zero_confidence():
    detector = PoseDetector()
    try:
        kp, world = detector(np.full((96, 128, 3), 90, np.uint8))
    finally:
        detector.close()
    assert (kp[:, 2] == 0).all() and (world == 0).all()


def _video(frames, rotation=None):
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def _frames(count=6, h=48, w=64):
    frames = np.zeros((count, h, w, 3), np.uint8)
    frames[:, :h // 2, :w // 4] = 255      # a white block at the top left
    for i in range(count):
        frames[i, -4:, : (i + 1) * 4] = 200
    return frames


def test_decode_streams_frames_with_start_end():
    data = _video(_frames())
    source, frames = decode.open_video(data, 2, 5)
    out = list(frames)
    assert source.fps == pytest.approx(24.0)
    assert len(out) == 3 and out[0].shape == (48, 64, 3) and out[0].dtype == np.uint8
    assert out[0][5, 5].mean() > 200 and out[0][40, 60].mean() < 60


def test_decode_honours_rotation_metadata():
    data = _video(_frames(), rotation=90)
    _, frames = decode.open_video(data, 0, None)
    first = next(iter(frames))
    # A 64x48 landscape clip flagged as rotated by 90 degrees displays as 48x64 portrait.
    assert first.shape == (64, 48, 3)
    # The display matrix says 90 degrees counter-clockwise (ffmpeg's autorotate turns the same
    # way): the white block stored at the top left (rows 0-23, columns 0-15) shows at the
    # bottom left (rows 48-63, columns 0-23).
    rows, cols = np.nonzero(first.mean(-1) > 200)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (48, 63, 0, 23)


def test_undecodable_video_is_a_clear_error():
    with pytest.raises(PipelineError) as error:
        decode.open_video(np.frombuffer(b"this is not a video file" * 40, np.uint8), 0, None)
    assert error.value.code == "invalid_input" and error.value.field == "inputs.video"
