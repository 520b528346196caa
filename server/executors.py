"""Executors: what runs jobs once the broker has decided they should run.

The broker (the socket thread) owns the queue, the job records and the socket. It talks to one
:class:`Executor` and to nothing else about running jobs:

- :meth:`Executor.start` once, before the first job;
- :meth:`Executor.has_room` before each dispatch: may another job start now?
- :meth:`Executor.submit` a job (its record holds the parsed ``inputs``/``params``);
- :meth:`Executor.cancel` a running job (the pipeline's next ``check_cancel()`` raises);
- :meth:`Executor.shutdown` at stop: cancel what runs, wait a moment, release the devices;
- :meth:`Executor.describe` for logs and ``nstudio doctor``.

What flows back is the event contract of ``server/jobs.py``: every event of a job is pushed to
:data:`server.jobs.EVENTS_ENDPOINT` as ``[job id, meta, header frame, array frames...]``, each
submitted job ends with exactly one terminal event (``result``, ``cancelled`` or ``error``), a
kept result is in the store before its ``result`` event, and an executor has room again
*before* it sends a job's terminal event (the broker dispatches the next job on that event).

:class:`LocalExecutor` is one worker thread owning this process's device. The Ray executor
(``server/ray_executor.py``) runs jobs on a pool of Ray actors behind the same interface.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod

import zmq

from pipelines.base import Pipeline

from .jobs import EVENTS_ENDPOINT, JobHandle, JobRecord, deliver_end, run_to_end
from .store import Store

log = logging.getLogger(__name__)


class ExecutorError(Exception):
    """The executor cannot start (the message says why and what to do)."""


class Executor(ABC):
    """Runs jobs for the broker; see the module docstring for the contract."""

    #: ``--executor`` name.
    name = "?"

    @abstractmethod
    def start(self, context: zmq.Context, store: Store) -> None:
        """Get ready to run jobs; returns once events can flow (the broker has bound
        :data:`EVENTS_ENDPOINT` on ``context``). Raises with a clear message when it cannot."""

    @abstractmethod
    def has_room(self) -> bool:
        """True when :meth:`submit` would start the job now (socket thread)."""

    @abstractmethod
    def submit(self, record: JobRecord) -> None:
        """Start a job (socket thread; never blocks on the job)."""

    @abstractmethod
    def cancel(self, record: JobRecord) -> None:
        """Ask a running job to stop; it ends with a ``cancelled`` event (or its own end, when
        it finished first)."""

    @abstractmethod
    def shutdown(self, grace: float) -> None:
        """Cancel every running job, give them ``grace`` seconds to report their end, and
        release workers and devices. Jobs still running after that are left to the broker,
        which records them as failed."""

    def describe(self) -> dict:
        """What ``nstudio doctor`` and the start-up log say about this executor."""
        return {"executor": self.name}

    def device_info(self) -> dict | None:
        """The ``welcome`` description of the device jobs run on, where it is not this
        process's own (None: the server's ``--device``)."""
        return None


class LocalExecutor(Executor):
    """One worker thread that runs pipelines on this process's device, one job at a time.

    Args:
        pipelines: name -> Pipeline.
        device: torch device string handed to pipelines ("cpu", "cuda:0").
        registry: the model registry (``server.models``) that loads what pipelines declare.
    """

    name = "local"

    def __init__(self, pipelines: dict[str, Pipeline], device: str, registry=None):
        self.pipelines = pipelines
        self.device = device
        self.registry = registry
        self._jobs: queue.Queue = queue.Queue()
        self._busy = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, context: zmq.Context, store: Store) -> None:
        self.context, self.store = context, store
        ready = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(ready,), name="nstudio-worker",
                                        daemon=True)
        self._thread.start()
        ready.wait()

    def has_room(self) -> bool:
        return not self._busy.is_set()

    def submit(self, record: JobRecord) -> None:
        self._busy.set()
        self._jobs.put(record)

    def cancel(self, record: JobRecord) -> None:
        record.cancel_event.set()

    def shutdown(self, grace: float) -> None:
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(grace)

    def describe(self) -> dict:
        return {"executor": self.name, "device": self.device}

    # The worker thread --------------------------------------------------------------------

    def _work(self, ready: threading.Event) -> None:
        events = self.context.socket(zmq.PUSH)
        # Events must not be dropped or block forever; the socket thread drains them at once.
        events.setsockopt(zmq.SNDHWM, 0)
        events.setsockopt(zmq.LINGER, 0)
        events.connect(EVENTS_ENDPOINT)
        ready.set()
        try:
            while (record := self._jobs.get()) is not None:
                self._run_job(record, events)
        finally:
            events.close()

    def _run_job(self, record: JobRecord, events: zmq.Socket) -> None:
        pipeline = self.pipelines[record.pipeline]
        handle = JobHandle(record, self.device, events)
        started = time.monotonic()
        log.info("job %s (%s) started on %s", record.job, record.pipeline, self.device)
        kind, payload = run_to_end(pipeline, record.inputs, record.params, handle, self.registry)
        handle.flush_progress()

        def send(meta: dict, frames: list) -> None:
            # Room again before the terminal event: the broker dispatches on that event.
            self._busy.clear()
            handle.send(meta, frames)

        try:
            deliver_end(record.job, record.pipeline, record.keep, kind, payload, self.store, send)
        finally:
            self._busy.clear()
        log.info("job %s %s after %.2f s", record.job,
                 {"result": "done", "cancelled": "cancelled"}.get(kind, "failed"),
                 time.monotonic() - started)
