"""The running server with a hostile disk or store: damaged records, a full disk, file
descriptors, checksums, retention and keys (issue 16).

Every test here failed on the code before the fix it names and passes after it; all but
the store unit test talk to a real ``nstudio serve`` subprocess on loopback.
"""

from __future__ import annotations

import numpy as np
import pytest

from server_harness import ECHO, ServerProcess, echo_round_trip, pack, wait_until


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


# 8, 9. A full disk ---------------------------------------------------------------------------

class FullDiskServer(ServerProcess):
    """The real server whose store writes fail with ENOSPC while ``self.full`` exists."""

    def __init__(self, tmp, *extra, **kwargs):
        self.full = tmp / "disk-is-full"
        super().__init__(tmp, *extra, env={"NSTUDIO_TEST_FULL_DISK": str(tmp / "disk-is-full")},
                         **kwargs)

    def command(self) -> list[str]:
        command = super().command()
        return [command[0], "-m", "tests.server.full_disk_server", *command[3:]]


@pytest.fixture
def full_disk_server(tmp_path, context):
    server = FullDiskServer(tmp_path).start(context)
    yield server
    server.full.unlink(missing_ok=True)
    server.stop()


def test_disk_full_at_submit_is_storage_full_and_no_job(full_disk_server, make_client):
    server = full_disk_server
    client = make_client(server.endpoint)
    server.full.touch()
    refused = client.submit(ECHO, {}, {"x": 1})
    assert refused["type"] == "error" and refused["code"] == "storage_full", refused
    assert "full" in refused["message"]
    assert client.request("status")["jobs"] == []           # nothing was queued
    server.full.unlink()
    echo_round_trip(client)
    # The refused submit never runs: no second result turns up.
    assert not client.socket.poll(500) and client.inbox == []
    assert [p.name for p in (server.store / "records").iterdir() if p.name.endswith(".tmp")] == []


def test_disk_filling_while_jobs_run(full_disk_server, make_client):
    server = full_disk_server
    client = make_client(server.endpoint)
    slow = client.submit(ECHO, {"steps": 20, "step_seconds": 0.05}, {"x": 1})["job"]
    wait_until(lambda: client.request("status", job=slow)["jobs"][0]["state"] == "running", 10,
               "the first job to start")
    transient = client.submit(ECHO, {}, {"y": np.arange(5, dtype="<i4")}, keep=False)["job"]
    kept = client.submit(ECHO, {}, {"z": 3})["job"]
    server.full.touch()
    # The running job cannot store its result: it fails with storage_full, and says so.
    end = client.events(slow)[-1]
    assert end["type"] == "error" and end["code"] == "storage_full", end
    # keep: false needs no disk: its result is delivered although its record cannot be saved.
    result = client.events(transient)[-1]
    assert result["type"] == "result" and result["outputs"]["y"].tolist() == list(range(5))
    # The next queued job starts on its own (no unrelated request needed to wake the queue).
    assert client.events(kept)[-1]["code"] == "storage_full"
    server.full.unlink()
    states = {j["job"]: j for j in client.request("status")["jobs"]}
    assert states[slow]["state"] == "failed" and states[slow]["error"]["code"] == "storage_full"
    assert states[transient]["state"] == "done"
    echo_round_trip(client)
    assert "Traceback" not in server.log()


def test_leftover_temporaries_are_cleaned_at_start_up(tmp_path, make_server, make_client):
    store = tmp_path / "store"
    (store / "records").mkdir(parents=True)
    (store / "tmp" / "half-written").mkdir(parents=True)
    (store / "records" / ".abc.123.tmp").write_bytes(b"")       # as ENOSPC leaves them
    server = make_server(store=store)
    make_client(server.endpoint).request("ping")
    assert list((store / "records").glob(".*")) == [] and list((store / "tmp").iterdir()) == []


# 7. fetch and file descriptors ---------------------------------------------------------------

class LowFdServer(ServerProcess):
    """The real server under ``ulimit -n 1024`` (set with resource.setrlimit in the child)."""

    def command(self) -> list[str]:
        command = super().command()
        start = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
                 "from server import cli; sys.exit(cli.main(sys.argv[1:]))")
        return [command[0], "-c", start, *command[3:]]


def test_result_of_1500_arrays_is_fetchable_under_1024_fds(tmp_path, context, make_client):
    server = LowFdServer(tmp_path).start(context)
    try:
        client = make_client(server.endpoint)
        inputs = {f"a{k}": np.full(4, k, "<i4") for k in range(1500)}
        job = client.submit(ECHO, {}, inputs)["job"]
        assert client.events(job, timeout=60)[-1]["type"] == "result"
        for _ in range(2):      # and again: nothing leaks between fetches
            fetched = client.request("fetch", job=job, timeout=60)
            assert fetched["type"] == "result", fetched
            assert all(fetched["outputs"][f"a{k}"].tolist() == [k] * 4 for k in range(1500))
        echo_round_trip(client)
    finally:
        assert server.stop() == 0, server.log()


