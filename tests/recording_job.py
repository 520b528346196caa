"""`RecordingJob`: a real in-process Job (pipelines.base.Job) for pipeline tests."""

from __future__ import annotations

import time

import numpy as np

from pipelines.base import Cancelled


class RecordingJob:
    """A Job (pipelines.base.Job) that keeps everything a pipeline reports.

    Args:
        cancel_after: check_cancel raises Cancelled on call number cancel_after + 1 (None: never).
    """

    id = "test-job"
    device = "cpu"

    def __init__(self, cancel_after: int | None = None):
        self.cancel_after = cancel_after
        self.checks = 0
        self.progress_log: list[tuple] = []
        self.partials: list[dict] = []
        self.cancelled_at: float | None = None

    def progress(self, stage, step, total, message="", preview=None):
        self.progress_log.append((stage, step, total, message, preview))

    def partial(self, outputs):
        # The server copies writable arrays; do the same so later in-place updates cannot leak in.
        self.partials.append({k: ({kk: np.array(vv) for kk, vv in v.items()} if isinstance(v, dict)
                                  else np.array(v) if isinstance(v, np.ndarray) else v)
                              for k, v in outputs.items()})

    def check_cancel(self):
        self.checks += 1
        if self.cancel_after is not None and self.checks > self.cancel_after:
            if self.cancelled_at is None:
                self.cancelled_at = time.monotonic()
            raise Cancelled()
