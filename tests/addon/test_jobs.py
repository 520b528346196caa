"""Job manager logic: stale partials, result priority, time-budgeted application."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from addon.core import handlers
from addon.core import jobs as jobs_mod


class _Recorder:
    """A real request sink: records what the manager asks the client to send."""

    def __init__(self):
        self.sent = []
        self.watched = set()
        self._ids = itertools.count()

    def _send(self, kind, **fields):
        request_id = f"r{next(self._ids)}"
        self.sent.append((kind, request_id, fields))
        return request_id

    def submit(self, pipeline, params=None, inputs=None, keep=True):
        return self._send("submit", pipeline=pipeline)

    def cancel(self, job):
        return self._send("cancel", job=job)

    def fetch(self, job):
        return self._send("fetch", job=job)

    def status(self, job=None):
        return self._send("status")

    def watch(self, job):
        self.watched.add(job)

    def unwatch(self, job):
        self.watched.discard(job)


def _steps_handler(log, steps=3):
    def handler(job, outputs):
        for i in range(steps):
            log.append((outputs["tag"], i))
            yield i
    return handler


def _accepted(manager, sink, job="J1"):
    record = manager.submit("p")
    manager.handle({"type": "accepted", "re": sink.sent[-1][1], "job": job, "position": 0})
    return record


def test_stale_partials_are_dropped_and_the_result_always_applied():
    sink, log = _Recorder(), []
    entry = handlers.HandlerEntry("p", on_result=_steps_handler(log), on_partial=_steps_handler(log))
    manager = jobs_mod.JobManager(sink, lookup=lambda name: entry)
    record = _accepted(manager, sink)
    for tag in ("p1", "p2", "p3"):
        manager.handle({"type": "partial", "job": "J1", "outputs": {"tag": tag}})
    manager.apply(budget_s=0.0)  # one step: p3 starts (p1, p2 were stale)
    manager.handle({"type": "partial", "job": "J1", "outputs": {"tag": "p4"}})
    manager.handle({"type": "partial", "job": "J1", "outputs": {"tag": "p5"}})
    while manager.apply(budget_s=0.0):
        pass
    # p3 ran to its end, p4 was replaced by p5 which then ran; p1, p2, p4 were dropped.
    assert [tag for tag, _ in log] == ["p3"] * 3 + ["p5"] * 3
    assert record.partials_applied == 2 and record.partials_dropped == 3

    log.clear()
    manager.handle({"type": "partial", "job": "J1", "outputs": {"tag": "p6"}})
    manager.apply(budget_s=0.0)
    manager.apply(budget_s=0.0)  # p6 is half applied...
    manager.handle({"type": "partial", "job": "J1", "outputs": {"tag": "p7"}})
    manager.handle({"type": "result", "job": "J1", "outputs": {"tag": "final"}})
    while manager.apply(budget_s=0.0):
        pass
    # ...the result stops it, drops p7, and is applied in full.
    assert log == [("p6", 0), ("final", 0), ("final", 1), ("final", 2)]
    assert record.applied and record.state == "done"
    # A duplicate result (fetched again after a reconnect) is not applied twice.
    manager.handle({"type": "result", "job": "J1", "outputs": {"tag": "again"}})
    assert not manager.apply(budget_s=0.0)
    assert ("again", 0) not in log


def test_apply_respects_the_time_budget():
    sink, log = _Recorder(), []
    entry = handlers.HandlerEntry("p", on_result=_steps_handler(log, steps=10))
    manager = jobs_mod.JobManager(sink, lookup=lambda name: entry)
    _accepted(manager, sink)
    manager.handle({"type": "result", "job": "J1", "outputs": {"tag": "r"}})
    ticks = itertools.count()
    clock = lambda: next(ticks) * 0.004  # every clock read is 4 ms later  # noqa: E731
    assert manager.apply(budget_s=0.02, clock=clock)
    # Deadline 20 ms = 5 reads; each step costs 2 reads (start, end) plus the loop check.
    assert 1 <= len(log) < 10


def test_handler_errors_mark_the_job_and_do_not_raise():
    sink = _Recorder()

    def broken(job, outputs):
        yield "ok"
        raise ValueError("attribute 'x' has the wrong length")

    manager = jobs_mod.JobManager(sink, lookup=lambda name: handlers.HandlerEntry("p", on_result=broken))
    record = _accepted(manager, sink)
    manager.handle({"type": "result", "job": "J1", "outputs": {}})
    while manager.apply(budget_s=0.0):
        pass
    assert record.error_code == "apply_failed" and "wrong length" in record.message
    assert not record.applied


def test_failure_handler_runs_once_on_failure_and_its_note_joins_the_message():
    sink = _Recorder()
    calls = []

    def fallback(job, code, message):
        calls.append((job.id, code, message))
        if len(calls) == 2:
            raise OSError("file gone")
        return "imported the stored joints instead"

    entry = handlers.HandlerEntry("p", on_result=lambda job, outputs: None, on_failure=fallback)
    manager = jobs_mod.JobManager(sink, lookup=lambda name: entry)
    record = _accepted(manager, sink)
    manager.handle({"type": "error", "job": "J1", "code": "unavailable", "message": "no SMPLH_FEMALE.pkl",
                    "detail": {"field": "params.body"}})
    assert record.state == "failed" and calls == [("J1", "unavailable", "unavailable: no SMPLH_FEMALE.pkl "
                                                   "(field params.body)")]
    assert record.message.endswith("; imported the stored joints instead")
    # A failing fallback is reported, not raised; a cancelled job calls nothing.
    second = _accepted(manager, sink, job="J2")
    manager.handle({"type": "error", "job": "J2", "code": "internal", "message": "boom"})
    assert second.state == "failed" and "the fallback failed too: file gone" in second.message
    third = _accepted(manager, sink, job="J3")
    manager.handle({"type": "cancelled", "job": "J3"})
    assert third.state == "cancelled" and len(calls) == 2


def test_attach_watches_unfinished_and_unapplied_jobs_only():
    sink = _Recorder()
    manager = jobs_mod.JobManager(sink, lookup=lambda name: None)
    manager.attach("run", "p", "running")
    manager.attach("done-new", "p", "done", applied=False)
    manager.attach("done-old", "p", "done", applied=True)
    manager.attach("gone", "p", "failed")
    assert sink.watched == {"run", "done-new"}
    with pytest.raises(ValueError, match="unknown state"):
        manager.attach("x", "p", "exploded")


def test_status_reply_fetches_jobs_that_finished_elsewhere():
    sink = _Recorder()
    manager = jobs_mod.JobManager(sink, lookup=lambda name: None)
    record = manager.attach("J9", "p", "running")
    manager.handle({"type": "status", "jobs": [{"job": "J9", "state": "running", "step": 4, "total": 10}]})
    assert (record.step, record.total) == (4, 10)
    manager.handle({"type": "status", "jobs": [{"job": "J9", "state": "done", "step": 10, "total": 10}]})
    assert [s for s in sink.sent if s[0] == "fetch"][0][2] == {"job": "J9"}


def test_echo_attribute_plan_maps_arrays_to_blender_types():
    n = 7
    outputs = {"gaussians": {
        "means": np.zeros((n, 3), np.float32), "opacities": np.ones(n, np.float32),
        "quats": np.ones((n, 4), np.float32), "shN": np.arange(n * 15 * 3, dtype=np.float32).reshape(n, 15, 3),
        "labels": np.arange(n, dtype=np.int32), "other": np.zeros(3, np.float32)}}
    points, plan = handlers.echo_attribute_plan(outputs)
    assert points is outputs["gaussians"]["means"]  # planning copies nothing
    kinds = {p.name: (p.btype, p.key, p.source.size) for p in plan}
    assert kinds["gaussians.opacities"] == ("FLOAT", "value", n)
    assert kinds["gaussians.quats"] == ("FLOAT_COLOR", "color", 4 * n)
    assert kinds["gaussians.labels"] == ("INT", "value", n)
    assert [k for k in kinds if k.startswith("gaussians.shN_")] == [f"gaussians.shN_{i}" for i in range(15)]
    shn14 = next(p for p in plan if p.name == "gaussians.shN_14")
    # Gathered in blocks of two rows: 4 blocks, then the flat buffer.
    steps = list(handlers.gather_in_blocks(shn14.source, shn14.dtype, block_bytes=2 * 45 * 4))
    assert steps[:-1] == [None] * 4
    assert steps[-1].flags.c_contiguous and steps[-1].dtype == np.float32
    assert np.array_equal(steps[-1].reshape(n, 3), outputs["gaussians"]["shN"][:, 14])
    labels = next(p for p in plan if p.name == "gaussians.labels")
    assert list(handlers.gather_in_blocks(labels.source, labels.dtype))[-1] is not None
    assert "gaussians.other" not in kinds  # not one row per point
    with pytest.raises(ValueError, match="no 'points'"):
        handlers.echo_attribute_plan({"colors": np.zeros((3, 3), np.float32)})


def test_handler_registry_refuses_duplicates():
    def on_result(job, outputs):
        return None

    handlers.register_result_handler("test.pipeline", on_result)
    try:
        with pytest.raises(ValueError, match="already registered"):
            handlers.register_result_handler("test.pipeline", on_result)
        assert handlers.get_handler("test.pipeline").on_result is on_result
    finally:
        handlers.unregister_result_handler("test.pipeline")
    assert handlers.get_handler("test.pipeline") is None
    with pytest.raises(KeyError):
        handlers.unregister_result_handler("test.pipeline")
