"""The running server probed as a hostile client (or a hostile disk) would (issue 16).

Every test here failed on the code before the fix it names and passes after it; all of them
talk to a real ``nstudio serve`` subprocess on loopback.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from addon.wire import protocol
from server_harness import wait_until

ECHO = "system.echo"


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def echo_round_trip(client) -> None:
    accepted = client.submit(ECHO, {}, {"x": np.arange(10, dtype="<i4")})
    assert accepted["type"] == "accepted", accepted
    result = client.events(accepted["job"])[-1]
    assert result["type"] == "result" and result["outputs"]["x"].tolist() == list(range(10))


# 1. Damaged store records -----------------------------------------------------------------

def test_damaged_store_records_are_skipped_at_start_up(tmp_path, make_server, make_client):
    records = tmp_path / "store" / "records"
    records.mkdir(parents=True)
    good = {"job": "a1", "pipeline": ECHO, "state": "failed", "created": 1.0, "finished": 2.0,
            "step": 0, "total": 0, "error": {"code": "internal", "message": "m", "detail": None},
            "keep": True}
    (records / "a1.msgpack").write_bytes(pack(good))
    damaged = {
        "b1": {"job": "../../etc/passwd"},              # an id that would escape the store
        "b2": {"pipeline": None},                       # no pipeline
        "b3": {"created": "yesterday"},
        "b4": {"state": "exploded"},
        "b5": {"error": "boom"},
        "b6": {"job": "zz"},                            # a record under another job's name
    }
    for name, change in damaged.items():
        record = {k: v for k, v in {**good, "job": name, **change}.items() if v is not None}
        (records / f"{name}.msgpack").write_bytes(pack(record))
    server = make_server(store=tmp_path / "store")
    client = make_client(server.endpoint)
    jobs = client.request("status")["jobs"]
    assert [j["job"] for j in jobs] == ["a1"]
    log = server.log()
    assert log.count("skipping damaged job record") == len(damaged), log
    echo_round_trip(client)


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
