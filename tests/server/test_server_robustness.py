"""The server under hostile input, many clients, disconnects, SIGKILL and a full queue."""

from __future__ import annotations

import random
import threading

import msgpack
import numpy as np
import pytest

from addon.wire import protocol
from server_harness import TERMINAL, Client, wait_until

ECHO = "system.echo"
MAX_MESSAGE = 4 * 2**20


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def malformed(rng: random.Random, i: int) -> list:
    """One malformed message (frames after the identity), of a kind picked by ``i``."""
    good = protocol.make_header("submit", pipeline=ECHO, params={}, inputs={})
    ref = {"__nd__": 1, "dtype": "<f4", "shape": [4]}
    blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    kinds = [
        lambda: [blob],                                                   # random bytes
        lambda: [blob, blob],
        lambda: [pack(good)[: rng.randint(1, len(pack(good)) - 1)]],     # truncated msgpack
        lambda: [pack([1, 2, 3])],                                        # not a map
        lambda: [pack("header")],
        lambda: [pack({"type": "ping"})],                                 # no v
        lambda: [pack({"v": "1", "type": "ping"})],                       # wrong types
        lambda: [pack({"v": 1, "type": None})],
        lambda: [pack({**good, "inputs": {"a": ref}}), b"\0" * rng.choice((0, 4, 15, 17))],
        lambda: [pack({**good, "inputs": {"a": {**ref, "shape": [2**40, 2**30]}}}), b"\0" * 16],
        lambda: [pack({**good, "inputs": {"a": {**ref, "__nd__": 3}}}), b"\0" * 16],  # missing
        lambda: [pack(good), b"\0" * 16],                                 # unreferenced frame
        lambda: [pack({**good, "inputs": {"a": {**ref, "dtype": "|O"}}}), b"\0" * 16],
        lambda: [pack({**good, "x": _nest(rng.randint(40, 400))})],       # deep nesting
        lambda: [pack({**good, "params": "fast"})],                       # wrong field types
        lambda: [pack({**good, "pipeline": 5})],
        lambda: [pack({**good, "type": "submit", "params": {"steps": -3}})],
        lambda: [pack({"v": 1, "type": "cancel", "job": ["x"]})],
        lambda: [pack({"v": 1, "type": "fetch"})],
        lambda: [pack({"v": 1, "type": "warp", "id": "w"})],
        lambda: [pack({"v": 9, "type": "ping"})],
        lambda: [msgpack.packb(msgpack.ExtType(3, b"abc"))],
        lambda: [b""],
        # Two frames below the per-frame cap but above the total: too_large, not a disconnect.
        lambda: [pack({**good, "inputs": {
            "a": {"__nd__": 1, "dtype": "|u1", "shape": [MAX_MESSAGE // 2 + 8]},
            "b": {"__nd__": 2, "dtype": "|u1", "shape": [MAX_MESSAGE // 2 + 8]}}}),
            bytes(MAX_MESSAGE // 2 + 8), bytes(MAX_MESSAGE // 2 + 8)],
    ]
    return kinds[i % len(kinds)]()


def _nest(depth: int):
    value = 0
    for _ in range(depth):
        value = [value]
    return value


def run_echo(client: Client, **params) -> dict:
    accepted = client.submit(ECHO, params, {"x": np.arange(10, dtype="<i4")})
    assert accepted["type"] == "accepted", accepted
    return client.events(accepted["job"])[-1]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, context):
    from server_harness import ServerProcess

    server = ServerProcess(tmp_path_factory.mktemp("fuzz"), "--max-message-bytes",
                           str(MAX_MESSAGE)).start(context)
    yield server
    assert server.stop() == 0, server.log()


def test_thousands_of_malformed_messages_each_get_an_error(fuzz_server, make_client):
    client = make_client(fuzz_server.endpoint)
    rng = random.Random(1234)

    def blast(count: int, offset: int) -> None:
        for start in range(0, count, 100):
            batch = range(offset + start, offset + min(count, start + 100))
            for i in batch:
                client.send_frames(malformed(rng, i))
            for i in batch:
                reply = client.recv(timeout=10)
                assert reply["type"] == "error", (i, reply)
                assert reply["code"] in ("bad_message", "too_large", "unsupported_version",
                                         "unknown_type", "invalid_params", "not_found"), reply

    blast(300, 0)               # warm-up: allocator pools and caches settle
    baseline = fuzz_server.rss()
    blast(3000, 300)
    grown = fuzz_server.rss() - baseline
    assert grown < 40 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 3000 bad messages"
    assert client.request("ping")["type"] == "pong"
    assert run_echo(client)["type"] == "result"
    assert fuzz_server.proc.poll() is None


def test_oversized_frame_drops_only_that_connection(fuzz_server, make_client):
    # A single frame above the limit makes ZeroMQ drop the connection (documented); the
    # server itself carries on for everyone else.
    rude = make_client(fuzz_server.endpoint)
    header = protocol.make_header("submit", pipeline=ECHO, params={},
                                  inputs={"a": np.zeros(MAX_MESSAGE + 16, np.uint8)})
    rude.send_frames(protocol.encode(header))
    polite = make_client(fuzz_server.endpoint)
    assert polite.request("ping")["type"] == "pong"
    assert run_echo(polite)["type"] == "result"


def test_twenty_concurrent_clients_each_job_ends_exactly_once(shared_server, context):
    jobs_per_client = 3
    outcomes: dict[int, dict] = {}
    errors = []

    def work(n: int) -> None:
        client = Client(context, shared_server.endpoint)
        try:
            ids = []
            for _ in range(jobs_per_client):
                accepted = client.submit(ECHO, {"steps": 2},
                                         {"n": np.full(100, n, "<i4")})
                ids.append(accepted["job"])
            terminal = {}
            for job in ids:
                events = client.events(job, timeout=60)
                terminal[job] = events[-1]
            # Nothing else may arrive for these jobs: no second terminal event.
            late = [m for m in client.inbox if m["type"] in TERMINAL]
            if client.socket.poll(200):
                late.append(protocol.decode(client.socket.recv_multipart()))
            outcomes[n] = {"terminal": terminal, "late": late}
        except Exception as error:  # reported below, with the client number
            errors.append((n, error))
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(outcomes) == 20
    for n, outcome in outcomes.items():
        assert outcome["late"] == []
        assert len(outcome["terminal"]) == jobs_per_client
        for result in outcome["terminal"].values():
            assert result["type"] == "result"
            assert np.array_equal(result["outputs"]["n"], np.full(100, n, "<i4"))


def test_client_that_disconnects_fetches_with_a_new_socket(shared_server, make_client):
    first = make_client(shared_server.endpoint)
    data = np.random.default_rng(5).normal(size=(1000, 4)).astype("<f8")
    job = first.submit(ECHO, {"steps": 5, "step_seconds": 0.1}, {"data": data})["job"]
    first.close()                       # gone mid-job
    second = make_client(shared_server.endpoint)
    wait_until(lambda: second.request("status", job=job)["jobs"][0]["state"] == "done", 20,
               "the abandoned job to finish")
    result = second.request("fetch", job=job)
    assert result["type"] == "result" and result["outputs"]["data"].tobytes() == data.tobytes()


def test_results_and_failures_survive_sigkill(make_server, make_client, tmp_path):
    server = make_server()
    client = make_client(server.endpoint)
    data = np.arange(1000, dtype="<f4")
    done = client.submit(ECHO, inputs={"data": data})["job"]
    assert client.events(done)[-1]["type"] == "result"
    running = client.submit(ECHO, {"steps": 100, "step_seconds": 0.2})["job"]
    queued = client.submit(ECHO)["job"]
    wait_until(lambda: client.request("status", job=running)["jobs"][0]["state"] == "running",
               10, "the long job to start")
    server.kill()

    again = make_server(port=server.port, store=server.store)
    fresh = make_client(again.endpoint)
    result = fresh.request("fetch", job=done)
    assert result["type"] == "result" and result["outputs"]["data"].tobytes() == data.tobytes()
    states = {j["job"]: j for j in fresh.request("status")["jobs"]}
    assert states[done]["state"] == "done"
    assert states[running]["state"] == "failed"
    assert states[running]["error"]["message"] == "server stopped while the job was running"
    assert states[queued]["state"] == "failed"
    assert "server stopped" in states[queued]["error"]["message"]
    failed = fresh.request("fetch", job=running)
    assert failed["type"] == "error" and failed["message"] == (
        "server stopped while the job was running")
    assert run_echo(fresh)["type"] == "result"


def test_full_queue_answers_busy(make_server, make_client):
    server = make_server("--max-queue", "2")
    client = make_client(server.endpoint)
    running = client.submit(ECHO, {"steps": 100, "step_seconds": 0.1})
    wait_until(lambda: client.request("status", job=running["job"])["jobs"][0]["state"]
               == "running", 10, "the first job to start")
    assert [client.submit(ECHO)["position"] for _ in range(2)] == [1, 2]
    busy = client.submit(ECHO)
    assert busy["type"] == "error" and busy["code"] == "busy"
    assert client.request("cancel", job=running["job"])["type"] == "cancelled"


def test_retention_keeps_the_newest_results(make_server, make_client):
    # --keep-days 0: results beyond the newest 100 expire at once (retention is by age and
    # size besides the count since issue 16).
    server = make_server("--keep-results", "100", "--keep-days", "0", "--sweep-seconds", "0.2")
    client = make_client(server.endpoint)
    ids = []
    for n in range(103):
        ids.append(client.submit(ECHO, inputs={"n": n})["job"])
    for job in ids:
        assert client.events(job)[-1]["type"] == "result"
    wait_until(lambda: client.request("fetch", job=ids[2])["type"] == "error", 10,
               "the sweep to expire the oldest results")
    for job in ids[:3]:
        assert client.request("fetch", job=job)["code"] == "not_found"
    for n in (3, 50, 102):
        assert client.request("fetch", job=ids[n])["outputs"]["n"] == n
    assert len(list((server.store / "results").iterdir())) == 100


def test_sigterm_fails_queued_and_running_jobs_cleanly(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    running = client.submit(ECHO, {"steps": 100, "step_seconds": 0.2})["job"]
    queued = client.submit(ECHO)["job"]
    wait_until(lambda: client.request("status", job=running)["jobs"][0]["state"] == "running",
               10, "the job to start")
    assert server.stop() == 0
    ends = {job: client.events(job, timeout=10)[-1] for job in (running, queued)}
    assert ends[running]["code"] == "internal" and "running" in ends[running]["message"]
    assert ends[queued]["code"] == "internal" and "queued" in ends[queued]["message"]
