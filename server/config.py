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
        max_queue_bytes: memory the waiting jobs' requests may hold together before a submit
            is answered ``busy`` (``NSTUDIO_MAX_QUEUE_BYTES``, default 1 GiB). A job that finds
            the queue empty is always accepted (it is bounded by ``max_message_bytes``).
        max_unsent_bytes: memory that replies and events waiting for slow readers may hold
            together (``NSTUDIO_MAX_UNSENT_BYTES``, default 1 GiB). Past it a ``fetch`` is
            answered ``busy`` and a large event is dropped and logged (results stay fetchable).
        keep_results: the newest kept results that are never expired (``NSTUDIO_KEEP_RESULTS``,
            default and minimum 100, the protocol's promise); as many records of jobs without
            a result (failed, cancelled, ``keep: false``) are kept besides.
        keep_days: older results beyond the newest ``keep_results`` expire after this many
            days (``NSTUDIO_KEEP_DAYS``, default 7; fractions allowed, 0 = at once).
        store_budget: bytes the stored results may take; beyond it the oldest results outside
            the newest ``keep_results`` expire first (``NSTUDIO_STORE_BUDGET``, default 20 GiB;
            ``K``/``M``/``G``/``T`` suffixes on the command line).
        sweep_seconds: how often old results are swept (``NSTUDIO_SWEEP_SECONDS``, 60).
        curve_dir: folder made by ``nstudio keys``; turns CURVE on (``NSTUDIO_CURVE_DIR``).
        insecure: allow a non-loopback bind without CURVE (``NSTUDIO_INSECURE=1``).
        heartbeat_seconds: ZeroMQ heartbeat interval; a peer silent for 3 intervals is
            dropped by ZeroMQ (``NSTUDIO_HEARTBEAT_SECONDS``, 5).
        models_dir: the model registry's folder (names from ``nstudio models add``)
            (``NSTUDIO_MODELS_DIR``; default ``$XDG_DATA_HOME/neural-studio/models``).
        models_budget_bytes: memory warm models may take; 0 = 80 % of the GPU's memory or half
            the RAM (``NSTUDIO_MODELS_MEMORY`` in GiB on the command line).
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
    max_queue_bytes: int = 2**30
    max_unsent_bytes: int = 2**30
    keep_results: int = PROTOCOL_MIN_KEEP
    keep_days: float = 7.0
    store_budget: int = 20 * 2**30
    sweep_seconds: float = 60.0
    curve_dir: Path | None = None
    insecure: bool = False
    heartbeat_seconds: float = 5.0
    models_dir: Path | None = None
    models_budget_bytes: int = 0
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
