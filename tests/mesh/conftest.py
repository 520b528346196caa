"""Fixtures of the mesh pipeline tests: a real in-process Job that records what it is told.

(These tests live outside tests/pipelines/: that folder is a package named `pipelines`, which
shadows the real `pipelines` package for modules imported through it.)
"""

from __future__ import annotations

import time

import pytest

from pipelines.base import Cancelled


class RecordingJob:
    """A Job (pipelines.base.Job) that keeps every progress report and partial.

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
        self.partials.append(dict(outputs))

    def check_cancel(self):
        self.checks += 1
        if self.cancel_after is not None and self.checks > self.cancel_after:
            if self.cancelled_at is None:
                self.cancelled_at = time.monotonic()
            raise Cancelled()


@pytest.fixture
def make_job():
    return RecordingJob
