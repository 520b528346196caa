"""The Ray executor: jobs run on a pool of Ray actors, one per GPU (or N CPU actors).

``nstudio serve --executor ray [--ray-address ADDRESS] [--ray-actors N]``. The broker, the
protocol and the pipelines are unchanged (``server/executors.py`` is the seam): Ray does the
placement, failure detection and object transfer, nothing here schedules.

How a job runs::

    socket thread --submit--> RayExecutor ---- one driver thread per job ------------------+
                                                 | per piece: actor.run(...) (a streaming   |
                                                 | generator of events); the driver thread  |
                                                 | merges pieces, stores the result, pushes |
                                                 | [job, meta, frames] to EVENTS_ENDPOINT   |
                                                 +------------------------------------------+

- Each :class:`PipelineWorker` actor imports the pipelines once and keeps its own models warm
  (its registry), on the GPU Ray gave it (``CUDA_VISIBLE_DEVICES``: it sees ``cuda:0``).
- Inside the actor the pipeline runs on a thread of its own with a :class:`_QueueHandle`:
  progress (rate-limited there), partials and the end are queued and yielded by ``run()``,
  Ray's streaming generator, so they reach the server in order as they happen.
- Cancel: ``actor.cancel(job)`` sets the event the job's ``check_cancel()`` reads (the actor
  is threaded, so the call runs while ``run()`` does).
- A pipeline with :class:`pipelines.base.Frames` (``splat.render``) is split by frame across
  the idle actors (``server/sharding.py``); progress is summed, partials go out per frame in
  frame order, the result is reassembled in frame order before it is stored.
- An actor that dies mid-job (``ray.kill``, a crash, its node lost) is replaced by a new one,
  and its piece runs again there once; a second death fails the job with a message naming
  both. Nothing stored is touched, and the server keeps serving.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import zmq

from addon.wire import protocol
from pipelines.base import Pipeline

from . import sharding
from .executors import Executor, ExecutorError
from .jobs import (EVENTS_ENDPOINT, PROGRESS_HZ, JobHandle, JobRecord, deliver_end,
                   event_frames, run_to_end)
from .store import Store

log = logging.getLogger(__name__)

#: Every Neural Studio actor lives in this Ray namespace (``nstudio doctor`` looks there).
NAMESPACE = "neural-studio"
ACTOR_PREFIX = "nstudio-worker"
#: How long actors may take to start (import the pipelines) before the server gives up.
READY_TIMEOUT_S = 120.0
#: How long a replacement for a dead actor may take to start before its job fails.
REPLACE_TIMEOUT_S = 60.0


class RayStartError(ExecutorError):
    """The Ray executor cannot start (no Ray, no cluster, actors that do not start)."""


def _quiet_ray_environment() -> None:
    # No usage reports from a studio's render boxes; set before `import ray`.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # The actors' log lines reach the server's log prefixed "(PipelineWorker pid=...)";
    # without colour codes when the log is not a terminal.
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


# The actor -----------------------------------------------------------------------------------

class _QueueHandle(JobHandle):
    """A :class:`~server.jobs.JobHandle` whose events are queued for ``run()`` to yield."""

    def __init__(self, record: JobRecord, device: str, out: queue.SimpleQueue):
        super().__init__(record, device, None)
        self._out = out

    def emit(self, meta: dict, header: dict) -> None:
        self._out.put(("event", meta, header))


class PipelineWorker:
    """The Ray actor (wrapped with ``ray.remote`` when the executor starts).

    Args:
        modules: the pipeline modules to import (the server's list, ``--pipelines`` included).
        log_level: the server's log level.
        log_format: the server's log format.
    """

    def __init__(self, modules: tuple, log_level: str, log_format: str,
                 models_dir: str | None = None, models_budget_bytes: int = 0):
        import ray

        logging.basicConfig(level=log_level.upper(), format=log_format)
        from pipelines.registry import discover

        self.pipelines, self.failures = discover(modules)
        self.gpus = [str(gpu) for gpu in ray.get_gpu_ids()]
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, which torch then calls cuda:0.
        self.device = "cuda:0" if self.gpus else "cpu"
        self.device_info = {"kind": "cpu"}
        if self.gpus:
            from .device import describe_cuda

            self.device_info = describe_cuda(0)[1]
        from .models import ModelRegistry

        # This actor's own registry, so its models stay warm on its GPU.
        self.registry = ModelRegistry(models_dir, models_budget_bytes or None, self.device)
        self._cancels: dict[str, threading.Event] = {}
        self._early_cancels: collections.deque = collections.deque(maxlen=256)
        self._lock = threading.Lock()

    def info(self) -> dict:
        """Where this actor runs, for ``nstudio doctor`` and the start-up log."""
        import ray

        context = ray.get_runtime_context()
        return {"node": context.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "device": self.device, "gpus": self.gpus,
                "device_info": self.device_info,
                "running": sorted(self._cancels)}

    def run(self, job: str, pipeline: str, inputs: dict, params, override: dict | None = None):
        """Run one job (or one piece of it); yields its events, the last one
        ``("end", kind, payload)`` as :func:`server.jobs.run_to_end` returns it.

        ``override`` replaces some inputs (a piece's own cameras): the job's inputs are then
        one object in Ray's store that every piece shares (fetched once per node).
        """
        if override:
            inputs = dict(inputs, **override)
        record = JobRecord(job=job, pipeline=pipeline, inputs=inputs, params=params)
        with self._lock:
            self._cancels[job] = record.cancel_event
            if job in self._early_cancels:
                record.cancel_event.set()
        out: queue.SimpleQueue = queue.SimpleQueue()
        handle = _QueueHandle(record, self.device, out)

        def work() -> None:
            try:
                found = self.pipelines.get(pipeline)
                if found is None:
                    why = next(iter(self.failures.values()), "not in this worker's pipelines")
                    kind, payload = "error", {
                        "code": "unavailable", "detail": None,
                        "message": f"{pipeline} cannot run on Ray worker {os.getpid()} at "
                                   f"{_node_ip()}: {why}"}
                else:
                    log.info("job %s (%s) started on %s", job, pipeline, self.device)
                    kind, payload = run_to_end(found, inputs, params, handle, self.registry)
                handle.flush_progress()
            except BaseException as error:  # never leave run() waiting for an end
                log.exception("job %s: the worker failed", job)
                kind, payload = "error", {"code": "internal", "detail": None,
                                          "message": f"internal error in {pipeline}: "
                                                     f"{type(error).__name__}: {error}"}
            out.put(("end", kind, payload))

        thread = threading.Thread(target=work, name=f"nstudio-job-{job}", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                yield item
                if item[0] == "end":
                    return
        finally:
            # Also when the server stopped reading (generator closed): stop the pipeline.
            record.cancel_event.set()
            with self._lock:
                self._cancels.pop(job, None)

    def cancel(self, job: str) -> bool:
        """Make the job's next ``check_cancel()`` raise; True when it was running here."""
        with self._lock:
            event = self._cancels.get(job)
            if event is None:
                # The cancel overtook the run() call it is about: run() will see it.
                self._early_cancels.append(job)
                return False
        event.set()
        return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody answers at (``ray.init`` would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise RayStartError(f"cannot join the Ray cluster at {address}: nothing answers there "
                            f"({error}); start one with `ray start --head` and pass the "
                            "address it prints") from None


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # only for a message
        return "?"


# The server side -----------------------------------------------------------------------------

@dataclass
class _Slot:
    """One actor of the pool (replaced when it dies)."""

    index: int
    actor: object = None
    name: str = ""
    generation: int = 0
    info: dict = field(default_factory=dict)
    busy: bool = False


@dataclass
class _Run:
    """One running job as the executor tracks it."""

    record: JobRecord
    slots: list
    pieces: list
    frames: object = None          # the pipeline's Frames, or None
    stopping: bool = False         # the server is stopping: a death is not retried
    thread: threading.Thread | None = None


class RayExecutor(Executor):
    """Runs jobs on a pool of Ray actors; see the module docstring.

    Args:
        pipelines: name -> Pipeline, as the server discovered them.
        modules: the pipeline modules each actor imports.
        address: a Ray cluster to join (``ray start --head`` prints it; ``"auto"`` finds a
            local one); None starts a private Ray on this machine.
        actors: actors in the pool; 0 = one per GPU of the cluster, or one CPU actor when
            it has none.
        device: the server's ``--device``: ``cpu`` makes CPU actors even where GPUs exist;
            ``cuda`` needs GPUs in the cluster; ``auto`` uses them where there are any.
        log_level, log_format: the server's logging, repeated in the actors.
    """

    name = "ray"

    def __init__(self, pipelines: dict[str, Pipeline], modules: tuple, address: str | None = None,
                 actors: int = 0, device: str = "auto", log_level: str = "info",
                 log_format: str = "%(asctime)s %(levelname)s %(name)s: %(message)s",
                 models_dir: str | None = None, models_budget_bytes: int = 0):
        self.pipelines = pipelines
        self.models_dir, self.models_budget_bytes = models_dir, models_budget_bytes
        self.modules = tuple(modules)
        # Ray's own RAY_ADDRESS counts as --ray-address (ray.init would join it anyway).
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.actors = actors
        self.device = device
        self.log_level, self.log_format = log_level, log_format
        self.slots: list[_Slot] = []
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._server_id = secrets.token_hex(3)
        self._started_ray = False

    # Starting and stopping ------------------------------------------------------------------

    def start(self, context: zmq.Context, store: Store) -> None:
        self.context, self.store = context, store
        _quiet_ray_environment()
        try:
            import ray
        except ImportError as error:
            raise RayStartError("--executor ray needs Ray: pip install 'neural-studio[ray]' "
                                f"({error})") from None
        self.ray = ray
        if self.address:
            _check_reachable(self.address)
        try:
            if self.address:
                ray.init(address=self.address, namespace=NAMESPACE, log_to_driver=True)
            else:
                # A private Ray on this machine; one CPU per CPU actor at least.
                ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=True,
                         num_cpus=max(os.cpu_count() or 1, self.actors))
        except Exception as error:
            raise RayStartError(f"cannot {'join the Ray cluster at ' + self.address if self.address else 'start Ray'}: "
                                f"{type(error).__name__}: {error}") from None
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        wanted = self.device.strip().lower()
        if wanted.startswith("cuda") and gpus == 0:
            self._stop_ray()
            raise RayStartError(f"--device {self.device}: the Ray cluster has no GPUs "
                                f"({resources.get('CPU', 0):g} CPUs); use --device auto or cpu")
        self._use_gpus = gpus > 0 and wanted != "cpu"
        count = self.actors or (gpus if self._use_gpus else 1)
        self._remote = ray.remote(PipelineWorker)
        self.slots = [_Slot(index=i) for i in range(count)]
        for slot in self.slots:
            self._spawn(slot)
        try:
            infos = ray.get([slot.actor.info.remote() for slot in self.slots],
                            timeout=READY_TIMEOUT_S)
        except Exception as error:
            self._stop_ray()
            raise RayStartError(
                f"{count} Ray worker actor(s) did not start within {READY_TIMEOUT_S:.0f} s "
                f"(the cluster has {resources.get('CPU', 0):g} CPUs, {gpus} GPUs; each actor "
                f"needs 1 {'GPU' if self._use_gpus else 'CPU'}): {type(error).__name__}: "
                f"{error}") from None
        for slot, info in zip(self.slots, infos):
            slot.info = info
        log.info("Ray executor: %d actor(s) on %d node(s): %s", count,
                 len({info["node"] for info in infos}),
                 ", ".join(f"{s.name}@{s.info['ip']} {s.info['device']}" for s in self.slots))

    def _spawn(self, slot: _Slot) -> None:
        """Create the slot's actor (not waiting for it)."""
        slot.generation += 1
        slot.name = f"{ACTOR_PREFIX}-{self._server_id}-{slot.index}.{slot.generation}"
        options = {"name": slot.name, "namespace": NAMESPACE, "max_concurrency": 4,
                   "num_cpus": 1}
        if self._use_gpus:
            options["num_gpus"] = 1
        slot.actor = self._remote.options(**options).remote(
            self.modules, self.log_level, self.log_format, self.models_dir, self.models_budget_bytes)
        slot.info = {}

    def shutdown(self, grace: float) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stopping = True
            self.cancel(run.record)
        deadline = time.monotonic() + grace
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, deadline - time.monotonic()))
        # Jobs that ignored the cancel: their actors go, and with them the devices' memory.
        for slot in self.slots:
            if slot.actor is not None:
                try:
                    self.ray.kill(slot.actor)
                except Exception:  # already dead
                    pass
        for run in runs:
            if run.thread is not None:
                run.thread.join(max(0.0, min(2.0, deadline + 2.0 - time.monotonic())))
        self._stop_ray()

    def _stop_ray(self) -> None:
        try:
            self.ray.shutdown()
        except Exception as error:  # stopping anyway
            log.warning("ray.shutdown failed: %s", error)

    # The broker's calls ---------------------------------------------------------------------

    def has_room(self) -> bool:
        with self._lock:
            return any(not slot.busy for slot in self.slots)

    def submit(self, record: JobRecord) -> None:
        pipeline = self.pipelines[record.pipeline]
        with self._lock:
            idle = [slot for slot in self.slots if not slot.busy]
            pieces = [record.inputs]
            if pipeline.frames is not None and len(idle) > 1:
                pieces = sharding.split(record.inputs, pipeline.frames, len(idle))
            slots = idle[:len(pieces)]
            for slot in slots:
                slot.busy = True
            run = _Run(record=record, slots=slots, pieces=pieces, frames=pipeline.frames)
            self._runs[record.job] = run
        run.thread = threading.Thread(target=self._drive, args=(run,), daemon=True,
                                      name=f"nstudio-ray-{record.job}")
        run.thread.start()

    def cancel(self, record: JobRecord) -> None:
        record.cancel_event.set()
        with self._lock:
            run = self._runs.get(record.job)
            slots = list(run.slots) if run else []
        for slot in slots:
            self._tell_cancel(slot, record.job)

    def _tell_cancel(self, slot: _Slot, job: str) -> None:
        actor = slot.actor
        if actor is not None:
            try:
                actor.cancel.remote(job)    # fire and forget; a dead actor is handled by _pump
            except Exception as error:
                log.debug("cancel of %s on %s not sent: %s", job, slot.name, error)

    def device_info(self) -> dict | None:
        """The first actor's device: what ``welcome`` tells clients jobs run on (the front
        door itself may have no GPU)."""
        for slot in self.slots:
            if slot.info.get("device_info"):
                return slot.info["device_info"]
        return None

    def describe(self) -> dict:
        described = {"executor": self.name, "address": self.address or "local",
                     "actors": [{"name": s.name, **s.info} for s in self.slots]}
        try:
            described["nodes"] = cluster_nodes(self.ray)
        except Exception as error:  # for a report only
            described["nodes"] = f"unknown ({error})"
        return described

    # One job ----------------------------------------------------------------------------------

    def _drive(self, run: _Run) -> None:
        """The job's driver thread: start its pieces, pass their events on, end the job."""
        record = run.record
        events = self.context.socket(zmq.PUSH)
        events.setsockopt(zmq.SNDHWM, 0)
        events.setsockopt(zmq.LINGER, 2000)
        events.connect(EVENTS_ENDPOINT)

        def send(meta: dict, frames: list) -> None:
            events.send_multipart(event_frames(record.job, meta, frames), copy=False)

        started = time.monotonic()
        released = False

        def release_then_send(meta: dict, frames: list) -> None:
            # Room again before the terminal event: the broker dispatches on that event.
            nonlocal released
            self._release(run)
            released = True
            send(meta, frames)

        try:
            kind, payload = self._collect(run, send)
            deliver_end(record.job, record.pipeline, record.keep, kind, payload, self.store,
                        release_then_send)
            log.info("job %s %s after %.2f s on %d Ray actor(s)", record.job,
                     {"result": "done", "cancelled": "cancelled"}.get(kind, "failed"),
                     time.monotonic() - started, len(run.slots))
        except zmq.ZMQError as error:  # the server is gone: nobody to tell
            log.debug("job %s: events socket closed (%s)", record.job, error)
        except Exception as error:  # a bug here must still end the job
            log.exception("job %s: the Ray executor failed", record.job)
            if not released:
                deliver_end(record.job, record.pipeline, record.keep, "error",
                            {"code": "internal", "detail": None,
                             "message": f"internal error in the Ray executor: "
                                        f"{type(error).__name__}: {error} (the server log has "
                                        "the traceback)"}, self.store, release_then_send)
        finally:
            if not released:
                self._release(run)
            events.close()

    def _release(self, run: _Run) -> None:
        with self._lock:
            for slot in run.slots:
                slot.busy = False
            self._runs.pop(run.record.job, None)

    def _collect(self, run: _Run, send) -> tuple[str, object]:
        """Run every piece, pass their events on, return the job's end (run_to_end's form)."""
        count = len(run.pieces)
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        if count == 1:
            shared, overrides = run.record.inputs, [None]
        else:
            # The inputs go into Ray's object store once (each node then fetches them once,
            # however many of its actors render); each piece carries only its own cameras.
            shared = self.ray.put(run.record.inputs)
            overrides = [{run.frames.input: piece[run.frames.input]} for piece in run.pieces]
        for index, (slot, override) in enumerate(zip(run.slots, overrides)):
            threading.Thread(target=self._pump, args=(run, index, slot, shared, override,
                                                      inbox),
                             daemon=True, name=f"nstudio-ray-{run.record.job}-{index}").start()
        progress = _Progress(run.record.job, count,
                             sharding.frame_count(run.record.inputs, run.frames)
                             if run.frames is not None else 0)
        in_order = sharding.InOrder() if run.frames is not None else None
        results: list = [None] * count
        ends: list = [None] * count
        while any(end is None for end in ends):
            index, item = inbox.get()
            if item[0] == "event":
                self._forward(run, index, item[1], item[2], send, progress, in_order)
            elif item[0] == "retry":
                progress.restart(index)
            else:
                _, kind, payload = item
                ends[index] = (kind, payload)
                if kind == "result":
                    results[index] = payload
                elif count > 1:
                    # One piece failed or was cancelled: the others stop too.
                    for other, slot in enumerate(run.slots):
                        if ends[other] is None:
                            self._tell_cancel(slot, run.record.job)
        progress.flush(send)
        errors = [payload for kind, payload in ends if kind == "error"]
        if errors:
            return "error", errors[0]
        if any(kind == "cancelled" for kind, _ in ends):
            return "cancelled", None
        return "result", sharding.merge(results, run.frames) if count > 1 else results[0]

    def _forward(self, run: _Run, index: int, meta: dict, header: dict, send,
                 progress: "_Progress", in_order) -> None:
        pieces = len(run.pieces)
        if meta["type"] == "progress":
            if pieces == 1:
                send(meta, protocol.encode(header))
            else:
                progress.update(index, header, send)
            return
        outputs = header.get("outputs")
        key = run.frames.partial_key if run.frames is not None else None
        if in_order is None or not isinstance(outputs, dict) or key not in outputs:
            send(meta, protocol.encode(header))
            return
        frame = sharding.job_frame(index, int(outputs[key]), pieces)
        header = dict(header, outputs=dict(outputs, **{key: frame}))
        for due_meta, due_header in in_order.add(frame, (meta, header)):
            send(due_meta, protocol.encode(due_header))

    def _pump(self, run: _Run, index: int, slot: _Slot, inputs, override: dict | None,
              inbox: queue.SimpleQueue) -> None:
        """One piece on one actor: its events into ``inbox``; an actor that dies is replaced
        and the piece run again there, once."""
        ray = self.ray
        record = run.record
        deaths: list[str] = []
        while True:
            try:
                actor = self._ensure_actor(slot)
                stream = actor.run.options(num_returns="streaming").remote(
                    record.job, record.pipeline, inputs, record.params, override)
                if record.cancel_event.is_set():
                    self._tell_cancel(slot, record.job)   # cancelled while the actor started
                for ref in stream:
                    item = ray.get(ref)
                    inbox.put((index, item))
                    if item[0] == "end":
                        return
                raise RuntimeError("the actor's event stream ended without the job's end")
            except ray.exceptions.RayActorError as error:
                reason = _death_reason(error)
                deaths.append(reason)
                self._forget(slot, actor)
                if record.cancel_event.is_set() or run.stopping:
                    inbox.put((index, ("end", "cancelled", None)))
                    return
                if len(deaths) == 1:
                    log.warning("job %s: Ray actor %s died (%s); running it again on a new "
                                "actor", record.job, slot.name, reason)
                    inbox.put((index, ("retry",)))
                    continue
                inbox.put((index, ("end", "error", {
                    "code": "internal", "detail": None,
                    "message": f"job {record.job}: the Ray worker actor running it died "
                               f"({deaths[0]}), and so did the one it was retried on "
                               f"({reason}); it was not retried again"})))
                return
            except _NoActor as error:
                inbox.put((index, ("end", "error", {"code": "unavailable", "detail": None,
                                                    "message": str(error)})))
                return
            except Exception as error:  # Ray could not run it: a clear failure, not a hang
                log.exception("job %s: Ray failed to run it", record.job)
                inbox.put((index, ("end", "error", {
                    "code": "internal", "detail": None,
                    "message": f"job {record.job}: Ray could not run it: "
                               f"{type(error).__name__}: {error} (the server log has the "
                               "traceback)"})))
                return

    def _ensure_actor(self, slot: _Slot):
        """The slot's live actor, making a new one (and waiting for it) where it died."""
        if slot.actor is not None:
            return slot.actor
        self._spawn(slot)
        try:
            slot.info = self.ray.get(slot.actor.info.remote(), timeout=REPLACE_TIMEOUT_S)
        except Exception as error:
            actor, slot.actor = slot.actor, None
            try:
                self.ray.kill(actor)
            except Exception:  # it never started
                pass
            raise _NoActor(f"no Ray worker actor could be started within "
                           f"{REPLACE_TIMEOUT_S:.0f} s to replace one that died "
                           f"({type(error).__name__}: {error})") from None
        log.info("Ray actor %s started on %s (%s)", slot.name, slot.info.get("ip"),
                 slot.info.get("device"))
        return slot.actor

    def _forget(self, slot: _Slot, actor) -> None:
        if slot.actor is actor:
            slot.actor = None
            try:
                self.ray.kill(actor)   # a restarting actor is not reused half-way
            except Exception:  # already gone
                pass


