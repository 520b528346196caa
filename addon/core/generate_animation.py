"""img2img over a rendered animation, frame by frame (bpy-free bookkeeping).

One ``image.generate`` job per frame, one at a time, every frame with the same seed and
settings (a fixed seed keeps the noise the same from frame to frame, so only the source
changes). The Blender layer (``addon/blender/generate_animation.py``) reads or renders each
frame and writes the results as an image sequence; this module keeps the run's state: which
frame is next, progress, cancel, and the job target tag that routes a result to its frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

#: Job targets of animation frames: ``"nstudio-anim:<run>:<frame>"``.
TARGET_PREFIX = "nstudio-anim:"


def frame_target(run_id: str, frame: int) -> str:
    return f"{TARGET_PREFIX}{run_id}:{int(frame)}"


def parse_target(target: str) -> Optional[tuple[str, int]]:
    """(run id, frame) of an animation job's target, None for any other target."""
    if not target.startswith(TARGET_PREFIX):
        return None
    run_id, _, frame = target[len(TARGET_PREFIX):].rpartition(":")
    try:
        return run_id, int(frame)
    except ValueError:
        return None


def frame_path(folder: str, frame: int, prefix: str = "generated_") -> str:
    """The output file of one frame: ``<folder>/<prefix><frame, 4 digits>.png``."""
    return os.path.join(folder, f"{prefix}{int(frame):04d}.png")


def frame_range(start: int, end: int, step: int = 1) -> list[int]:
    """The scene's frames, as Render Animation renders them.

    Raises:
        ValueError: an empty range or a step below 1.
    """
    if step < 1:
        raise ValueError(f"frame step must be at least 1, got {step}")
    if end < start:
        raise ValueError(f"the frame range {start}..{end} is empty")
    return list(range(int(start), int(end) + 1, int(step)))


@dataclass
class AnimationRun:
    """One img2img pass over a frame range.

    Attributes:
        run_id: tags this run's job targets.
        frames: the frames to generate, in order.
        folder: where the image sequence is written.
        done: frames written so far.
        current: the frame whose job is in flight, None between jobs.
        job_key: that job's key in the job manager.
        state: "running", "done", "failed" or "cancelled".
        message: why it failed or was cancelled.
        scene: the name of the scene the run renders.
    """

    run_id: str
    frames: list[int]
    folder: str
    scene: str = ""
    done: list[int] = field(default_factory=list)
    current: Optional[int] = None
    job_key: str = ""
    state: str = "running"
    message: str = ""

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def progress(self) -> tuple[int, int]:
        """(frames written, frames in the run)."""
        return len(self.done), len(self.frames)

    def next_frame(self) -> Optional[int]:
        """The next frame to submit, None when a job is in flight or none are left (then the
        run is done)."""
        if self.finished or self.current is not None:
            return None
        left = [f for f in self.frames if f not in self.done]
        if not left:
            self.state = "done"
            return None
        return left[0]

    def submitted(self, frame: int, job_key: str) -> None:
        self.current, self.job_key = frame, job_key

    def frame_written(self, frame: int) -> None:
        if frame not in self.done:
            self.done.append(frame)
        if self.current == frame:
            self.current, self.job_key = None, ""
        if len(self.done) == len(self.frames) and self.state == "running":
            self.state = "done"

    def fail(self, message: str) -> None:
        if not self.finished:
            self.state, self.message = "failed", message
        self.current, self.job_key = None, ""

    def cancel(self) -> None:
        if not self.finished:
            self.state, self.message = "cancelled", "cancelled"

    def job_ended(self, state: str, message: str = "") -> None:
        """The in-flight job ended without a written frame (failed or cancelled on the server)."""
        if state == "cancelled":
            self.cancel()
            self.current, self.job_key = None, ""
        else:
            self.fail(f"frame {self.current}: {message or state}")
