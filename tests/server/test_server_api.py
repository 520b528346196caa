"""The server against PROTOCOL.md v1, message by message, through a real subprocess."""

from __future__ import annotations

import time

import numpy as np
import pytest

from addon.wire import protocol

from server_harness import wait_until

ECHO = "system.echo"


@pytest.fixture
def client(shared_server, make_client):
    return make_client(shared_server.endpoint)


def gaussians(n: int, k: int = 15) -> dict:
    rng = np.random.default_rng(n)
    return {
        "means": rng.normal(size=(n, 3)).astype("<f4"),
        "quats": rng.normal(size=(n, 4)).astype("<f4"),
        "scales": rng.normal(size=(n, 3)).astype("<f4"),
        "opacities": rng.normal(size=(n,)).astype("<f4"),
        "sh0": rng.normal(size=(n, 3)).astype("<f4"),
        "shN": rng.normal(size=(n, k, 3)).astype("<f4"),
    }


def cameras(t: int) -> dict:
    return {"world_from_camera": np.tile(np.eye(4, dtype="<f4"), (t, 1, 1)),
            "fx": 500.0, "fy": np.full(t, 500.0, "<f4"), "cx": 320.0, "cy": 240.0,
            "width": 640, "height": 480}


def test_hello_lists_echo_with_schemas(client):
    welcome = client.request("hello", client="pytest", protocols=[1])
    assert welcome["type"] == "welcome"
    assert welcome["protocol"] == 1
    assert welcome["server"]["name"] == "neural-studio" and welcome["server"]["version"]
    assert welcome["device"] == {"kind": "cpu"}
    echo = welcome["pipelines"][ECHO]
    assert echo["available"] is True and echo["reason"] == ""
    assert echo["params"]["steps"]["kind"] == "int" and echo["params"]["steps"]["default"] == 1
    assert echo["params"]["step_seconds"]["kind"] == "float"
    assert echo["params"]["partial_every"]["default"] == 0
    assert echo["inputs"]["*"]["kind"] == "any"
    shapes = welcome["pipelines"]["test.shapes"]
    assert shapes["inputs"]["points"] == {"kind": "array", "dtypes": ["<f4"], "shape": ["N", 3],
                                          "doc": "points. [N, 3]", "optional": False}
    assert shapes["inputs"]["gaussians"]["fields"]["shN"]["shape"] == ["N", [0, 3, 8, 15], 3]


def test_hello_without_a_common_protocol(client):
    reply = client.request("hello", client="pytest", protocols=[2, 3])
    assert reply["type"] == "error" and reply["code"] == "unsupported_version"


def test_ping_pong(client):
    ping = client.send("ping")
    pong = client.reply_to(ping)
    assert pong["type"] == "pong" and pong["re"] == ping


def test_echo_returns_arrays_byte_for_byte(client):
    rng = np.random.default_rng(0)
    inputs = {
        "gaussians": gaussians(1000),
        "u8": rng.integers(0, 255, (7, 5, 3), dtype=np.uint8),
        "b": rng.random(9) > 0.5,
        "f8": np.array(3.25),
        "empty": np.zeros((0, 4), "<i8"),
        "nested": [{"x": rng.normal(size=3).astype("<f2")}, "text", 5, None],
        "blob": b"\x89PNG\r\n",
    }
    accepted = client.submit(ECHO, {"steps": 3}, inputs)
    assert accepted["type"] == "accepted" and accepted["position"] == 0
    events = client.events(accepted["job"])
    result = events[-1]
    assert result["type"] == "result" and result["job"] == accepted["job"]
    progress = [e for e in events if e["type"] == "progress"]
    assert progress[-1]["step"] == 3 and progress[-1]["total"] == 3
    assert all(e["stage"] == "echo" and isinstance(e["message"], str) for e in progress)
    out = result["outputs"]
    for key, array in inputs["gaussians"].items():
        assert out["gaussians"][key].dtype == array.dtype
        assert out["gaussians"][key].tobytes() == array.tobytes()
    for key in ("u8", "b", "f8", "empty"):
        assert out[key].dtype == inputs[key].dtype and out[key].shape == inputs[key].shape
        assert out[key].tobytes() == inputs[key].tobytes()
    assert out["nested"][0]["x"].tobytes() == inputs["nested"][0]["x"].tobytes()
    assert out["nested"][1:] == ["text", 5, None]
    assert out["blob"] == inputs["blob"]