class _NoActor(Exception):
    """No actor could be started for a job."""


def _death_reason(error: Exception) -> str:
    """The short why of a RayActorError (its text is many lines of ids)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "because" in line or "killed" in line.lower()]
    return (useful or lines or [type(error).__name__])[-1]


class _Progress:
    """Sums the progress of a job's pieces into one report, rate-limited like a JobHandle."""

    def __init__(self, job: str, pieces: int, frames: int):
        self.job = job
        self.steps = [0] * pieces
        self.totals = [0] * pieces
        self.frames = frames
        self.pieces = pieces
        self.stage = None
        self.last_sent = -float("inf")
        self.pending: dict | None = None

    def restart(self, index: int) -> None:
        self.steps[index] = 0

    def update(self, index: int, header: dict, send) -> None:
        self.steps[index], self.totals[index] = header["step"], header["total"]
        step, total = sum(self.steps), max(sum(self.totals), self.frames)
        fields = {"job": self.job, "stage": header["stage"], "step": step, "total": total,
                  "message": f"{step}/{total} on {self.pieces} workers"}
        if "preview" in header:
            fields["preview"] = header["preview"]
        report = protocol.make_header("progress", **fields)
        now = time.monotonic()
        if (now - self.last_sent >= 1.0 / PROGRESS_HZ or header["stage"] != self.stage
                or step >= total):
            self._send(report, send, now)
        else:
            self.pending = report

    def flush(self, send) -> None:
        if self.pending is not None:
            self._send(self.pending, send, time.monotonic())

    def _send(self, report: dict, send, now: float) -> None:
        self.pending, self.last_sent, self.stage = None, now, report["stage"]
        send({"type": "progress", "step": report["step"], "total": report["total"]},
             protocol.encode(report))