# Also: stored results carry checksums ---------------------------------------------------------

def test_a_flipped_byte_in_a_stored_result_is_corrupt_not_served(make_server, make_client):
    server = make_server()
    client = make_client(server.endpoint)
    data = np.arange(1000, dtype="<f4")
    job = client.submit(ECHO, {}, {"data": data, "note": "x"})["job"]
    assert client.events(job)[-1]["type"] == "result"
    assert client.request("fetch", job=job)["outputs"]["data"].tobytes() == data.tobytes()
    folder = server.store / "results" / job
    npy = next(folder.glob("*.npy"))
    raw = bytearray(npy.read_bytes())
    raw[-7] ^= 0x01                                  # one bit, inside the array's data
    npy.write_bytes(bytes(raw))
    reply = client.request("fetch", job=job)
    assert reply["type"] == "error" and reply["code"] == "corrupt", reply
    assert npy.name in reply["message"]
    raw[-7] ^= 0x01                                  # repaired: served again
    npy.write_bytes(bytes(raw))
    assert client.request("fetch", job=job)["outputs"]["data"].tobytes() == data.tobytes()
    header = folder / "outputs.msgpack"
    header.write_bytes(header.read_bytes().replace(b"\xa1x", b"\xa1y"))   # "note": "x" -> "y"
    reply = client.request("fetch", job=job)
    assert reply["type"] == "error" and reply["code"] == "corrupt", reply
    echo_round_trip(client)


# Also: retention by age and size, not count alone ---------------------------------------------

def test_small_jobs_do_not_evict_an_older_big_result(make_server, make_client):
    import time

    server = make_server("--keep-results", "100", "--store-budget", "1.5M",
                         "--sweep-seconds", "0.2")
    client = make_client(server.endpoint)
    big = np.random.default_rng(1).integers(0, 255, 2**20, dtype=np.uint8)

    def run(inputs) -> str:
        job = client.submit(ECHO, {}, inputs)["job"]
        assert client.events(job)[-1]["type"] == "result"
        return job

    long_job = run({"gaussians": big})             # "yesterday's two-hour reconstruction"
    small = [run({"n": n}) for n in range(101)]
    time.sleep(1.0)                                # several sweeps
    kept = client.request("fetch", job=long_job)
    assert kept["type"] == "result" and kept["outputs"]["gaussians"].tobytes() == big.tobytes()
    # Past the size budget the oldest result outside the newest 100 goes first, and only
    # as much as needed.
    run({"gaussians": big})
    wait_until(lambda: client.request("fetch", job=long_job)["type"] == "error", 10,
               "the store budget to expire the oldest result")
    assert client.request("fetch", job=long_job)["code"] == "not_found"
    assert client.request("fetch", job=small[0])["outputs"]["n"] == 0
    assert len(list((server.store / "results").iterdir())) == 102


def test_stored_results_keep_every_shape_and_order(tmp_path):
    from server.store import Store

    store = Store(tmp_path)
    store.open()
    outputs = {"scalar": np.array(2.5, "<f4"), "fortran": np.asfortranarray(
        np.arange(12, dtype="<i4").reshape(3, 4)), "strided": np.arange(10, dtype="<f8")[::3],
        "empty": np.zeros((0, 2), "|u1"), "flags": np.array([True, False])}
    store.save_result("j1", outputs)
    back = store.load_result("j1")
    for key, value in outputs.items():
        assert (back[key].dtype.str, back[key].shape) == (value.dtype.str, value.shape), key
        assert back[key].tobytes() == np.ascontiguousarray(value).tobytes(), key

# Also: keys are not replaced silently ---------------------------------------------------------

def test_keys_refuse_to_overwrite_without_force(tmp_path):
    from test_server_cli import nstudio

    keys = tmp_path / "keys"
    assert nstudio("keys", "--out", str(keys)).returncode == 0
    before = {p: p.read_bytes() for p in keys.rglob("*.key*")}
    again = nstudio("keys", "--out", str(keys))
    assert again.returncode == 2 and "--force" in again.stderr, again.stderr
    assert {p: p.read_bytes() for p in keys.rglob("*.key*")} == before
    forced = nstudio("keys", "--out", str(keys), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (keys / "server.key_secret").read_bytes() != before[keys / "server.key_secret"]
