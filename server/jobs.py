"""Jobs: their records, the :class:`JobHandle` a pipeline runs in, and how a job ends.

The socket thread owns every :class:`JobRecord` and decides what runs next; it hands jobs to
an executor (``server/executors.py``: the local worker thread, or Ray actors). No executor
touches the ROUTER socket (zguide chapter 2: sockets stay in the thread that made them): each
reports everything a job produces as messages on its own inproc PUSH socket, which the socket
thread polls::

    [job id, meta (msgpack), header frame, array frames...]

``meta`` holds what the socket thread needs to keep its records (event type, step/total,
the error of a failed job) without decoding the event itself, which it forwards untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import msgpack
import numpy as np
import zmq

from addon.wire import protocol
from pipelines.base import NO_MODELS, Cancelled, Pipeline, PipelineError

from .store import Store

log = logging.getLogger(__name__)

#: At most this many progress events per second per job reach the client.
PROGRESS_HZ = 10.0
#: Where workers report, polled by the socket thread.
EVENTS_ENDPOINT = "inproc://nstudio-job-events"
STOPPED_RUNNING = "server stopped while the job was running"
STOPPED_QUEUED = "server stopped while the job was queued"


@dataclass
class JobRecord:
    """One job as the socket thread tracks it.

    The first block is persisted (:meth:`to_disk`); the rest lives only while the job does.
    """

    job: str
    pipeline: str
    state: str = "queued"
    created: float = field(default_factory=time.time)
    finished: float | None = None
    step: int = 0
    total: int = 0
    error: dict | None = None          # {code, message, detail} of a failed job
    keep: bool = True
    has_result: bool = False
    # Runtime only.
    peer: bytes | None = None          # the submitting DEALER's identity
    inputs: Any = None
    params: Any = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_requests: list = field(default_factory=list)   # [(peer, request id)]
    held_bytes: int = 0                # what the request holds in memory (--max-queue-bytes)

    _PERSISTED = ("job", "pipeline", "state", "created", "finished", "step", "total", "error",
                  "keep")

    def to_disk(self) -> dict:
        return {name: getattr(self, name) for name in self._PERSISTED}

    @classmethod
    def from_disk(cls, data: dict) -> "JobRecord":
        known = {name: data[name] for name in cls._PERSISTED if name in data}
        return cls(has_result=bool(data.get("has_result")), **known)

    def to_status(self) -> dict:
        """The entry of a ``status`` reply."""
        entry = {
            "job": self.job, "pipeline": self.pipeline, "state": self.state,
            "step": self.step, "total": self.total, "created": self.created,
            "finished": self.finished,
        }
        if self.error is not None:
            entry["error"] = {"code": self.error["code"], "message": self.error["message"]}
        return entry

    def release(self) -> None:
        """Drop the request's data (and with it the received frames) once the job ended."""
        self.inputs = None
        self.params = None


# The one place a job's models are found (issue 16: the model registry). ---------------------

def models_for(pipeline: Pipeline, params: Any, device: str, registry=None) -> Mapping[str, Any]:
    """The loaded models ``pipeline.run`` receives, keyed by each `ModelSpec.key`.

    Every executor (the local worker thread and each Ray actor) asks here, with the registry
    it owns (the actor's own, so its models stay warm on its GPU). The caller closes what it
    gets (``models.close()``) when the job ends, so the registry may evict them again.
    """
    if registry is not None:  # even with none declared: run() may load some on demand
        return registry.acquire(pipeline, params, device)
    return NO_MODELS


def run_to_end(pipeline: Pipeline, inputs: Any, params: Any, handle: "JobHandle",
               registry=None) -> tuple[str, Any]:
    """Find the job's models (:func:`models_for`), run the pipeline, say how it ended,
    whatever it raised.

    Args:
        registry: the model registry of the executor running the job (None: no models).

    Returns:
        ``("result", outputs)``, ``("cancelled", None)`` or ``("error", {code, message,
        detail})``; a pipeline bug becomes an ``internal`` error (its traceback is logged here).
    """
    models = NO_MODELS
    try:
        # Loading counts as the job's work: a missing model fails this job, not the server.
        models = models_for(pipeline, params, handle.device, registry)
        outputs = pipeline.run(inputs, params, handle, models)
        if not isinstance(outputs, dict):
            raise TypeError(f"{pipeline.name}.run returned {type(outputs).__name__}, "
                            "not a dict of outputs")
        return "result", outputs
    except Cancelled:
        return "cancelled", None
    except PipelineError as error:
        return "error", {"code": error.code, "message": error.message, "detail": error.detail}
    except Exception as error:  # a pipeline bug: report it, keep serving
        log.exception("job %s (%s) failed with an unexpected error", handle.id, pipeline.name)
        return "error", {"code": "internal",
                         "message": f"internal error in {pipeline.name}: "
                                    f"{type(error).__name__}: {error} (the server log has the "
                                    "traceback)",
                         "detail": None}
    finally:
        if models is not NO_MODELS:
            models.close()