# The cluster, for `nstudio doctor` -----------------------------------------------------------

def cluster_nodes(ray) -> list[dict]:
    """The cluster's live nodes: address, CPUs, GPUs (and their kind where Ray knows it)."""
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        kinds = sorted(key.split(":", 1)[1] for key in resources
                       if key.startswith("accelerator_type:"))
        nodes.append({"ip": node.get("NodeManagerAddress"), "cpus": resources.get("CPU", 0),
                      "gpus": resources.get("GPU", 0), "gpu_kinds": kinds})
    return nodes


def cluster_report(address: str) -> list[str]:
    """Lines for ``nstudio doctor``: the cluster at ``address`` and the Neural Studio actors
    on it. Joins the cluster as a short-lived driver; starts nothing."""
    _quiet_ray_environment()
    try:
        import ray
    except ImportError as error:
        return [f"Ray: not installed ({error}); pip install 'neural-studio[ray]'"]
    try:
        _check_reachable(address)
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except Exception as error:
        return [f"Ray cluster at {address}: not reachable ({type(error).__name__}: {error})"]
    try:
        lines = [f"Ray {ray.__version__} cluster at {address}"]
        nodes = cluster_nodes(ray)
        for node in nodes:
            kinds = f" ({', '.join(node['gpu_kinds'])})" if node["gpu_kinds"] else ""
            lines.append(f"  node {node['ip']}: {node['cpus']:g} CPUs, {node['gpus']:g} GPUs"
                         f"{kinds}")
        lines.append(f"  {len(nodes)} node(s), {sum(n['cpus'] for n in nodes):g} CPUs, "
                     f"{sum(n['gpus'] for n in nodes):g} GPUs")
        names = sorted(entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
                       if entry.get("namespace") == NAMESPACE
                       and entry["name"].startswith(ACTOR_PREFIX))
        if not names:
            lines.append("  no Neural Studio worker actors (is `nstudio serve --executor ray "
                         f"--ray-address {address}` running?)")
        for name in names:
            try:
                info = ray.get(ray.get_actor(name, namespace=NAMESPACE).info.remote(), timeout=10)
                busy = f"running {', '.join(info['running'])}" if info["running"] else "idle"
                lines.append(f"  actor {name}: {info['ip']} pid {info['pid']} "
                             f"{info['device']} {busy}")
            except Exception as error:  # dead or starting: say so
                lines.append(f"  actor {name}: not answering ({type(error).__name__})")
        return lines
    finally:
        ray.shutdown()
