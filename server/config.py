"""Server settings: one dataclass, filled from the command line or ``NSTUDIO_*`` variables."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from addon.wire import protocol

SERVER_NAME = "neural-studio"

#: The protocol promises at least this many waiting jobs before ``busy`` ...
PROTOCOL_MIN_QUEUE = 1000
#: ... and at least this many kept results.
PROTOCOL_MIN_KEEP = 100
#: ``--executor`` choices.
EXECUTORS = ("local", "ray")


@dataclass
class ServeConfig:
    """Settings of ``nstudio serve`` (each also read from the environment variable named).

    Attributes:
        bind: ZeroMQ endpoint (``NSTUDIO_BIND``, default ``tcp://127.0.0.1:5557``).
        store: folder for job records and results (``NSTUDIO_STORE``, default
            ``$XDG_DATA_HOME/neural-studio``, i.e. ``~/.local/share/neural-studio``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``NSTUDIO_DEVICE``).
        log_level: ``debug``/``info``/``warning``/``error`` (``NSTUDIO_LOG_LEVEL``).
        max_message_bytes: largest message accepted, all frames together; larger ones get
            ``too_large``, and a single frame above it makes ZeroMQ drop the connection
            (``NSTUDIO_MAX_MESSAGE_BYTES``, default 4 GiB).
        max_queue: waiting jobs before ``busy`` (``NSTUDIO_MAX_QUEUE``, default 1000; the
            protocol promises at least 1000, smaller values are for tests).
        keep_results: kept results retained, newest first (``NSTUDIO_KEEP_RESULTS``, default
            and minimum 100); as many records of failed/cancelled jobs are kept besides.
        sweep_seconds: how often old results are swept (``NSTUDIO_SWEEP_SECONDS``, 60).
        curve_dir: folder made by ``nstudio keys``; turns CURVE on (``NSTUDIO_CURVE_DIR``).
        insecure: allow a non-loopback bind without CURVE (``NSTUDIO_INSECURE=1``).
        heartbeat_seconds: ZeroMQ heartbeat interval; a peer silent for 3 intervals is
            dropped by ZeroMQ (``NSTUDIO_HEARTBEAT_SECONDS``, 5).
        executor: what runs jobs: ``local`` (a worker thread on ``device``) or ``ray`` (a pool
            of Ray actors, ``server/ray_executor.py``) (``NSTUDIO_EXECUTOR``, ``local``).
        ray_address: the Ray cluster to join, e.g. ``10.0.0.1:6379`` or ``auto``; empty
            starts a private Ray on this machine (``NSTUDIO_RAY_ADDRESS``).
        ray_actors: Ray worker actors; 0 = one per GPU of the cluster, or one CPU actor
            where it has none (``NSTUDIO_RAY_ACTORS``, 0).
    """

    bind: str = protocol.DEFAULT_ENDPOINT
    store: Path = Path("neural-studio")
    device: str = "auto"
    log_level: str = "info"
    max_message_bytes: int = protocol.Limits().max_message_bytes
    max_queue: int = PROTOCOL_MIN_QUEUE
    keep_results: int = PROTOCOL_MIN_KEEP
    sweep_seconds: float = 60.0
    curve_dir: Path | None = None
    insecure: bool = False
    heartbeat_seconds: float = 5.0
    executor: str = "local"
    ray_address: str = ""
    ray_actors: int = 0

    def limits(self) -> protocol.Limits:
        return protocol.Limits(max_message_bytes=self.max_message_bytes)


def default_store() -> Path:
    """The per-user data folder: ``$XDG_DATA_HOME/neural-studio`` (``%LOCALAPPDATA%`` on Windows)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "neural-studio"
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return Path(base) / "neural-studio"
