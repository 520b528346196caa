"""Frames of the request, streamed: an encoded video (PyAV) or the client's ``frames``.

Frames are yielded one at a time as RGB uint8 [H, W, 3] with the container's rotation applied
(phones record portrait clips as landscape plus a display rotation), so a clip is never held
decoded in memory.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from addon.wire.schema import PipelineError

log = logging.getLogger(__name__)


@dataclass
class Source:
    """What the decoder knows before the first frame.

    Attributes:
        fps: frames per second.
        count: number of frames in [start, end) where known, else None.
        width, height: displayed frame size (after rotation) where known, else 0.
    """

    fps: float
    count: int | None
    width: int
    height: int


def _rotate(rgb: np.ndarray, degrees: int) -> np.ndarray:
    """Apply a display rotation (counter-clockwise degrees, as PyAV reports it)."""
    turns = (int(round(degrees / 90.0)) % 4)
    return np.ascontiguousarray(np.rot90(rgb, k=turns)) if turns else rgb


def open_video(data: np.ndarray, start: int, end: int | None) -> tuple[Source, Iterator[np.ndarray]]:
    """Open encoded video bytes.

    Args:
        data: the file's bytes. [B] uint8
        start: first frame to yield.
        end: frame to stop before (None: to the end).

    Returns:
        (source, frames): frames yields RGB uint8 [H, W, 3] with rotation applied.

    Raises:
        PipelineError: ``invalid_input`` naming ``inputs.video`` when it cannot be decoded or
            has no video stream.
    """
    import av

    try:
        container = av.open(io.BytesIO(np.ascontiguousarray(data).tobytes()), mode="r")
    except (av.FFmpegError, ValueError, OSError) as error:
        raise PipelineError("invalid_input", f"inputs.video: not a decodable video file ({error})",
                            "inputs.video") from None
    if not container.streams.video:
        container.close()
        raise PipelineError("invalid_input", "inputs.video: the file has no video stream",
                            "inputs.video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or 30
    fps = float(rate)
    total = stream.frames or None
    count = None if total is None else max(0, (min(total, end) if end is not None else total) - start)
    source = Source(fps, count, 0, 0)

    def frames() -> Iterator[np.ndarray]:
        index = 0
        try:
            for frame in container.decode(stream):
                if end is not None and index >= end:
                    break
                if index >= start:
                    rgb = frame.to_ndarray(format="rgb24")
                    yield _rotate(rgb, int(getattr(frame, "rotation", 0) or 0))
                index += 1
        except av.FFmpegError as error:
            raise PipelineError("invalid_input", f"inputs.video: decoding failed at frame "
                                f"{index} ({error})", "inputs.video") from None
        finally:
            container.close()

    return source, frames()


def open_frames(frames: np.ndarray, fps: float, start: int, end: int | None) -> tuple[Source, Iterator[np.ndarray]]:
    """The client's frames [T, H, W, 3] uint8 as the same kind of stream."""
    stop = frames.shape[0] if end is None else min(end, frames.shape[0])
    source = Source(float(fps), max(0, stop - start), frames.shape[2], frames.shape[1])
    return source, (np.ascontiguousarray(frames[i]) for i in range(start, stop))


def encode_video(frames: np.ndarray, fps: float = 30.0, codec: str = "libx264") -> bytes:
    """Encode RGB uint8 frames [T, H, W, 3] to an mp4 in memory (tests, demo)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