def test_progress_is_rate_limited_but_the_last_step_arrives(client):
    # 60 steps in ~0.6 s: about 10 per second may go out, and the last one always does.
    accepted = client.submit(ECHO, {"steps": 60, "step_seconds": 0.01})
    events = client.events(accepted["job"])
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps[-1] == 60
    assert len(steps) < 30, steps
    assert steps == sorted(steps)


def test_partials_stream_the_inputs(client):
    data = np.arange(12, dtype="<f4")
    accepted = client.submit(ECHO, {"steps": 6, "partial_every": 2}, {"data": data})
    events = client.events(accepted["job"])
    partials = [e for e in events if e["type"] == "partial"]
    assert len(partials) == 2          # after steps 2 and 4; step 6 is the result
    assert all(p["outputs"]["data"].tobytes() == data.tobytes() for p in partials)
    assert events[-1]["type"] == "result"


def test_cancel_running_job_lands_within_a_second(client):
    accepted = client.submit(ECHO, {"steps": 100, "step_seconds": 0.5})
    job = accepted["job"]
    wait_until(lambda: client.request("status", job=job)["jobs"][0]["state"] == "running", 10,
               "the job to start")
    started = time.monotonic()
    cancel = client.send("cancel", job=job)
    events = client.events(job)
    elapsed = time.monotonic() - started
    assert events[-1]["type"] == "cancelled" and events[-1]["re"] == cancel
    assert elapsed < 1.0, f"cancel took {elapsed:.2f} s"
    assert client.request("status", job=job)["jobs"][0]["state"] == "cancelled"
    again = client.request("cancel", job=job)
    assert again["code"] == "invalid_input" and "cancelled" in again["message"]


def test_cancel_queued_job_removes_it_at_once(client):
    first = client.submit(ECHO, {"steps": 100, "step_seconds": 0.2})["job"]
    second = client.submit(ECHO, {"steps": 1})
    assert second["position"] == 1
    reply = client.request("cancel", job=second["job"])
    assert reply["type"] == "cancelled" and reply["job"] == second["job"]
    states = {j["job"]: j["state"] for j in client.request("status")["jobs"]}
    assert states[second["job"]] == "cancelled" and states[first] in ("queued", "running")
    assert client.request("cancel", job=first)["type"] == "cancelled"


def test_cancel_finished_job_names_its_state(client):
    job = client.submit(ECHO)["job"]
    assert client.events(job)[-1]["type"] == "result"
    reply = client.request("cancel", job=job)
    assert reply["type"] == "error" and reply["code"] == "invalid_input"
    assert "done" in reply["message"] and reply["detail"]["state"] == "done"


def test_cancel_and_fetch_unknown_job(client):
    for kind in ("cancel", "fetch", "status"):
        reply = client.request(kind, job="0" * 32)
        assert reply["type"] == "error" and reply["code"] == "not_found", kind


def test_status_lists_every_clients_jobs_newest_first(shared_server, make_client):
    a, b = make_client(shared_server.endpoint), make_client(shared_server.endpoint)
    job_a = a.submit(ECHO)["job"]
    a.events(job_a)
    job_b = b.submit(ECHO)["job"]
    b.events(job_b)
    jobs = a.request("status")["jobs"]
    ids = [j["job"] for j in jobs]
    assert ids.index(job_b) < ids.index(job_a)
    created = [j["created"] for j in jobs]
    assert created == sorted(created, reverse=True)
    entry = jobs[ids.index(job_a)]
    assert entry["pipeline"] == ECHO and entry["state"] == "done"
    assert entry["step"] == 1 and entry["total"] == 1
    assert entry["finished"] >= entry["created"] > time.time() - 600


