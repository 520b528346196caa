"""Fixtures of the mesh pipeline tests: a real in-process Job that records what it is told.

(These tests live outside tests/pipelines/: that folder is a package named `pipelines`, which
shadows the real `pipelines` package for modules imported through it.)
"""

from __future__ import annotations

import pytest

from mesh_scenes import RecordingJob


@pytest.fixture
def make_job():
    return RecordingJob
