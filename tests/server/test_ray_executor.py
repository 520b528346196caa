"""The Ray executor (issue 15): real `nstudio serve --executor ray` processes joined to one local
Ray started by this module; the broker, the protocol and the pipelines are the same as with the
local executor.

- a camera path of 24 frames split over 2 actors renders exactly what one local worker renders,
  partials arriving once per frame, in frame order;
- an actor killed mid-job (``ray.kill``) is replaced and the job run again there; killed a
  second time, the job fails with an error naming both deaths; the server keeps serving;
- cancelling a split render stops every piece;
- ``nstudio doctor --executor ray`` shows the cluster and the server's actors.

The tests that need Ray are marked slow (Ray's start and the actors' first torch import make
this module ~50 s on 2 cores).
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from ray_support import actor_running, local_ray, orbit_scene
from server_harness import REPO, ServerProcess, wait_until

FRAMES = 24
W, H = 40, 30


@pytest.fixture(scope="module")
def ray_address():
    with local_ray() as address:
        yield address


@pytest.fixture(scope="module")
def ray_server(ray_address, tmp_path_factory, context):
    """One server with two CPU actors."""
    server = ServerProcess(tmp_path_factory.mktemp("ray"), "--executor", "ray",
                           "--ray-address", ray_address, "--ray-actors", "2").start(context)
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code} on SIGTERM:\n{server.log()}"


def scene(frames: int = FRAMES) -> dict:
    """200 random Gaussians and a camera path of ``frames`` circling them."""
    return orbit_scene(frames, 200, W, H)


def first_event(client, job: str, type_: str, timeout: float = 30.0) -> dict:
    """The job's first event of ``type_``; other messages stay in the client's inbox."""
    deadline = time.monotonic() + timeout
    while True:
        message = client._recv_wire(max(0.0, deadline - time.monotonic()))
        if message.get("job") == job and message["type"] == type_:
            return message
        client.inbox.append(message)


def render(client, inputs, timeout=120):
    accepted = client.submit("splat.render", inputs=inputs)
    assert accepted["type"] == "accepted", accepted
    return client.events(accepted["job"], timeout=timeout)


@pytest.mark.slow
def test_split_render_equals_one_local_worker(ray_server, shared_server, make_client):
    """24 frames over 2 actors: frame for frame what the local executor renders."""
    inputs = scene()
    local = render(make_client(shared_server.endpoint), inputs)
    split = render(make_client(ray_server.endpoint), inputs)
    for events in (local, split):
        assert events[-1]["type"] == "result", events[-1]
    partials = [e["outputs"] for e in split if e["type"] == "partial"]
    assert [p["frame"] for p in partials] == list(range(FRAMES)), "once per frame, in order"
    want, got = local[-1]["outputs"], split[-1]["outputs"]
    assert got["rgb"].shape == (FRAMES, H, W, 3)
    assert want["alpha"][::2].max() > 0.1 and want["alpha"][1::2].max() > 0.1, "frames show splats"
    for name in ("rgb", "alpha", "depth"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for partial in partials:
        np.testing.assert_array_equal(partial["rgb"], want["rgb"][partial["frame"]])
    progress = [e for e in split if e["type"] == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"] == FRAMES
    assert all(p["total"] == FRAMES for p in progress)


@pytest.mark.slow
def test_pipeline_errors_and_bugs_come_back_as_on_the_local_executor(ray_server, make_client):
    """A PipelineError raised in an actor keeps its code; a bug is `internal` and says so."""
    client = make_client(ray_server.endpoint)
    points = np.zeros((4, 3), "<f4")
    ends = {}
    for fail in ("pipeline", "bug", ""):
        accepted = client.submit("test.shapes", params={"fail": fail}, inputs={"points": points})
        ends[fail] = client.events(accepted["job"], timeout=60)[-1]
    assert ends["pipeline"]["type"] == "error" and ends["pipeline"]["code"] == "invalid_input"
    assert ends["pipeline"]["detail"] == {"field": "inputs.points"}
    assert ends["bug"]["code"] == "internal" and "deliberate bug" in ends["bug"]["message"]
    assert ends[""]["type"] == "result" and ends[""]["outputs"] == {"count": 4}


@pytest.mark.slow
def test_killed_actor_is_replaced_and_the_job_runs_again(ray_server, make_client):
    import ray

    client = make_client(ray_server.endpoint)
    inputs = {"x": np.arange(5, dtype="<i4")}
    accepted = client.submit("system.echo", params={"steps": 40, "step_seconds": 0.05},
                             inputs=inputs)
    job = accepted["job"]
    ray.kill(wait_until(lambda: actor_running(job), 20, "the actor running the job"))
    events = client.events(job, timeout=60)
    assert events[-1]["type"] == "result", events[-1]
    np.testing.assert_array_equal(events[-1]["outputs"]["x"], inputs["x"])
    assert "died" in ray_server.log() and "running it again" in ray_server.log()
    # The pool is whole again: the next jobs run.
    again = client.submit("system.echo", inputs={"y": 1})
    assert client.events(again["job"])[-1]["outputs"] == {"y": 1}


@pytest.mark.slow
def test_actor_killed_twice_fails_the_job_clearly(ray_server, make_client):
    import ray

    client = make_client(ray_server.endpoint)
    accepted = client.submit("system.echo", params={"steps": 400, "step_seconds": 0.05})
    job = accepted["job"]
    first = wait_until(lambda: actor_running(job), 20, "the actor running the job")
    ray.kill(first)
    second = wait_until(lambda: (actor := actor_running(job)) is not None and actor != first
                        and actor, 60, "the actor the job was retried on")
    ray.kill(second)
    events = client.events(job, timeout=60)
    end = events[-1]
    assert end["type"] == "error" and end["job"] == job, end
    assert "died" in end["message"] and "retried" in end["message"], end["message"]
    status = client.request("status", job=job)["jobs"][0]
    assert status["state"] == "failed"
    # Still serving, with a fresh actor in that place.
    again = client.submit("system.echo", inputs={"z": 2})
    assert client.events(again["job"], timeout=60)[-1]["outputs"] == {"z": 2}


@pytest.mark.slow
def test_cancel_a_split_render(ray_server, make_client):
    client = make_client(ray_server.endpoint)
    inputs = scene(400)
    accepted = client.submit("splat.render", inputs=inputs)
    job = accepted["job"]
    first_event(client, job, "partial")
    reply = client.request("cancel", job=job, timeout=10)
    assert reply["type"] == "cancelled" and reply["job"] == job, reply
    assert client.request("status", job=job)["jobs"][0]["state"] == "cancelled"
    # Both actors are free again: a two-piece render runs at once.
    events = render(client, scene(4))
    assert events[-1]["type"] == "result"


@pytest.mark.slow
def test_doctor_shows_the_cluster(ray_server, ray_address):
    done = subprocess.run([sys.executable, "-m", "server", "doctor", "--executor", "ray",
                           "--ray-address", ray_address], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"cluster at {ray_address}" in out and "1 node(s)" in out, out
    assert out.count("actor nstudio-worker-") >= 2 and " cpu " in out, out


def test_unreachable_cluster_is_a_clear_start_failure(tmp_path):
    server = ServerProcess(tmp_path, "--executor", "ray", "--ray-address", "127.0.0.1:1")
    done = subprocess.run(server.command(), cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "cannot join the Ray cluster at 127.0.0.1:1" in done.stderr, done.stderr


@pytest.mark.slow
def test_cuda_asked_of_a_cluster_without_gpus_is_a_clear_start_failure(ray_address, tmp_path):
    server = ServerProcess(tmp_path, "--executor", "ray", "--ray-address", ray_address)
    command = [arg if arg != "cpu" else "cuda" for arg in server.command()]   # --device cuda
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--device cuda: the Ray cluster has no GPUs" in done.stderr, done.stderr