def test_fetch_replays_the_stored_result(shared_server, make_client):
    first = make_client(shared_server.endpoint)
    data = np.random.default_rng(1).normal(size=(50, 3)).astype("<f4")
    job = first.submit(ECHO, inputs={"data": data, "name": "x"})["job"]
    assert first.events(job)[-1]["type"] == "result"
    other = make_client(shared_server.endpoint)
    fetch = other.send("fetch", job=job)
    reply = other.reply_to(fetch)
    assert reply["type"] == "result" and reply["job"] == job and reply["re"] == fetch
    assert reply["outputs"]["data"].tobytes() == data.tobytes()
    assert reply["outputs"]["name"] == "x"


def test_fetch_of_unkept_running_and_failed_jobs(client):
    job = client.submit(ECHO, keep=False)["job"]
    assert client.events(job)[-1]["type"] == "result"
    unkept = client.request("fetch", job=job)
    assert unkept["code"] == "not_found" and "keep: false" in unkept["message"]

    running = client.submit(ECHO, {"steps": 50, "step_seconds": 0.1})["job"]
    reply = client.request("fetch", job=running)
    assert reply["type"] == "status" and reply["jobs"][0]["state"] in ("queued", "running")
    assert client.request("cancel", job=running)["type"] == "cancelled"
    cancelled = client.request("fetch", job=running)
    assert cancelled["type"] == "error" and cancelled["code"] == "cancelled"



@pytest.mark.parametrize("fail, code", [("pipeline", "invalid_input"), ("bug", "internal")])
def test_failed_job_reports_and_keeps_its_error(client, fail, code):
    job = client.submit("test.shapes", {"fail": fail},
                        {"points": np.zeros((2, 3), "<f4")})["job"]
    error = client.events(job)[-1]
    assert error["type"] == "error" and error["code"] == code and error["job"] == job
    if code == "invalid_input":
        assert error["detail"] == {"field": "inputs.points"}
    else:
        assert "deliberate bug" in error["message"] and "traceback" in error["message"]
    fetch = client.send("fetch", job=job)
    replay = client.reply_to(fetch)
    assert replay["type"] == "error" and replay["code"] == code and replay["re"] == fetch
    assert replay["message"] == error["message"]
    entry = client.request("status", job=job)["jobs"][0]
    assert entry["state"] == "failed" and entry["error"]["code"] == code
    assert client.request("ping")["type"] == "pong"


def test_keep_must_be_bool(client):
    reply = client.submit(ECHO, keep="yes")
    assert reply["code"] == "invalid_params" and reply["detail"]["field"] == "keep"


def test_unknown_pipeline(client):
    reply = client.submit("nope.nothing")
    assert reply["type"] == "error" and reply["code"] == "unknown_pipeline"
    assert "nope.nothing" in reply["message"] and ECHO in reply["message"]


@pytest.mark.parametrize("params, field", [
    ({"steps": "many"}, "params.steps"),
    ({"steps": 0}, "params.steps"),
    ({"steps": 1.5}, "params.steps"),
    ({"step_seconds": -1}, "params.step_seconds"),
    ({"bogus": 1}, "params.bogus"),
])
def test_invalid_params_name_the_field(client, params, field):
    reply = client.submit(ECHO, params)
    assert reply["type"] == "error" and reply["code"] == "invalid_params"
    assert reply["detail"]["field"] == field and field in reply["message"]


def test_params_must_be_a_map(client):
    reply = client.submit(ECHO, params=[1, 2])
    assert reply["code"] == "invalid_params" and reply["detail"]["field"] == "params"


