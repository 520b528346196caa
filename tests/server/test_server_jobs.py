"""server.jobs.JobHandle: progress rate limit, final report, previews and partial copies."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from addon.wire import protocol
from pipelines.base import Cancelled
from server.jobs import JobHandle, JobRecord


@pytest.fixture
def sockets():
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://job-handle-test")
    push = ctx.socket(zmq.PUSH)
    push.connect("inproc://job-handle-test")
    yield push, pull
    ctx.destroy(linger=0)


def drain(pull) -> list[tuple[dict, dict]]:
    out = []
    while pull.poll(0):
        frames = pull.recv_multipart()
        out.append((msgpack.unpackb(frames[1]), protocol.decode(frames[2:])))
    return out


def test_progress_is_rate_limited_and_the_last_report_is_flushed(sockets):
    push, pull = sockets
    handle = JobHandle(JobRecord(job="j1", pipeline="p"), "cpu", push)
    for step in range(1, 500):                 # far faster than 10/s: most are held back
        handle.progress("train", step, 1000, f"step {step}")
    sent = [event for _, event in drain(pull)]
    assert 1 <= len(sent) < 20 and sent[0]["step"] == 1
    handle.flush_progress()
    last = drain(pull)[-1][1]
    assert last["step"] == 499 and last["message"] == "step 499" and last["job"] == "j1"
    handle.flush_progress()
    assert drain(pull) == []                   # nothing held back twice
    handle.progress("eval", 1, 10)             # a new stage always goes out
    handle.progress("eval", 10, 10)            # and so does the last step
    meta = [m for m, _ in drain(pull)]
    assert [(m["step"], m["total"]) for m in meta] == [(1, 10), (10, 10)]


def test_progress_spacing_is_at_least_a_tenth_of_a_second(sockets):
    push, pull = sockets
    handle = JobHandle(JobRecord(job="j2", pipeline="p"), "cpu", push)
    sent_at = []
    deadline = time.monotonic() + 0.55
    step = 0
    while time.monotonic() < deadline:
        step += 1
        handle.progress("s", step, 10**9)
        if pull.poll(0):
            drain(pull)
            sent_at.append(handle._last_sent)   # the monotonic time it was sent
    gaps = np.diff(sent_at)
    assert 2 <= len(sent_at) <= 7 and (gaps >= 0.1).all(), gaps


def test_previews_and_partials_are_copied_when_writable(sockets):
    push, pull = sockets
    handle = JobHandle(JobRecord(job="j3", pipeline="p"), "cpu", push)
    image = np.zeros((4, 5, 3), np.uint8)
    handle.progress("render", 1, 2, preview=image)
    image[:] = 255                              # the pipeline keeps drawing
    _, event = drain(pull)[0]
    assert event["preview"].max() == 0 and event["preview"].shape == (4, 5, 3)
    handle.progress("render", 2, 2, preview=b"\x89PNG")
    assert drain(pull)[0][1]["preview"] == b"\x89PNG"
    with pytest.raises(ValueError, match="preview"):
        handle.progress("render", 2, 2, preview=np.zeros((4, 5), np.float32))

    weights = np.ones(3, "<f4")
    handle.partial({"w": weights, "n": 1})
    weights[:] = 7                              # changed right after partial()
    _, event = drain(pull)[0]
    assert event["type"] == "partial" and event["outputs"]["w"].tolist() == [1, 1, 1]


def test_check_cancel(sockets):
    push, _ = sockets
    record = JobRecord(job="j4", pipeline="p")
    handle = JobHandle(record, "cpu", push)
    handle.check_cancel()
    record.cancel_event.set()
    with pytest.raises(Cancelled):
        handle.check_cancel()
