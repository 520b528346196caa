"""Splitting a job by frame across workers, and putting the pieces back in frame order.

A pipeline declares :class:`pipelines.base.Frames` when its frames are independent (e.g.
``splat.render``). Piece ``k`` of ``n`` gets frames ``k, k + n, k + 2n, ...`` (strided rather
than in blocks: the pieces then finish frames in nearly the order a single worker would, so
per-frame partials can be passed on in frame order while holding back at most about one frame
per worker). Pure numpy; no Ray here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pipelines.base import Frames


def frame_count(inputs: dict, frames: Frames) -> int:
    """T, the length of the leading frame axis of ``inputs[frames.input]``; 0 when it has
    none that all its arrays agree on (then the job is not split)."""
    value = inputs.get(frames.input) if isinstance(inputs, dict) else None
    if not isinstance(value, dict):
        return 0
    lengths = {np.shape(item)[0] for item in value.values()
               if isinstance(item, np.ndarray) and item.ndim >= 2}
    return lengths.pop() if len(lengths) == 1 else 0


def split(inputs: dict, frames: Frames, pieces: int) -> list[dict]:
    """``pieces`` copies of ``inputs`` whose frame input holds every ``pieces``-th frame.

    Arrays of the frame input whose leading axis is T are sliced ``[k::pieces]``; the other
    values (scalars such as ``width``, per-frame values given once) are shared unchanged.
    """
    count = frame_count(inputs, frames)
    if pieces <= 1 or count < 2:
        return [inputs]
    pieces = min(pieces, count)
    out = []
    for k in range(pieces):
        sliced = {key: (np.ascontiguousarray(item[k::pieces])
                        if isinstance(item, np.ndarray) and item.ndim >= 1
                        and item.shape[0] == count else item)
                  for key, item in inputs[frames.input].items()}
        out.append(dict(inputs, **{frames.input: sliced}))
    return out


def job_frame(piece: int, local: int, pieces: int) -> int:
    """The job's frame index of frame ``local`` of piece ``piece`` (of ``pieces``)."""
    return piece + local * pieces


def merge(results: list[dict], frames: Frames) -> dict:
    """The outputs of the whole job from the outputs of its pieces (in piece order)."""
    if len(results) == 1:
        return results[0]
    pieces = len(results)
    merged = dict(results[0])
    for name in frames.outputs:
        if name not in results[0]:  # an optional output this request did not ask for
            continue
        parts = [np.asarray(result[name]) for result in results]
        total = sum(part.shape[0] for part in parts)
        whole = np.empty((total, *parts[0].shape[1:]), dtype=parts[0].dtype)
        for k, part in enumerate(parts):
            whole[k::pieces] = part
        merged[name] = whole
    return merged


class InOrder:
    """Passes per-frame partials on in frame order, each frame once.

    Frames that arrive early are held until every frame before them went out; a frame seen
    again (a piece retried on another worker) is dropped.
    """

    def __init__(self):
        self.next = 0
        self.held: dict[int, object] = {}

    def add(self, frame: int, item) -> list:
        """Offer frame ``frame``; returns the items now due, in frame order."""
        if frame < self.next or frame in self.held:
            return []
        self.held[frame] = item
        due = []
        while self.next in self.held:
            due.append(self.held.pop(self.next))
            self.next += 1
        return due
