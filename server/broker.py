"""The socket thread: one ROUTER, one loop, a map from message type to a small handler.

The loop follows zguide's ``mdbroker.py`` ``mediate()``: poll with a timeout equal to the time
to the nearest timer deadline, handle what arrived, then run the due timers every time round
(outside the "a message came" branch). Everything a client sends is checked by
:func:`addon.wire.protocol.decode` and the pipeline's schema; whatever goes wrong becomes an
``error`` reply and the loop carries on.

Job state lives here only. An executor (``server/executors.py``: the local worker thread or a
pool of Ray actors) runs the jobs this thread dispatches and reports back over an inproc PULL
socket polled by this loop; this thread updates the job's record, persists it and forwards the
event to the peer that submitted the job.
"""

from __future__ import annotations

import collections
import errno
import logging
import signal
import socket
import threading
import time
from typing import Callable

import msgpack
import zmq

from addon.wire import protocol
from addon.wire.protocol import FINAL_STATES, ProtocolError
from addon.wire.schema import PipelineError, check_inputs, parse_params
from pipelines.base import Pipeline, describe_pipeline

from . import security
from .config import SERVER_NAME, ServeConfig
from .executors import Executor, LocalExecutor
from .jobs import EVENTS_ENDPOINT, STOPPED_QUEUED, STOPPED_RUNNING, JobRecord
from .models import ModelRegistry
from .store import CorruptResult, Store
from .timers import Timers

log = logging.getLogger(__name__)

# Messages handled per socket per turn, so neither clients nor the worker starve the other or
# the timers.
_BATCH = 64
# A job still running this long after shutdown began is left to die with the process.
_STOP_GRACE_S = 3.0
# What a request holds in memory: its frames, plus the header's decoded objects, which take at
# most this many bytes per msgpack byte within the codec's container limits (a 2-character
# string is 3 bytes on the wire and ~60 as a Python object in a list).
_HEADER_COST = 24
# Messages from this size up are tracked until ZeroMQ has sent them (--max-unsent-bytes);
# smaller ones are copied by pyzmq anyway.
_TRACK_MIN = 64 * 1024


def _stopped_error(reason: str) -> dict:
    """The stored error of a job the server's stop (or crash) cut off."""
    return {"code": "internal", "message": reason, "detail": None}