@pytest.mark.parametrize("inputs, field", [
    ({}, "inputs.points"),
    ({"points": np.zeros((4, 2), "<f4")}, "inputs.points"),
    ({"points": np.zeros((4, 3), "<f8")}, "inputs.points"),
    ({"points": [1, 2, 3]}, "inputs.points"),
    ({"points": np.zeros((4, 3), "<f4"), "colors": np.zeros((5, 3), "|u1")}, "inputs.colors"),
    ({"points": np.zeros((4, 3), "<f4"), "extra": 1}, "inputs.extra"),
    ({"points": np.zeros((4, 3), "<f4"), "gaussians": {**gaussians(4, k=2)}},
     "inputs.gaussians.shN"),
    ({"points": np.zeros((4, 3), "<f4"), "gaussians": {**gaussians(5)}},
     "inputs.gaussians.means"),
    ({"points": np.zeros((4, 3), "<f4"),
      "gaussians": {**gaussians(4), "labels": np.zeros(3, "<i4")}}, "inputs.gaussians.labels"),
    ({"points": np.zeros((4, 3), "<f4"), "cameras": {**cameras(2), "fx": "wide"}},
     "inputs.cameras.fx"),
    ({"points": np.zeros((4, 3), "<f4"),
      "cameras": {**cameras(2), "fy": np.ones(3, "<f4")}}, "inputs.cameras.fy"),
    ({"points": np.zeros((4, 3), "<f4"),
      "cameras": {k: v for k, v in cameras(2).items() if k != "width"}}, "inputs.cameras.width"),
])
def test_invalid_inputs_name_the_field(client, inputs, field):
    reply = client.submit("test.shapes", inputs=inputs)
    assert reply["type"] == "error" and reply["code"] == "invalid_input", reply
    assert reply["detail"]["field"] == field and field in reply["message"]


def test_valid_contract_inputs_are_accepted(client):
    inputs = {"points": np.zeros((4, 3), "<f4"), "colors": np.zeros((4, 3), "|u1"),
              "gaussians": {**gaussians(4), "labels": np.zeros(4, "<i4")},
              "cameras": cameras(3)}
    accepted = client.submit("test.shapes", {"mode": "max", "background": [0, 0.5, 1]}, inputs)
    assert accepted["type"] == "accepted"
    result = client.events(accepted["job"])[-1]
    assert result["type"] == "result" and result["outputs"] == {"count": 4}


def test_other_param_kinds(client):
    assert client.submit("test.shapes", {"mode": "min"})["detail"]["field"] == "params.mode"
    bad = client.submit("test.shapes", {"background": [1, 2]})
    assert bad["detail"]["field"] == "params.background"
    bad = client.submit("test.shapes", {"background": [1, "x", 2]})
    assert bad["detail"]["field"] == "params.background[1]"


def test_pipeline_check_refuses_before_queueing(client):
    """Pipeline.check: what the schema cannot say is refused at once, with no job."""
    before = len(client.request("status")["jobs"])
    reply = client.submit("test.shapes", {"at_most": 2}, {"points": np.zeros((4, 3), "<f4")})
    assert reply["type"] == "error" and reply["code"] == "invalid_params", reply
    assert reply["detail"] == {"field": "params.at_most"} and "job" not in reply
    assert len(client.request("status")["jobs"]) == before
    accepted = client.submit("test.shapes", {"at_most": 4}, {"points": np.zeros((4, 3), "<f4")})
    assert accepted["type"] == "accepted"
    assert client.events(accepted["job"])[-1]["outputs"] == {"count": 4}


def test_version_mismatch(client):
    frames = protocol.encode({"v": 2, "type": "ping", "id": "ping-v2"})
    client.send_frames(frames)
    reply = client.reply_to("ping-v2")
    assert reply["type"] == "error" and reply["code"] == "unsupported_version"


def test_unknown_type(client):
    reply = client.request("teleport")
    assert reply["type"] == "error" and reply["code"] == "unknown_type"
    assert "teleport" in reply["message"]


def test_unknown_header_keys_are_ignored(client):
    reply = client.request("ping", future_field={"x": 1})
    assert reply["type"] == "pong"


def test_unavailable_pipeline_is_listed_with_its_reason_and_refused(client):
    listed = client.request("hello", client="pytest", protocols=[1])["pipelines"]
    assert listed["test.unavailable"]["available"] is False
    assert "model.safetensors" in listed["test.unavailable"]["reason"]
    reply = client.submit("test.unavailable")
    assert reply["type"] == "error" and reply["code"] == "unavailable"
    assert "model.safetensors" in reply["message"]
