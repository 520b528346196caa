"""The running server probed as a hostile client would: codec, sizes and memory (issue 16).

Every test here failed on the code before the fix it names and passes after it; all but
the store unit test talk to a real ``nstudio serve`` subprocess on loopback.
"""

from __future__ import annotations

import numpy as np
import pytest

from addon.wire import protocol
from server_harness import ECHO, echo_round_trip, pack, wait_until


# 2. Shapes numpy cannot build ----------------------------------------------------------------

def test_zero_sized_array_with_absurd_axes_gets_bad_message(shared_server, make_client):
    client = make_client(shared_server.endpoint)
    header = protocol.make_header("submit", pipeline=ECHO, params={}, inputs={
        "a": {"__nd__": 1, "dtype": "<f4", "shape": [0, 2**48, 2**48]}})
    client.send_frames([pack(header), b""])
    reply = client.reply_to(header["id"])
    assert reply["type"] == "error" and reply["code"] == "bad_message", reply
    assert "inputs.a" in reply["message"]
    # A legal empty array still decodes.
    empty = client.submit(ECHO, {}, {"a": np.zeros((0, 3), "<f4")})
    assert client.events(empty["job"])[-1]["outputs"]["a"].shape == (0, 3)
    echo_round_trip(client)


# 3. Headers that are cheap to send and dear to decode -----------------------------------------

def _peak_rss(server) -> int:
    """The server process's peak resident memory (VmHWM), bytes."""
    for line in open(f"/proc/{server.proc.pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc")


def _header_of_empty_maps(lists: int, budget: int = 16 * 2**20 - 256) -> tuple[str, bytes]:
    """A legal msgpack header just under 16 MiB whose ``x`` is ``lists`` lists of empty maps."""
    msg_id = protocol.new_id()
    head = pack({"v": 1, "type": "ping", "id": msg_id})
    per_list = (budget - len(head)) // lists - 5
    body = (b"\xdd" + lists.to_bytes(4, "big")
            + (b"\xdd" + per_list.to_bytes(4, "big") + b"\x80" * per_list) * lists)
    header = bytes([head[0] + 1]) + head[1:] + pack("x") + body   # one more key in the fixmap
    assert len(header) <= 16 * 2**20
    return msg_id, header


