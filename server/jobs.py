"""Jobs: their records, and the worker thread that runs them on the device.

The socket thread owns every :class:`JobRecord` and decides what runs next; it hands one job
at a time to the :class:`Worker` through a queue. The worker never touches the ROUTER socket
(zguide chapter 2: sockets stay in the thread that made them): it reports everything a job
produces as messages on its own inproc PUSH socket, which the socket thread polls::

    [job id, meta (msgpack), header frame, array frames...]

``meta`` holds what the socket thread needs to keep its records (event type, step/total,
the error of a failed job) without decoding the event itself, which it forwards untouched.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from addon.wire import protocol
from pipelines.base import Cancelled, Pipeline, PipelineError

from .models import ModelRegistry
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


class Worker(threading.Thread):
    """The one thread that runs pipelines on the device, one job at a time.

    Args:
        context: the server's ZeroMQ context (for the inproc PUSH socket).
        pipelines: name -> Pipeline.
        store: where kept results go before their ``result`` event is sent.
        device: torch device string handed to pipelines ("cpu", "cuda:0").
        models: the model registry that loads what a pipeline declares (``server.models``);
            None: a registry with the default models folder and budget.
    """

    def __init__(self, context: zmq.Context, pipelines: dict[str, Pipeline], store: Store,
                 device: str, models: "ModelRegistry | None" = None):
        super().__init__(name="nstudio-worker", daemon=True)
        self.context = context
        self.pipelines = pipelines
        self.store = store
        self.device = device
        self.models = models if models is not None else ModelRegistry(device=device)
        self.jobs: queue.Queue = queue.Queue()
        self.ready = threading.Event()

    def submit(self, record: JobRecord) -> None:
        """Hand a job over (socket thread); None stops the worker."""
        self.jobs.put(record)

    def run(self) -> None:
        events = self.context.socket(zmq.PUSH)
        # Events must not be dropped or block forever; the socket thread drains them at once.
        events.setsockopt(zmq.SNDHWM, 0)
        events.setsockopt(zmq.LINGER, 0)
        events.connect(EVENTS_ENDPOINT)
        self.ready.set()
        try:
            while (record := self.jobs.get()) is not None:
                self._run_job(record, events)
        finally:
            events.close()

    def _run_job(self, record: JobRecord, events: zmq.Socket) -> None:
        pipeline = self.pipelines[record.pipeline]
        handle = JobHandle(record, self.device, events)
        started = time.monotonic()
        log.info("job %s (%s) started on %s", record.job, record.pipeline, self.device)
        models = None
        try:
            # Loading counts as the job's work: a missing model fails this job, not the server.
            models = self.models.acquire(pipeline, record.params, self.device)
            outputs = pipeline.run(record.inputs, record.params, handle, models)
            if not isinstance(outputs, dict):
                raise TypeError(f"{record.pipeline}.run returned {type(outputs).__name__}, "
                                "not a dict of outputs")
            frames = protocol.encode(protocol.make_header("result", job=record.job,
                                                          outputs=outputs))
            if record.keep:
                self.store.save_result(record.job, outputs)
            handle.flush_progress()
            handle.send({"type": "result", "stored": record.keep}, frames)
            log.info("job %s done in %.2f s", record.job, time.monotonic() - started)
        except Cancelled:
            handle.flush_progress()
            handle.send({"type": "cancelled"},
                        protocol.encode(protocol.make_header("cancelled", job=record.job)))
            log.info("job %s cancelled after %.2f s", record.job, time.monotonic() - started)
        except (PipelineError, protocol.ProtocolError) as error:  # the store's storage_full too
            self._fail(handle, record, error.code, error.message, error.detail)
        except Exception as error:  # a pipeline bug: report it, keep serving
            log.exception("job %s (%s) failed with an unexpected error", record.job,
                          record.pipeline)
            self._fail(handle, record, "internal",
                       f"internal error in {record.pipeline}: {type(error).__name__}: {error} "
                       "(the server log has the traceback)", None)
        finally:
            if models is not None:
                models.close()

    def _fail(self, handle: "JobHandle", record: JobRecord, code: str, message: str,
              detail: dict | None) -> None:
        log.info("job %s failed: %s: %s", record.job, code, message)
        handle.flush_progress()
        error = {"code": code, "message": message, "detail": detail}
        handle.send({"type": "error", "error": error},
                    protocol.encode(protocol.make_error(code, message, job=record.job,
                                                        detail=detail)))


class JobHandle:
    """The :class:`pipelines.base.Job` a pipeline's ``run()`` receives (worker thread only)."""

    def __init__(self, record: JobRecord, device: str, events: zmq.Socket):
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
        self.send({"type": "partial"},
                  protocol.encode(protocol.make_header("partial", job=self.id, outputs=outputs)))

    def flush_progress(self) -> None:
        """Send a held-back progress report, so the client always sees the job's last one."""
        if self._pending is not None:
            self._send_progress(self._pending, time.monotonic())

    def send(self, meta: dict, frames: list) -> None:
        self._events.send_multipart(
            [self.id.encode(), msgpack.packb(meta, use_bin_type=True), *frames], copy=False
        )

    def _send_progress(self, report: tuple, now: float) -> None:
        stage, step, total, message, preview = report
        self._pending = None
        self._last_sent = now
        fields = {"job": self.id, "stage": stage, "step": step, "total": total,
                  "message": message}
        if preview is not None:
            fields["preview"] = preview
        self.send({"type": "progress", "step": step, "total": total},
                  protocol.encode(protocol.make_header("progress", **fields)))
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