class Broker:
    """The server proper.

    Args:
        config: settings.
        pipelines: name -> Pipeline (from :func:`pipelines.registry.discover`).
        device: torch device string for pipelines ("cpu", "cuda:0").
        device_info: the ``welcome`` description of the device.
        version: the server version reported in ``welcome``.
        curve: CURVE keys, or None for a plain socket.
        models: the model registry (``server.models``); None: one from ``config``.
        executor: what runs the jobs; default a :class:`LocalExecutor` on ``device``.
    """

    def __init__(self, config: ServeConfig, pipelines: dict[str, Pipeline], device: str,
                 device_info: dict, version: str, curve: security.CurveKeys | None = None,
                 models: ModelRegistry | None = None, executor: Executor | None = None):
        self.config = config
        self.models = models if models is not None else ModelRegistry(
            config.models_dir, config.models_budget_bytes or None, device)
        self.pipelines = pipelines
        self.device = device
        self.device_info = device_info
        self.version = version
        self.curve = curve
        self.limits = config.limits()
        self.store = Store(config.store)
        self.catalogue = {name: describe_pipeline(p) for name, p in pipelines.items()}
        self.jobs: dict[str, JobRecord] = {}          # insertion order = creation order
        self.queue: collections.deque[JobRecord] = collections.deque()
        self.executor = executor or LocalExecutor(pipelines, device, self.models)
        self.running: dict[str, JobRecord] = {}      # job id -> record, as the executor runs them
        self.stopping = False
        self._request_bytes = 0                       # of the message being handled
        self._sizes: dict[str, int] = {}              # job -> bytes of its stored result
        # Sent messages ZeroMQ still holds (a slow or stuck reader): (trackers, bytes).
        self.unsent: collections.deque[tuple[list, int]] = collections.deque()
        self.unsent_bytes = 0
        self.handlers: dict[str, Callable[[bytes, dict], None]] = {
            "hello": self.on_hello,
            "submit": self.on_submit,
            "cancel": self.on_cancel,
            "status": self.on_status,
            "fetch": self.on_fetch,
            "ping": self.on_ping,
        }

    # Set-up and the loop ----------------------------------------------------------------

    def serve(self) -> None:
        """Bind, recover the store, run until SIGINT/SIGTERM, shut down cleanly.

        Raises:
            zmq.ZMQError: the endpoint cannot be bound (in use, bad address).
            StoreInUse: another server holds the store.
        """
        context = zmq.Context()
        self.events = context.socket(zmq.PULL)
        self.router = context.socket(zmq.ROUTER)
        auth = None
        try:
            self.events.bind(EVENTS_ENDPOINT)
            auth = self._configure_router(context)
            # Bind and lock before touching the store: a second server started by mistake
            # must fail here, not mark the first one's running jobs as failed.
            self.router.bind(self.config.bind)
            self.store.lock()
        except BaseException:
            if auth is not None:
                auth.stop()
            context.destroy(linger=0)
            raise
        self._recover()
        try:
            self.executor.start(context, self.store)
        except BaseException:
            if auth is not None:
                auth.stop()
            context.destroy(linger=0)
            self.store.unlock()
            raise
        wake = self._catch_signals()
        timers = Timers()
        timers.every(self.config.sweep_seconds, self.sweep, now=True)
        log.info("serving on %s (device %s, store %s, %d pipelines, executor %s)",
                 self.config.bind, self.device, self.config.store, len(self.pipelines),
                 self.executor.name)
        try:
            self._loop(timers, wake)
        finally:
            self._shutdown()
            self.router.close(linger=0)
            self.events.close(linger=0)
            if auth is not None:
                auth.stop()
            if wake is not None:
                signal.set_wakeup_fd(-1)
                wake.close()
            context.term()
            self.store.unlock()
            log.info("server stopped")

    def _configure_router(self, context: zmq.Context):
        router = self.router
        # Errors instead of silent drops for peers that are gone or not reading.
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        interval_ms = int(self.config.heartbeat_seconds * 1000)
        router.setsockopt(zmq.HEARTBEAT_IVL, interval_ms)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * interval_ms)
        router.setsockopt(zmq.HEARTBEAT_TTL, 3 * interval_ms)
        if self.curve is not None:
            return security.secure(context, router, self.curve)
        if not security.is_local(self.config.bind):
            log.warning("!!! INSECURE: %s is reachable from other machines WITHOUT "
                        "authentication or encryption (--insecure). Anyone who can reach it "
                        "can run jobs and read results. Use --curve-dir instead. !!!",
                        self.config.bind)
        return None

    def _catch_signals(self):
        """SIGINT/SIGTERM set ``stopping`` and wake the poll through a socket pair."""
        if threading.current_thread() is not threading.main_thread():
            return None
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)

        def request_stop(signum, frame):
            self.stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        self._wake_writer = writer
        return reader

    def _loop(self, timers: Timers, wake) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.events, zmq.POLLIN)
        if wake is not None:
            poller.register(wake, zmq.POLLIN)
        while not self.stopping:
            try:
                ready = dict(poller.poll(timers.ms_to_next()))
                # Worker events first: a cancel or fetch then sees the newest job state.
                if self.events in ready:
                    self._drain(self.events, self.on_worker_event)
                if self.router in ready:
                    self._drain(self.router, self.on_client_message)
                if wake is not None and (wake in ready or wake.fileno() in ready):
                    wake.recv(4096)
            except Exception:  # the loop never dies; a bug here is logged and skipped
                log.exception("unexpected error in the server loop")
            timers.run_due()

    def _drain(self, sock: zmq.Socket, handle: Callable[[list], None]) -> None:
        for _ in range(_BATCH):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            handle(frames)

    # Client messages --------------------------------------------------------------------

    def on_client_message(self, frames: list) -> None:
        """Decode one client message and run its handler; never raises."""
        peer = frames[0].bytes
        try:
            header = protocol.decode(frames[1:], self.limits)
        except ProtocolError as error:
            log.debug("bad message from %s: %s", peer.hex(), error)
            self.send_error(peer, error.code, error.message, re=error.msg_id, detail=error.detail)
            return
        re = header.get("id")
        self._request_bytes = _request_cost(frames[1:])
        handler = self.handlers.get(header["type"])
        if handler is None:
            self.send_error(peer, "unknown_type",
                            f"unknown message type {header['type']!r}; this server handles "
                            f"{sorted(self.handlers)}", re=re)
            return
        try:
            handler(peer, header)
        except (ProtocolError, PipelineError) as error:
            self.send_error(peer, error.code, error.message, re=re, detail=error.detail)
        except Exception as error:  # a bug in a handler: log it, answer `internal`, carry on
            log.exception("handler for %r failed", header["type"])
            self.send_error(peer, "internal",
                            f"internal error handling {header['type']!r}: "
                            f"{type(error).__name__}: {error} (the server log has the "
                            "traceback)", re=re)

    def on_hello(self, peer: bytes, header: dict) -> None:
        offered = header.get("protocols")
        if isinstance(offered, list) and protocol.VERSION not in offered:
            raise ProtocolError("unsupported_version",
                                f"client speaks protocols {offered}; this server speaks "
                                f"{protocol.VERSION}", detail={"supported": [protocol.VERSION]})
        log.info("hello from %r (%s)", header.get("client"), peer.hex())
        pipelines = {}
        for name, described in self.catalogue.items():
            available, reason = self._probe(self.pipelines[name])
            pipelines[name] = dict(described, available=available, reason=reason)
        self.reply(peer, header, "welcome", server={"name": SERVER_NAME, "version": self.version},
                   protocol=protocol.VERSION,
                   device=self.executor.device_info() or self.device_info, pipelines=pipelines)

    def on_ping(self, peer: bytes, header: dict) -> None:
        self.reply(peer, header, "pong")

    def on_submit(self, peer: bytes, header: dict) -> None:
        name = header.get("pipeline")
        if not isinstance(name, str):
            raise ProtocolError("bad_message", "submit needs 'pipeline', a string")
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            raise ProtocolError("unknown_pipeline",
                                f"no pipeline {name!r}; this server has {sorted(self.pipelines)}",
                                detail={"field": "pipeline"})
        available, reason = self._probe(pipeline)
        if not available:
            raise ProtocolError("unavailable", f"{name} cannot run here: {reason}")
        params = parse_params(pipeline.params, header.get("params", {}))
        inputs = header.get("inputs", {})
        check_inputs(pipeline.inputs, inputs)
        if pipeline.check is not None:
            # What the schema cannot say; an error here means no job (PROTOCOL.md submit).
            pipeline.check(inputs, params)
        keep = header.get("keep", True)
        if not isinstance(keep, bool):
            raise PipelineError("invalid_params", f"'keep' must be a bool, not {keep!r}", "keep")
        if len(self.queue) >= self.config.max_queue:
            raise ProtocolError("busy", f"the queue is full ({len(self.queue)} jobs waiting); "
                                "try again later")
        held = sum(r.held_bytes for r in self.queue)
        if self.queue and held + self._request_bytes > self.config.max_queue_bytes:
            raise ProtocolError("busy", f"the {len(self.queue)} waiting jobs hold {held} bytes; "
                                f"this request ({self._request_bytes} bytes) would pass the "
                                f"server's limit of {self.config.max_queue_bytes} "
                                "(--max-queue-bytes); try again later")
        record = JobRecord(job=protocol.new_id(), pipeline=name, keep=keep, peer=peer,
                           inputs=inputs, params=params, held_bytes=self._request_bytes)
        # On disk before it is queued: a refused write (storage_full) means no job at all.
        self.store.save_record(record.to_disk())
        position = len(self.queue) + len(self.running)
        self.jobs[record.job] = record
        self.queue.append(record)
        log.info("job %s (%s) queued at position %d", record.job, name, position)
        self.reply(peer, header, "accepted", job=record.job, position=position)
        self._dispatch()

    def on_cancel(self, peer: bytes, header: dict) -> None:
        record = self._job_of(header)
        if record.state in FINAL_STATES:
            raise ProtocolError("invalid_input",
                                f"job {record.job} already ended: {record.state}",
                                detail={"field": "job", "state": record.state})
        if record.state == "queued":
            self.queue.remove(record)
            self._end(record, "cancelled")
            self.reply(peer, header, "cancelled", job=record.job)
            if record.peer != peer:
                self.send(record.peer, protocol.make_header("cancelled", job=record.job))
            self._dispatch()
            return
        # Running: the worker raises Cancelled at the pipeline's next check_cancel().
        record.cancel_requests.append((peer, header.get("id")))
        self.executor.cancel(record)
        log.info("job %s: cancel requested", record.job)

    def on_status(self, peer: bytes, header: dict) -> None:
        if header.get("job") is not None:
            jobs = [self._job_of(header).to_status()]
        else:
            jobs = [r.to_status() for r in sorted(self.jobs.values(), key=lambda r: r.created,
                                                  reverse=True)]
        self.reply(peer, header, "status", jobs=jobs)

    def on_fetch(self, peer: bytes, header: dict) -> None:
        record = self._job_of(header)
        if record.state in ("queued", "running"):
            # Not an error: the job is fine, just not finished. The client polls again.
            self.reply(peer, header, "status", jobs=[record.to_status()])
        elif record.state == "failed":
            error = record.error or {"code": "internal", "message": "failed"}
            self.send_error(peer, error["code"], error["message"], re=header.get("id"),
                            job=record.job, detail=error.get("detail"))
        elif record.state == "cancelled":
            self.send_error(peer, "cancelled", f"job {record.job} was cancelled",
                            re=header.get("id"), job=record.job)
        elif not record.has_result:
            why = ("the submit said keep: false" if not record.keep
                   else "the stored result is gone")
            raise ProtocolError("not_found", f"job {record.job} is done but its result was "
                                f"not kept ({why})", detail={"field": "job"})
        else:
            try:
                size = self.store.result_bytes(record.job)
            except OSError:
                size = 0                  # _load_result says what is wrong
            log.debug("fetch of job %s by %s: %d bytes", record.job, peer.hex(), size)
            if size >= _TRACK_MIN and not self._room_for(size):
                raise ProtocolError("busy", f"{self.unsent_bytes} bytes of replies are waiting "
                                    "for clients that read slowly (limit "
                                    f"{self.config.max_unsent_bytes}, --max-unsent-bytes); "
                                    f"fetch job {record.job} again later")
            outputs = self._load_result(record)
            self.reply(peer, header, "result", job=record.job, outputs=outputs)

    def _load_result(self, record: JobRecord) -> dict:
        """A stored result, or the error that says truly why it cannot be had."""
        try:
            return self.store.load_result(record.job)
        except FileNotFoundError as error:
            log.error("stored result of job %s is gone: %s", record.job, error)
            raise ProtocolError("not_found", f"the stored result of job {record.job} is gone "
                                f"from the store: {error}", detail={"field": "job"}) from None
        except CorruptResult as error:
            log.error("job %s: %s", record.job, error)
            raise ProtocolError("corrupt", f"the stored result of job {record.job} is damaged "
                                f"and is not sent: {error}", detail={"field": "job"}) from None
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                log.warning("fetch of job %s: %s", record.job, error)
                raise ProtocolError("busy", f"the server cannot read the result of job "
                                    f"{record.job} right now ({error.strerror}); try again "
                                    "later") from None
            log.exception("stored result of job %s is unreadable", record.job)
            raise ProtocolError("internal", f"the stored result of job {record.job} cannot "
                                f"be read: {error}") from None

    def _job_of(self, header: dict) -> JobRecord:
        job_id = header.get("job")
        if not isinstance(job_id, str):
            raise ProtocolError("bad_message", f"{header['type']} needs 'job', a string")
        record = self.jobs.get(job_id)
        if record is None:
            raise ProtocolError("not_found", f"no job {job_id!r} (unknown, or expired from "
                                "the store)", detail={"field": "job"})
        return record

    def _probe(self, pipeline: Pipeline) -> tuple[bool, str]:
        # The pipeline's own probe combined with the registry's check of its models; neither
        # may take the server down (ModelRegistry.probe catches a broken probe).
        try:
            available, reason = self.models.probe(pipeline)
            return bool(available), str(reason)
        except Exception as error:
            log.exception("probe of %s failed", pipeline.name)
            return False, f"availability check failed: {type(error).__name__}: {error}"

    # Worker events ----------------------------------------------------------------------

    def on_worker_event(self, frames: list) -> None:
        """Record and forward one event of the running job."""
        job_id = frames[0].bytes.decode()
        meta = msgpack.unpackb(frames[1].bytes, raw=False)
        body = frames[2:]
        record = self.jobs[job_id]
        kind = meta["type"]
        if kind == "progress":
            record.step, record.total = meta["step"], meta["total"]
            self.send_frames(record.peer, body)
            return
        if kind == "partial":
            self.send_frames(record.peer, body)
            return
        # Terminal: the record goes to disk before the event goes out (the result itself is
        # already there, written by the worker).
        self.running.pop(job_id, None)
        if kind == "result":
            record.has_result = bool(meta["stored"])
            self._end(record, "done")
            self.send_frames(record.peer, body)
            self._answer_late_cancels(record)
        elif kind == "cancelled" and not record.cancel_requests:
            # Only the server cancels without a request: it is shutting down.
            self._fail_stopped(record, STOPPED_RUNNING)
        elif kind == "cancelled":
            self._end(record, "cancelled")
            answered = set()
            for peer, re in record.cancel_requests:
                fields = {"re": re} if re is not None else {}
                self.send(peer, protocol.make_header("cancelled", job=record.job, **fields))
                answered.add(peer)
            if record.peer not in answered:
                self.send_frames(record.peer, body)
        else:
            self._end(record, "failed", meta["error"])
            self.send_frames(record.peer, body)
            self._answer_late_cancels(record)
        self._dispatch()

    def _answer_late_cancels(self, record: JobRecord) -> None:
        # The job ended on its own before it reached a check_cancel().
        for peer, re in record.cancel_requests:
            self.send_error(peer, "invalid_input", f"job {record.job} already ended: "
                            f"{record.state}", re=re, detail={"field": "job",
                                                              "state": record.state})

    # Job bookkeeping --------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Start queued jobs while the executor has room."""
        while self.queue and not self.stopping and self.executor.has_room():
            record = self.queue.popleft()
            record.state = "running"
            self._save(record)
            self.running[record.job] = record
            self.executor.submit(record)

    def _end(self, record: JobRecord, state: str, error: dict | None = None) -> None:
        record.state = state
        record.error = error
        record.finished = time.time()
        record.release()
        self._save(record)

    def _save(self, record: JobRecord) -> None:
        """Persist a record; a store that refuses (disk full) is logged, never stops the job's
        events or the queue (the record in memory stays right; a restart then reports the
        job as stopped by the server)."""
        try:
            self.store.save_record(record.to_disk())
        except (OSError, ProtocolError) as error:
            log.error("job %s: its record could not be saved (%s: %s); carrying on",
                      record.job, type(error).__name__, error)

    def _fail_stopped(self, record: JobRecord, reason: str) -> None:
        """End a job that the server's stop cut off, and tell its client."""
        self._end(record, "failed", _stopped_error(reason))
        self.send_error(record.peer, "internal", reason, job=record.job)

    def _recover(self) -> None:
        """Load the store; jobs that were queued or running when the server died failed."""
        for data in self.store.open():
            try:
                record = JobRecord.from_disk(data)
            except Exception as error:  # the store checked it; never let one record stop us
                log.error("skipping job record %r: %s", data.get("job"), error)
                continue
            if record.state in ("queued", "running"):
                if record.has_result:
                    # Killed between writing the result and recording it: it is done.
                    record.state, record.finished = "done", time.time()
                else:
                    reason = STOPPED_RUNNING if record.state == "running" else STOPPED_QUEUED
                    record.state, record.finished = "failed", time.time()
                    record.error = _stopped_error(reason)
                self._save(record)
                log.warning("job %s (%s) recovered as %s", record.job, record.pipeline,
                            record.state)
            self.jobs[record.job] = record
        log.info("store %s: %d job records", self.config.store, len(self.jobs))

    def _shutdown(self) -> None:
        """Queued jobs fail at once; running ones are cancelled and given a moment."""
        self.stopping = True
        for record in list(self.queue):
            self._fail_stopped(record, STOPPED_QUEUED)
        self.queue.clear()
        for record in list(self.running.values()):
            self.executor.cancel(record)
        self.executor.shutdown(_STOP_GRACE_S)
        while True:
            try:
                frames = self.events.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.on_worker_event(frames)
        for record in list(self.running.values()):
            self._end(record, "failed", _stopped_error(STOPPED_RUNNING))

    # Timers -----------------------------------------------------------------------------

    def sweep(self) -> None:
        """Retention (docs/protocol-notes.md "Durability"), oldest first:

        - the newest ``keep_results`` kept results always stay (the protocol's promise);
        - older results expire after ``keep_days``, and while the results together pass
          ``store_budget`` bytes, oldest first: a burst of small jobs does not push out
          a long reconstruction of yesterday, and a full disk is not waited for;
        - of jobs without a stored result, the newest ``keep_results`` records stay.
        """
        ended = sorted((r for r in self.jobs.values() if r.state in FINAL_STATES),
                       key=lambda r: r.created)
        keep = self.config.keep_results
        results = [r for r in ended if r.has_result]
        others = [r for r in ended if not r.has_result]
        expired = others[:max(0, len(others) - keep)]
        older = results[:max(0, len(results) - keep)]
        cutoff = time.time() - self.config.keep_days * 86400.0
        total = sum(self._result_size(r) for r in results)
        for record in older:
            if (record.finished or record.created) < cutoff or total > self.config.store_budget:
                expired.append(record)
                total -= self._result_size(record)
        for record in expired:
            self.store.delete(record.job)
            del self.jobs[record.job]
            self._sizes.pop(record.job, None)
            log.debug("job %s expired from the store", record.job)

    def _result_size(self, record: JobRecord) -> int:
        """Bytes of a stored result on disk (cached: results never change)."""
        size = self._sizes.get(record.job)
        if size is None:
            try:
                size = self.store.result_bytes(record.job)
            except OSError:
                size = 0
            self._sizes[record.job] = size
        return size

    # Sending ----------------------------------------------------------------------------

    def reply(self, peer: bytes, request: dict, type_: str, **fields) -> None:
        """Send a reply carrying ``re`` = the request's id (when it had one)."""
        if request.get("id") is not None:
            fields["re"] = request["id"]
        self.send(peer, protocol.make_header(type_, **fields))

    def send_error(self, peer: bytes | None, code: str, message: str, *, re: str | None = None,
                   job: str | None = None, detail: dict | None = None) -> None:
        self.send(peer, protocol.make_error(code, message, re=re, job=job, detail=detail))

    def send(self, peer: bytes | None, header: dict) -> None:
        self.send_frames(peer, protocol.encode(header))

    def send_frames(self, peer: bytes | None, frames: list) -> None:
        """Send a message to a peer, zero-copy; a peer that is gone or stuck is logged.

        A large message is tracked until ZeroMQ has let go of it; while the messages held for
        slow readers pass ``max_unsent_bytes``, further large ones are dropped (and logged):
        the memory a reader that never reads can pin stays bounded.
        """
        if peer is None:
            return
        size = sum(_nbytes(frame) for frame in frames)
        trackers: list = []
        if size >= _TRACK_MIN:
            if not self._room_for(size):
                log.warning("a %d-byte message for peer %s was dropped: %d bytes already wait "
                            "for slow readers (--max-unsent-bytes %d); results stay fetchable",
                            size, peer.hex(), self.unsent_bytes, self.config.max_unsent_bytes)
                return
            frames = [_tracked(frame, trackers) for frame in frames]
        try:
            self.router.send_multipart([peer, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.warning("peer %s is not reading; a message was dropped (it can fetch results)",
                        peer.hex())
            return
        except zmq.ZMQError as error:
            if error.errno != zmq.EHOSTUNREACH:
                raise
            log.debug("peer %s is gone; a message was dropped", peer.hex())
            return
        if trackers:
            self.unsent.append((trackers, size))
            self.unsent_bytes += size

    def _room_for(self, size: int) -> bool:
        """Whether a message of ``size`` bytes may be queued for sending now."""
        for entry in list(self.unsent):
            if all(tracker.done for tracker in entry[0]):
                self.unsent.remove(entry)
                self.unsent_bytes -= entry[1]
        return not self.unsent or self.unsent_bytes + size <= self.config.max_unsent_bytes


def _nbytes(frame) -> int:
    return memoryview(getattr(frame, "buffer", frame)).nbytes


def _tracked(frame, trackers: list):
    """``frame`` as a zero-copy zmq.Frame whose tracker says when ZeroMQ has let go of it."""
    buffer = getattr(frame, "buffer", frame)
    if memoryview(buffer).nbytes < _TRACK_MIN:
        return frame
    tracked = zmq.Frame(buffer, copy=False, track=True)
    trackers.append(tracked.tracker)
    return tracked


def _request_cost(frames: list) -> int:
    """Memory a received message holds: its frames plus its header's decoded objects."""
    header, arrays = frames[0], frames[1:]
    return _HEADER_COST * _nbytes(header) + sum(_nbytes(frame) for frame in arrays)