def deliver_end(job: str, pipeline: str, keep: bool, kind: str, payload: Any, store: Store,
                send: Callable[[dict, list], None]) -> None:
    """Send a job's terminal event; a kept result is in the store before ``result`` goes out.

    Args:
        job: the job id.
        pipeline: its pipeline's name (for messages).
        keep: the submit's ``keep``.
        kind, payload: what :func:`run_to_end` returned.
        store: where kept results go.
        send: ``send(meta, frames)`` onto the broker's event socket.
    """
    if kind == "result":
        try:
            frames = protocol.encode(protocol.make_header("result", job=job, outputs=payload))
            if keep:
                store.save_result(job, payload)
        except protocol.ProtocolError as error:  # storage_full: the disk filled up
            log.error("job %s (%s): its result cannot be stored: %s", job, pipeline, error.message)
            kind, payload = "error", {"code": error.code, "message": error.message,
                                      "detail": error.detail}
        except Exception as error:  # outputs that cannot be sent or stored: a failed job
            log.exception("job %s (%s): its result cannot be sent or stored", job, pipeline)
            kind, payload = "error", {
                "code": "internal",
                "message": f"internal error in {pipeline}: {type(error).__name__}: {error} "
                           "(the server log has the traceback)",
                "detail": None}
        else:
            send({"type": "result", "stored": keep}, frames)
            return
    if kind == "cancelled":
        send({"type": "cancelled"}, protocol.encode(protocol.make_header("cancelled", job=job)))
    else:
        log.info("job %s failed: %s: %s", job, payload["code"], payload["message"])
        send({"type": "error", "error": payload},
             protocol.encode(protocol.make_error(payload["code"], payload["message"], job=job,
                                                 detail=payload.get("detail"))))


def event_frames(job: str, meta: dict, frames: list) -> list:
    """The multipart message an executor pushes to :data:`EVENTS_ENDPOINT` for one event."""
    return [job.encode(), msgpack.packb(meta, use_bin_type=True), *frames]


class JobHandle:
    """The :class:`pipelines.base.Job` a pipeline's ``run()`` receives (its executor's thread).

    Events go out through :meth:`emit`: here encoded onto ``events``, an inproc PUSH socket
    connected to :data:`EVENTS_ENDPOINT`; an executor that runs jobs elsewhere (a Ray actor)
    overrides :meth:`emit` to ship the header to the server, which encodes it there.
    """

    def __init__(self, record: JobRecord, device: str, events: zmq.Socket | None):
        self.id = record.job
        self.device = device
        self._cancel = record.cancel_event
        self._events = events
        self._interval = 1.0 / PROGRESS_HZ
        self._last_sent = -float("inf")
        self._last_logged = -float("inf")
        self._stage = None
        self._pending: tuple | None = None

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise Cancelled(f"job {self.id} was cancelled")

    def progress(self, stage: str, step: int, total: int, message: str = "",
                 preview=None) -> None:
        report = (str(stage), int(step), int(total), str(message), _checked_preview(preview))
        now = time.monotonic()
        # Rate-limited, except for a new stage and the last step, which always go out.
        if (now - self._last_sent >= self._interval or stage != self._stage
                or report[1] >= report[2]):
            self._send_progress(report, now)
        else:
            self._pending = report

    def partial(self, outputs: dict) -> None:
        outputs = _frozen(outputs)
        self.emit({"type": "partial"}, protocol.make_header("partial", job=self.id,
                                                              outputs=outputs))

    def flush_progress(self) -> None:
        """Send a held-back progress report, so the client always sees the job's last one."""
        if self._pending is not None:
            self._send_progress(self._pending, time.monotonic())

    def emit(self, meta: dict, header: dict) -> None:
        """Send one event: ``meta`` for the broker's records, ``header`` for the client."""
        self.send(meta, protocol.encode(header))

    def send(self, meta: dict, frames: list) -> None:
        self._events.send_multipart(event_frames(self.id, meta, frames), copy=False)

    def _send_progress(self, report: tuple, now: float) -> None:
        stage, step, total, message, preview = report
        self._pending = None
        self._last_sent = now
        fields = {"job": self.id, "stage": stage, "step": step, "total": total,
                  "message": message}
        if preview is not None:
            fields["preview"] = preview
        self.emit({"type": "progress", "step": step, "total": total},
                  protocol.make_header("progress", **fields))
        if stage != self._stage or step >= total or now - self._last_logged >= 5.0:
            self._last_logged = now
            log.info("job %s %s: step %d/%d %s", self.id, stage, step, total, message)
        else:
            log.debug("job %s %s: step %d/%d %s", self.id, stage, step, total, message)
        self._stage = stage


def _checked_preview(preview):
    if preview is None or isinstance(preview, (bytes, bytearray)):
        return None if preview is None else bytes(preview)
    array = np.asarray(preview)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"progress preview must be uint8 [H, W, 3|4] or PNG bytes, got "
                         f"{array.dtype} {list(array.shape)}")
    # Copied: the pipeline may draw into the same buffer while this is being sent.
    return array.copy()


def _frozen(value):
    """Copy writable arrays (the pipeline may keep changing them while they are sent)."""
    if isinstance(value, np.ndarray):
        return value.copy() if value.flags.writeable else value
    if isinstance(value, dict):
        return {key: _frozen(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_frozen(item) for item in value]
    return value
