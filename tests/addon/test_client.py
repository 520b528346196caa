"""The non-blocking client against a real `nstudio serve` on loopback."""

from __future__ import annotations

import time

import numpy as np
import pytest

from addon.core import client as client_mod
from addon.core import jobs as jobs_mod


def wait_until(predicate, timeout_s: float, what: str, step=None):
    """Call `step()` (if given) and `predicate()` until it is truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if step is not None:
            step()
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_bad_endpoint_is_a_clear_error():
    with pytest.raises(client_mod.ClientError, match="endpoint"):
        client_mod.ConnectionConfig(endpoint="localhost:5557")


def test_requests_before_connecting_raise_not_connected():
    c = client_mod.Client(client_mod.ConnectionConfig(endpoint="tcp://127.0.0.1:9"))
    with pytest.raises(client_mod.NotConnected, match="not connected"):
        c.submit("system.echo")


def _connect(config) -> client_mod.Client:
    c = client_mod.Client(config)
    c.connect()
    wait_until(lambda: c.connected, 30, "the welcome", step=lambda: c.poll(0))
    return c


def _collect_until(c, predicate, timeout_s, what):
    seen = []

    def step():
        seen.extend(c.poll(0))

    wait_until(lambda: predicate(seen), timeout_s, what, step=step)
    return seen


def test_handshake_and_echo_round_trip_is_byte_exact(server, fast_config):
    c = _connect(fast_config(server.endpoint))
    try:
        pipelines = c.welcome["pipelines"]
        assert pipelines["system.echo"]["available"] is True
        assert "kind" in c.welcome["device"]
        rng = np.random.default_rng(0)
        inputs = {
            "points": rng.normal(size=(1000, 3)).astype(np.float32),
            "labels": rng.integers(-5, 5, size=1000).astype(np.int32),
            "nested": {"image": rng.integers(0, 255, size=(8, 6, 4)).astype(np.uint8)},
        }
        request = c.submit("system.echo", params={"steps": 3}, inputs=inputs)
        seen = _collect_until(c, lambda ms: any(m["type"] == "result" for m in ms), 30, "the echo result")
        accepted = next(m for m in seen if m["type"] == "accepted")
        assert accepted["re"] == request
        result = next(m for m in seen if m["type"] == "result")
        assert result["job"] == accepted["job"]
        assert any(m["type"] == "progress" and m["job"] == accepted["job"] for m in seen)
        out = result["outputs"]
        assert out["points"].tobytes() == inputs["points"].tobytes()
        assert out["labels"].dtype == np.int32 and np.array_equal(out["labels"], inputs["labels"])
        assert out["nested"]["image"].tobytes() == inputs["nested"]["image"].tobytes()
    finally:
        c.close()


def test_manager_reports_submit_errors_with_the_field(server, fast_config):
    c = _connect(fast_config(server.endpoint))
    manager = jobs_mod.JobManager(c, lookup=lambda name: None)
    try:
        unknown = manager.submit("no.such.pipeline")
        bad = manager.submit("system.echo", params={"steps": 0})
        wait_until(lambda: unknown.finished and bad.finished, 30, "both submits refused",
                   step=lambda: [manager.handle(m) for m in c.poll(0)])
        assert (unknown.state, unknown.error_code) == ("failed", "unknown_pipeline")
        assert (bad.state, bad.error_code) == ("failed", "invalid_params")
        assert "params.steps" in bad.message
    finally:
        c.close()


def test_cancel_a_running_job(server, fast_config):
    c = _connect(fast_config(server.endpoint))
    manager = jobs_mod.JobManager(c, lookup=lambda name: None)
    try:
        record = manager.submit("system.echo", params={"steps": 200, "step_seconds": 0.05},
                                inputs={"points": np.zeros((4, 3), np.float32)})
        pump = lambda: [manager.handle(m) for m in c.poll(0)]  # noqa: E731
        wait_until(lambda: record.state == "running", 30, "the job to run", step=pump)
        manager.cancel(record.key)
        wait_until(lambda: record.finished, 10, "the cancel", step=pump)
        assert record.state == "cancelled"
        assert record.id not in c.watched_jobs
        with pytest.raises(ValueError, match="already ended"):
            manager.cancel(record.key)
    finally:
        c.close()


def test_reconnects_after_the_server_is_killed_and_restarted(server, fast_config):
    c = _connect(fast_config(server.endpoint))
    manager = jobs_mod.JobManager(c, lookup=lambda name: None)
    pump = lambda: [manager.handle(m) for m in c.poll(0)]  # noqa: E731
    try:
        first = manager.submit("system.echo", inputs={"points": np.ones((3, 3), np.float32)})
        wait_until(lambda: first.state == "done", 30, "the first job", step=pump)
        long = manager.submit("system.echo", params={"steps": 400, "step_seconds": 0.05})
        wait_until(lambda: long.state == "running", 30, "the long job to run", step=pump)

        server.kill()
        wait_until(lambda: c.state in (client_mod.RECONNECTING, client_mod.CONNECTING), 10,
                   "the client to notice the dead server", step=pump)
        restarted = server.restarted()
        try:
            wait_until(lambda: c.connections == 2, 60, "the reconnect", step=pump)
            assert c.connected and c.generation >= 2
            # The job the server was running when it died is reported, not lost.
            wait_until(lambda: long.finished, 15, "the interrupted job's fate", step=pump)
            assert long.state == "failed" and "server stopped" in long.message
            # The new connection works for new jobs.
            after = manager.submit("system.echo", inputs={"x": np.arange(5, dtype=np.int64)})
            wait_until(lambda: after.state == "done", 30, "a job after the restart", step=pump)
        finally:
            restarted.stop()
    finally:
        c.close()


def test_result_finished_while_disconnected_is_fetched_and_applied(server, fast_config):
    """Blender closed mid-job: a new client re-attaches the saved job id and gets the result."""
    points = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    first = _connect(fast_config(server.endpoint))
    manager = jobs_mod.JobManager(first, lookup=lambda name: None)
    record = manager.submit("system.echo", params={"steps": 10, "step_seconds": 0.1}, inputs={"points": points})
    wait_until(lambda: record.id, 30, "accepted", step=lambda: [manager.handle(m) for m in first.poll(0)])
    first.close()  # "Blender quits" while the job runs

    applied = []
    from addon.core.handlers import HandlerEntry

    entry = HandlerEntry("system.echo", on_result=lambda job, outputs: applied.append(outputs["points"].copy()))
    second = client_mod.Client(fast_config(server.endpoint))
    manager2 = jobs_mod.JobManager(second, lookup=lambda name: entry)
    manager2.attach(record.id, "system.echo", "running")
    second.connect()
    try:
        def step():
            for m in second.poll(0):
                manager2.handle(m)
            manager2.apply(0.02)

        reattached = manager2.jobs[record.id]
        wait_until(lambda: reattached.applied, 30, "the fetched result to be applied", step=step)
        assert reattached.state == "done"
        assert len(applied) == 1 and applied[0].tobytes() == points.tobytes()
        assert record.id not in second.watched_jobs
    finally:
        second.close()
