"""The job manager core (bpy-free): job records, event routing and time-budgeted result application.

The Blender layer (`addon/session.py`) owns one `JobManager`, feeds it every message the client
polls, and calls `apply(budget)` from its timer so result handlers run in bounded slices on the
main thread. Nothing here imports bpy; tests drive it against a real server.

Stale partials: each job has at most one application running and one partial waiting. A newer
partial replaces the waiting one (the stale one is dropped unapplied); the running one finishes
so Blender always shows one whole partial. A final `result` always wins: it drops the waiting
partial, stops a running partial application, and is always applied. A job that ends without a
result (cancelled, failed) drops what is waiting but lets a running application finish, so a
cancelled job keeps a whole last partial, never half of one.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from . import handlers as handlers_mod

log = logging.getLogger(__name__)

ACTIVE_STATES = frozenset({"submitting", "queued", "running"})
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})
ALL_STATES = ACTIVE_STATES | TERMINAL_STATES
# A fetch not answered within this many seconds may be sent again.
FETCH_RETRY_S = 30.0


@dataclass
class JobRecord:
    """What the add-on knows about one job.

    Attributes:
        request_id: Id of the `submit` message (the key until the server names the job).
        pipeline: Pipeline name.
        id: Server job id; "" until `accepted`.
        state: One of ALL_STATES; "submitting" until `accepted`.
        stage: Current stage name from `progress`.
        step: Current step from `progress`.
        total: Total steps from `progress`.
        message: Latest human-readable message (progress text or error).
        target: What the result handler writes into, e.g. an object name.
        applied: True once the final result has been applied to Blender data.
        error_code: Protocol error code when the job failed, else "".
        preview: Latest preview image: uint8 sRGB [H, W, 3|4] or PNG bytes; None if none.
        preview_serial: Incremented whenever `preview` changes.
        partials_applied: Number of partial results applied.
        partials_dropped: Number of stale partials skipped for a newer one.
        revision: Incremented on every change, so the Blender layer syncs only what changed.
    """

    request_id: str
    pipeline: str
    id: str = ""
    state: str = "submitting"
    stage: str = ""
    step: int = 0
    total: int = 0
    message: str = ""
    target: str = ""
    applied: bool = False
    error_code: str = ""
    preview: Any = None
    preview_serial: int = 0
    partials_applied: int = 0
    partials_dropped: int = 0
    revision: int = 0

    @property
    def key(self) -> str:
        """The job id once known, else the submit request id."""
        return self.id or self.request_id

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass
class _Application:
    """One handler call being stepped: `kind` is "partial" or "result".

    `outputs` is held here (not only by the handler's generator) so that when the application
    ends, the manager decides where the received buffers are freed.
    """

    kind: str
    steps: Optional[Iterator[Any]]
    outputs: Any = None
    count: int = 0


class BackgroundReleaser:
    """Drops references on a daemon thread.

    Freeing a received 236 MB message is a munmap that takes tens of milliseconds; pyzmq
    releases the GIL while it frees a frame, so doing it here keeps Blender's main thread free.
    The thread only ever drops numpy arrays and ZeroMQ frames; it never touches bpy. It starts
    on first use (importing this module starts nothing).
    """

    def __init__(self):
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def __call__(self, obj: Any) -> None:
        if obj is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nstudio-release", daemon=True)
                self._thread.start()
        self._queue.put(obj)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            del item  # the last reference: the buffers are freed on this thread


release_in_background = BackgroundReleaser()


@dataclass
class _Work:
    """A job's application state: at most one running, one partial and one result waiting."""

    running: Optional[_Application] = None
    partial: Optional[dict] = None
    result: Optional[dict] = None

    @property
    def pending(self) -> bool:
        """Something is running or waiting."""
        return self.running is not None or self.partial is not None or self.result is not None


@dataclass
class ApplyStats:
    """Figures from `JobManager.apply` calls, for benchmarks and logs."""

    calls: int = 0
    steps: int = 0
    longest_step_s: float = 0.0
    longest_step: str = ""  # which step it was: "<pipeline> <kind>: <what the handler yielded>"


class JobManager:
    """Tracks jobs, routes server events to records, and applies results within a time budget.

    Args:
        client: An `addon.core.client.Client` (anything with submit/cancel/fetch/status/watch/unwatch).
        lookup: Maps a pipeline name to its `HandlerEntry` (default: the handler registry).
        release: Called with outputs the manager no longer needs (default: freed on a
            background thread).
    """

    def __init__(self, client, lookup: Callable[[str], Optional[handlers_mod.HandlerEntry]] = handlers_mod.get_handler,
                 release: Callable[[Any], None] = release_in_background):
        self.client = client
        self._lookup = lookup
        self._release = release
        self.jobs: dict[str, JobRecord] = {}
        self._requests: dict[str, tuple[str, str]] = {}  # request id -> (type, job key)
        self._work: dict[str, _Work] = {}
        self._fetched_at: dict[str, float] = {}
        self._step_estimate = 0.0  # running estimate of one step's duration, seconds
        self.stats = ApplyStats()
        # Job events by message type; welcome and pong are connection-level (client and session).
        self._event_handlers: dict[str, Callable[[dict], None]] = {
            "accepted": self._on_accepted, "progress": self._on_progress, "partial": self._on_partial,
            "result": self._on_result, "cancelled": self._on_cancelled, "error": self._on_error,
            "status": self._on_status,
        }

    # -- requests ------------------------------------------------------------------------------

    def submit(self, pipeline: str, params: Optional[dict] = None, inputs: Optional[dict] = None,
               target: str = "", keep: bool = True) -> JobRecord:
        """Send a `submit` and track the job.

        Args:
            pipeline: Pipeline name.
            params: Pipeline params map.
            inputs: Inputs map (numpy arrays allowed anywhere).
            target: What the result handler should write into (e.g. an object name), or "".
            keep: False asks the server not to store the result.

        Returns:
            The new record, state "submitting" until `accepted` arrives.

        Raises:
            addon.core.client.NotConnected: No connection to a server right now.
        """
        request_id = self.client.submit(pipeline, params=params or {}, inputs=inputs or {}, keep=keep)
        record = JobRecord(request_id=request_id, pipeline=pipeline, target=target)
        self.jobs[request_id] = record
        self._requests[request_id] = ("submit", request_id)
        return record

    def cancel(self, key: str) -> None:
        """Ask the server to cancel a job (its `cancelled` event ends it).

        Raises:
            KeyError: Unknown job.
            ValueError: The job has no server id yet or has already ended.
        """
        record = self.jobs[key]
        if not record.id:
            raise ValueError(f"job {key} has not been accepted by the server yet; cannot cancel it")
        if record.finished:
            raise ValueError(f"job {record.id} already ended ({record.state})")
        request_id = self.client.cancel(record.id)
        self._requests[request_id] = ("cancel", record.id)
        self._touch(record, message="cancelling")

    def attach(self, job_id: str, pipeline: str, state: str, target: str = "", applied: bool = False,
               stage: str = "", step: int = 0, total: int = 0, message: str = "") -> JobRecord:
        """Re-attach a job saved in a .blend: resume receiving it, or fetch its unapplied result.

        Jobs still queued/running and finished jobs whose result was not applied are watched by
        the client, which fetches them now if connected or as soon as it (re)connects.

        Returns:
            The (new or existing) record.

        Raises:
            ValueError: Empty job id or unknown state.
        """
        if not job_id:
            raise ValueError("cannot re-attach a job without a server job id")
        if state not in ALL_STATES:
            raise ValueError(f"job {job_id}: unknown state {state!r}; expected one of {sorted(ALL_STATES)}")
        record = self.jobs.get(job_id)
        if record is None:
            record = JobRecord(request_id="", pipeline=pipeline, id=job_id, state=state, stage=stage,
                               step=step, total=total, message=message, target=target, applied=applied)
            self.jobs[job_id] = record
        if state in ("queued", "running") or (state == "done" and not applied):
            self.client.watch(job_id)
        return record

    def forget(self, key: str) -> None:
        """Drop a record (e.g. the user removed it from the list); pending work is dropped too."""
        record = self.jobs.pop(key, None)
        self._drop_work(key)
        if record is not None and record.id:
            self.client.unwatch(record.id)

    def clear(self) -> None:
        """Forget every record (a different .blend was loaded)."""
        for key in list(self.jobs):
            self.forget(key)
        self._requests.clear()

    # -- events --------------------------------------------------------------------------------

    def handle(self, msg: dict) -> None:
        """Route one decoded message from the server to the job it concerns."""
        method = self._event_handlers.get(msg.get("type"))
        if method is not None:
            method(msg)

    def _record_for(self, msg: dict) -> Optional[JobRecord]:
        job_id = msg.get("job")
        if job_id and job_id in self.jobs:
            return self.jobs[job_id]
        entry = self._requests.get(msg.get("re", ""))
        if entry is not None:
            return self.jobs.get(entry[1])
        return None

    def _on_accepted(self, msg: dict) -> None:
        entry = self._requests.pop(msg.get("re", ""), None)
        if entry is None or entry[1] not in self.jobs:
            log.warning("accepted for an unknown request %r", msg.get("re"))
            return
        record = self.jobs.pop(entry[1])
        record.id = str(msg["job"])
        self.jobs[record.id] = record
        if record.state == "submitting":
            record.state = "queued"
        self._touch(record, message=f"queued (position {msg.get('position', '?')})")

    def _on_progress(self, msg: dict) -> None:
        record = self._record_for(msg)
        if record is None or record.finished:
            return
        record.state = "running"
        record.stage = str(msg.get("stage", ""))
        record.step = int(msg.get("step", 0))
        record.total = int(msg.get("total", 0))
        record.message = str(msg.get("message", ""))
        preview = msg.get("preview")
        if preview is not None:
            record.preview = preview
            record.preview_serial += 1
        self._touch(record)

    def _on_partial(self, msg: dict) -> None:
        record = self._record_for(msg)
        if record is None or record.finished:
            return
        if record.state in ("submitting", "queued"):
            record.state = "running"
        entry = self._lookup(record.pipeline)
        if entry is None or entry.on_partial is None:
            return
        work = self._work.setdefault(record.key, _Work())
        if work.partial is not None:
            record.partials_dropped += 1
            self._release(work.partial)
        work.partial = msg.get("outputs", {})
        self._touch(record)

    def _on_result(self, msg: dict) -> None:
        record = self._record_for(msg)
        if record is None:
            log.warning("result for an unknown job %r", msg.get("job"))
            return
        self._requests.pop(msg.get("re", ""), None)
        work = self._work.get(record.key)
        already = record.applied or (work is not None and (
            work.result is not None or (work.running is not None and work.running.kind == "result")))
        record.state = "done"
        record.error_code = ""
        if record.total:
            record.step = record.total
        if already:
            self._touch(record)
            return  # a duplicate (fetched again after a reconnect): applied once only
        entry = self._lookup(record.pipeline)
        if entry is None:
            self._touch(record, message=f"done; no result handler for {record.pipeline!r} in this add-on")
            return
        work = self._work.setdefault(record.key, _Work())
        if work.partial is not None:
            record.partials_dropped += 1
            self._release(work.partial)
            work.partial = None
        if work.running is not None and work.running.kind == "partial":
            self._close(work.running)
            work.running = None
        work.result = msg.get("outputs", {})
        self._touch(record, message="done; applying result")

    def _on_cancelled(self, msg: dict) -> None:
        record = self._record_for(msg)
        if record is None:
            return
        self._requests.pop(msg.get("re", ""), None)
        record.state = "cancelled"
        self._drop_waiting(record.key)
        self._touch(record, message="cancelled")

    def _on_error(self, msg: dict) -> None:
        code = str(msg.get("code", "internal"))
        text = str(msg.get("message", ""))
        entry = self._requests.pop(msg.get("re", ""), None)
        request_type = entry[0] if entry else None
        record = self._record_for(msg) or (self.jobs.get(entry[1]) if entry else None)
        if record is None:
            log.warning("server error %s: %s", code, text)
            return
        if request_type == "cancel":
            # The job ended before the cancel landed; its own final event says how.
            self._touch(record, message=f"cancel refused: {text}")
            return
        if code == "cancelled" and msg.get("job"):
            # A fetch of a job that was cancelled (while we were away) answers this way.
            record.state = "cancelled"
            if record.id:
                self.client.unwatch(record.id)
            self._drop_waiting(record.key)
            self._touch(record, message="cancelled")
            return
        record.state = "failed"
        record.error_code = code
        if record.id:
            self.client.unwatch(record.id)
        self._drop_waiting(record.key)
        detail = msg.get("detail") or {}
        field_name = detail.get("field") if isinstance(detail, dict) else None
        suffix = f" (field {field_name})" if field_name else ""
        message = f"{code}: {text}{suffix}"
        entry = self._lookup(record.pipeline)
        if entry is not None and entry.on_failure is not None:
            # The feature's fallback (e.g. an import that can do without the server); its own
            # failure must not break event routing.
            try:
                note = entry.on_failure(record, code, message)
            except Exception as exc:  # a handler bug: logged, the job stays failed
                log.exception("failure handler of %s", record.pipeline)
                note = f"the fallback failed too: {exc}"
            if note:
                message = f"{message}; {note}"
        self._touch(record, message=message)

    def _on_status(self, msg: dict) -> None:
        self._requests.pop(msg.get("re", ""), None)
        entries = msg.get("jobs", []) or []
        for entry in entries:
            record = self.jobs.get(str(entry.get("job", "")))
            if record is None:
                continue
            state = entry.get("state")
            if state not in ALL_STATES:
                continue
            if state == "done" and not record.applied and record.state != "done":
                self.fetch(record.key)
            elif state in ("failed", "cancelled") and not record.finished:
                record.state = state
                self.client.unwatch(record.id)
                self._touch(record, message=state)
            elif state in ("queued", "running") and not record.finished:
                record.state = state
                record.step = int(entry.get("step", record.step) or 0)
                record.total = int(entry.get("total", record.total) or 0)
                self._touch(record)

    def fetch(self, key: str, clock: Callable[[], float] = time.monotonic) -> None:
        """Ask the server for a job's stored result again (at most once per FETCH_RETRY_S)."""
        record = self.jobs[key]
        now = clock()
        if now - self._fetched_at.get(record.key, -FETCH_RETRY_S) < FETCH_RETRY_S:
            return  # one is on its way; results can be hundreds of MB
        self._fetched_at[record.key] = now
        request_id = self.client.fetch(record.id)
        self._requests[request_id] = ("fetch", record.key)

    # -- applying results ----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while some result or partial is waiting to be applied."""
        return any(work.pending for work in self._work.values())

    def apply(self, budget_s: float = 0.02, clock: Callable[[], float] = time.monotonic) -> bool:
        """Step pending result applications until `budget_s` is spent.

        At least one step runs per call (so work always advances); each step is one `next()` of a
        handler's generator, or a whole handler call for handlers that return None.

        Args:
            budget_s: Seconds this call may spend (checked between steps).
            clock: Monotonic clock, seconds.

        Returns:
            True if work remains.
        """
        self.stats.calls += 1
        start = clock()
        deadline = start + budget_s
        first = True
        while first or clock() + self._step_estimate < deadline:
            key = self._next_work_key()
            if key is None:
                return False
            first = False
            step_start = clock()
            label = self._step(key)
            elapsed = clock() - step_start
            self.stats.steps += 1
            if elapsed > self.stats.longest_step_s:
                self.stats.longest_step_s, self.stats.longest_step = elapsed, label
            # A step is not started unless the typical one fits in what is left of the budget,
            # so a callback lasts about max(budget, one step), not budget + one step.
            self._step_estimate = 0.5 * self._step_estimate + 0.5 * elapsed
        return self.busy

    def _next_work_key(self) -> Optional[str]:
        # Round-robin: the first job with work goes to the back after its step.
        for key in list(self._work):
            if self._work[key].pending:
                self._work[key] = self._work.pop(key)
                return key
            del self._work[key]
        return None

    def _step(self, key: str) -> str:
        """One bounded piece of work for job `key`; returns a label saying what it was."""
        work = self._work[key]
        record = self.jobs.get(key)
        if record is None:
            self._drop_work(key)
            return "dropped"
        if work.running is None:
            if work.result is not None:
                kind, outputs, work.result = "result", work.result, None
                if work.partial is not None:
                    self._release(work.partial)
                    work.partial = None
            else:
                kind, outputs, work.partial = "partial", work.partial, None
            entry = self._lookup(record.pipeline)
            handler = None if entry is None else (entry.on_result if kind == "result" else entry.on_partial)
            label = f"{record.pipeline} {kind}: start"
            if handler is None:
                self._release(outputs)
                return label
            try:
                steps = handler(record, outputs)
            except Exception as exc:  # a handler bug must not kill the timer; the job says why
                self._release(outputs)
                self._fail_apply(record, kind, exc)
                return label
            if steps is None:
                self._release(outputs)
                self._finish(record, kind)
                return label
            work.running = _Application(kind, iter(steps), outputs)
            return label
        application = work.running
        label = f"{record.pipeline} {application.kind}: end"
        try:
            label = f"{record.pipeline} {application.kind}: {next(application.steps)}"
            application.count += 1
        except StopIteration:
            work.running = None
            self._release(application.outputs)
            self._finish(record, application.kind)
        except Exception as exc:  # see above
            work.running = None
            self._release(application.outputs)
            self._fail_apply(record, application.kind, exc)
        return label

    def _finish(self, record: JobRecord, kind: str) -> None:
        if kind == "result":
            record.applied = True
            self._touch(record, message="done")
        else:
            record.partials_applied += 1
            self._touch(record)

    def _fail_apply(self, record: JobRecord, kind: str, exc: Exception) -> None:
        log.exception("applying the %s of job %s (%s) failed", kind, record.key, record.pipeline, exc_info=exc)
        record.error_code = "apply_failed"
        self._touch(record, message=f"applying the {kind} failed: {exc}")

    def _drop_waiting(self, key: str) -> None:
        """Drop job `key`'s waiting partial and result; a running application goes on to its end."""
        work = self._work.get(key)
        if work is None:
            return
        self._release(work.partial)
        self._release(work.result)
        work.partial = work.result = None

    def _drop_work(self, key: str) -> None:
        work = self._work.pop(key, None)
        if work is None:
            return
        if work.running is not None:
            self._close(work.running)
        self._release(work.partial)
        self._release(work.result)

    def _close(self, application: _Application) -> None:
        close = getattr(application.steps, "close", None)
        if close is not None:
            close()
        self._release(application.outputs)

    @staticmethod
    def _touch(record: JobRecord, message: Optional[str] = None) -> None:
        if message is not None:
            record.message = message
        record.revision += 1