@pytest.mark.parametrize("lists", [1, 16], ids=["one-long-list", "many-lists"])
def test_header_of_millions_of_empty_maps_is_refused_cheaply(lists, make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    assert client.request("ping")["type"] == "pong"
    before = _peak_rss(server)
    msg_id, header = _header_of_empty_maps(lists)
    client.send_frames([header])
    # Refused while msgpack decodes, so the id may not have been read: no `re` then.
    reply = client.recv(timeout=30)
    assert reply["type"] == "error" and reply["code"] == "bad_message", reply
    assert reply.get("re") in (None, msg_id)
    assert "maps and lists" in reply["message"] or "entries" in reply["message"], reply
    grown = _peak_rss(server) - before
    # Decoding all 16.7 M maps peaked at ~2.6 GB; refused early it stays near the frame size.
    assert grown < 200 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    echo_round_trip(client)


# 6. too_large answers the request it refuses -------------------------------------------------

def test_too_large_carries_re_when_the_header_is_readable(make_server, make_client):
    limit = 2**20
    server = make_server("--max-message-bytes", str(limit))
    client = make_client(server.endpoint)
    half = limit // 2 + 8
    big = protocol.make_header("submit", pipeline=ECHO, params={}, inputs={
        "a": {"__nd__": 1, "dtype": "|u1", "shape": [half]},
        "b": {"__nd__": 2, "dtype": "|u1", "shape": [half]}})
    client.send_frames([pack(big), bytes(half), bytes(half)])
    reply = client.reply_to(big["id"])
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    many = protocol.make_header("submit", pipeline=ECHO, params={}, inputs={
        f"a{k}": {"__nd__": k, "dtype": "|u1", "shape": [1]} for k in range(1, 4098)})
    client.send_frames([pack(many)] + [b"\0"] * 4097)
    reply = client.reply_to(many["id"])
    assert reply["type"] == "error" and reply["code"] == "too_large", reply
    assert "array frames" in reply["message"]
    echo_round_trip(client)


# 5. Tiny requests that would allocate without bound -------------------------------------------

def _one_gaussian() -> dict:
    return {"means": np.zeros((1, 3), "<f4"), "quats": np.array([[1, 0, 0, 0]], "<f4"),
            "scales": np.zeros((1, 3), "<f4"), "opacities": np.zeros(1, "<f4"),
            "sh0": np.zeros((1, 3), "<f4"), "shN": np.zeros((1, 0, 3), "<f4")}


def _cameras(count: int, width: int, height: int) -> dict:
    return {"world_from_camera": np.tile(np.eye(4, dtype="<f4"), (count, 1, 1)),
            "fx": 100.0, "fy": 100.0, "cx": width / 2, "cy": height / 2,
            "width": width, "height": height}


def test_render_sizes_are_limited_at_submit(shared_server, make_client):
    client = make_client(shared_server.endpoint)
    refused = [
        (_cameras(1, 30000, 30000), "inputs.cameras.width"),            # the 513-byte request
        (_cameras(1, 8000, 8000), "inputs.cameras.width"),              # 64 M pixels a frame
        (_cameras(300, 4096, 2048), "inputs.cameras.world_from_camera"),  # a 40 GiB result
    ]
    for cameras, field in refused:
        reply = client.submit("splat.render", {}, {"gaussians": _one_gaussian(),
                                                   "cameras": cameras})
        assert reply["type"] == "error" and reply["code"] == "invalid_input", reply
        assert reply["detail"]["field"] == field
    jobs = client.request("status")["jobs"]
    assert [j for j in jobs if j["pipeline"] == "splat.render"] == []      # no job was made
    # The same request at a sane size passes every check (it is queued, then cancelled).
    small = client.submit("splat.render", {}, {"gaussians": _one_gaussian(),
                                               "cameras": _cameras(1, 8, 6)})
    assert small["type"] == "accepted", small
    client.request("cancel", job=small["job"])


def test_reconstruct_point_counts_are_limited_at_submit(shared_server, make_client):
    client = make_client(shared_server.endpoint)
    for name in ("random_points", "max_gaussians"):
        reply = client.submit("splat.reconstruct", {name: 60_000_000}, {})
        assert reply["type"] == "error" and reply["code"] == "invalid_params", reply
        assert reply["detail"]["field"] == f"params.{name}"
    limits = client.request("hello", client="t", protocols=[1])["pipelines"]["splat.reconstruct"]
    assert limits["params"]["random_points"]["max"] == 1_000_000
    assert limits["params"]["max_gaussians"]["max"] == 50_000_000
    echo_round_trip(client)


# 4. Memory held by waiting jobs and by replies to slow readers --------------------------------

def test_queued_jobs_are_bounded_in_bytes(make_server, make_client):
    server = make_server("--max-queue-bytes", str(2**20))
    client = make_client(server.endpoint)
    running = client.submit(ECHO, {"steps": 100, "step_seconds": 0.1})["job"]
    wait_until(lambda: client.request("status", job=running)["jobs"][0]["state"] == "running",
               10, "the first job to start")
    blob = np.zeros(600 * 1024, np.uint8)
    first = client.submit(ECHO, {}, {"blob": blob})
    assert first["type"] == "accepted", first          # an empty queue takes any job
    second = client.submit(ECHO, {}, {"blob": blob})
    assert second["type"] == "error" and second["code"] == "busy", second
    assert "--max-queue-bytes" in second["message"]
    small = client.submit(ECHO, {}, {"n": 1})
    assert small["type"] == "accepted", small           # a small one still fits
    # A header that decodes into many objects counts by what it becomes, not its wire size.
    many = client.submit(ECHO, {}, {"s": ["ab"] * 20000})
    assert many["type"] == "error" and many["code"] == "busy", many
    assert client.request("cancel", job=running)["type"] == "cancelled"
    assert client.events(first["job"])[-1]["type"] == "result"
    assert client.submit(ECHO, {}, {"blob": blob})["type"] == "accepted"


def test_replies_waiting_for_a_slow_reader_are_bounded(make_server, make_client, context):
    import zmq

    from server_harness import Client

    server = make_server("--max-unsent-bytes", str(24 * 2**20))
    client = make_client(server.endpoint)
    data = np.random.default_rng(0).integers(0, 255, 8 * 2**20, dtype=np.uint8)
    job = client.submit(ECHO, {}, {"data": data})["job"]
    assert client.events(job)[-1]["type"] == "result"
    # A reader that stops reading: its ZeroMQ takes one message, then TCP pushes back.
    slow = Client.__new__(Client)
    slow.socket = context.socket(zmq.DEALER)
    slow.socket.setsockopt(zmq.LINGER, 0)
    slow.socket.setsockopt(zmq.RCVHWM, 1)
    slow.socket.setsockopt(zmq.RCVBUF, 64 * 1024)
    slow.socket.connect(server.endpoint)
    slow.inbox = []
    try:
        ids = [slow.send("fetch", job=job) for _ in range(12)]      # 96 MiB of replies
        wait_until(lambda: server.log_path.read_text().count(f"fetch of job {job}") >= 12, 30,
                   "the server to handle every fetch before the reader reads")
        assert client.request("ping")["type"] == "pong"             # the server is fine
        replies = [slow.reply_to(i, timeout=30) for i in ids]
    finally:
        slow.close()
    kinds = [r["type"] if r["type"] == "result" else r["code"] for r in replies]
    assert "busy" in kinds and "result" in kinds, kinds
    for reply in replies:
        if reply["type"] == "result":
            assert reply["outputs"]["data"].tobytes() == data.tobytes()
        else:
            assert "--max-unsent-bytes" in reply["message"]
    # Once read, the budget is free again.
    wait_until(lambda: client.request("fetch", job=job)["type"] == "result", 10,
               "a fetch to succeed again")
