"""Fixtures for the bpy-free add-on tests: a real server on loopback and fast-liveness clients."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The repository first: `addon` must be the real package (addon/__init__.py), whatever the
# state of the editable install.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from blender_support import serve  # noqa: E402  (bpy-free: the shared loopback server)


@pytest.fixture
def server(tmp_path):
    """A running `nstudio serve --device cpu` with its own store and port; stopped after the test."""
    yield from serve(tmp_path)


@pytest.fixture
def fast_config():
    """ConnectionConfig factory with short liveness timers, so failures are noticed in ~1 s."""
    from addon.core import client

    def make(endpoint: str, **overrides) -> "client.ConnectionConfig":
        settings = dict(endpoint=endpoint, handshake_timeout_s=5.0, ping_interval_s=0.2, expiry_s=1.5,
                        backoff_min_s=0.1, backoff_max_s=0.5, watch_poll_s=0.3)
        settings.update(overrides)
        return client.ConnectionConfig(**settings)

    return make
