"""``nstudio`` subcommands, environment settings and the security rules of ``serve``."""

from __future__ import annotations

import subprocess
import sys

import zmq.auth

from addon.wire import protocol
from server_harness import REPO, Client, ServerProcess, free_port


def nstudio(*args: str, timeout: float = 60, env: dict | None = None):
    import os

    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, timeout=timeout,
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})))


def test_keys_then_curve_admits_only_allowed_clients(tmp_path, make_server, make_client):
    keys = tmp_path / "keys"
    made = nstudio("keys", "--out", str(keys))
    assert made.returncode == 0, made.stderr
    for name in ("server.key", "server.key_secret", "client.key", "client.key_secret",
                 "authorized_clients/client.key"):
        assert (keys / name).is_file(), name
    server_public, _ = zmq.auth.load_certificate(keys / "server.key")
    client_public, client_secret = zmq.auth.load_certificate(keys / "client.key_secret")
    allowed = {"public": client_public, "secret": client_secret, "server": server_public}

    server = make_server("--curve-dir", str(keys), curve=allowed)
    good = make_client(server.endpoint, allowed)
    assert good.request("ping")["type"] == "pong"
    stranger_public, stranger_secret = zmq.curve_keypair()
    stranger = make_client(server.endpoint, {"public": stranger_public,
                                             "secret": stranger_secret,
                                             "server": server_public})
    plain = make_client(server.endpoint)
    for outsider in (stranger, plain):
        ping = protocol.encode(protocol.make_header("ping"))
        try:
            outsider.socket.send_multipart(ping, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # the server already refused the handshake: no connection to queue on
        # A refused handshake never produces a message; give it ample time to try.
        assert not outsider.socket.poll(1500)
    assert good.request("ping")["type"] == "pong"
    assert "CURVE on" in server.log()


def test_non_loopback_bind_needs_curve_or_insecure(tmp_path):
    refused = nstudio("serve", "--bind", f"tcp://0.0.0.0:{free_port()}", "--store",
                      str(tmp_path / "s"), "--device", "cpu")
    assert refused.returncode == 2
    assert "--curve-dir" in refused.stderr and "--insecure" in refused.stderr


def test_missing_keys_exit_with_a_clear_message(tmp_path):
    missing = nstudio("serve", "--curve-dir", str(tmp_path / "nokeys"), "--store",
                      str(tmp_path / "s"), "--device", "cpu")
    assert missing.returncode == 2
    assert "server.key_secret" in missing.stderr and "nstudio keys" in missing.stderr


def test_insecure_bind_warns_loudly(tmp_path, context):
    port = free_port()
    server = ServerProcess(tmp_path, "--insecure", port=port, bind=f"tcp://0.0.0.0:{port}")
    try:
        server.start(context)
        assert "INSECURE" in server.log()
    finally:
        server.stop()


def test_settings_come_from_the_environment(tmp_path, context):
    port = free_port()
    store = tmp_path / "env-store"
    server = ServerProcess(tmp_path, port=port, env={
        "NSTUDIO_BIND": f"tcp://127.0.0.1:{port}", "NSTUDIO_STORE": str(store),
        "NSTUDIO_DEVICE": "cpu", "NSTUDIO_MAX_QUEUE": "1"})
    server.command = lambda: [sys.executable, "-m", "server", "serve"]
    try:
        server.start(context)
        client = Client(context, server.endpoint)
        long_job = client.submit("system.echo", {"steps": 100, "step_seconds": 0.1})["job"]
        client.submit("system.echo")
        assert client.submit("system.echo")["code"] == "busy"     # NSTUDIO_MAX_QUEUE=1
        client.request("cancel", job=long_job)
        client.close()
        assert (store / "records").is_dir()                       # NSTUDIO_STORE
    finally:
        server.stop()


def test_bad_settings_are_refused():
    assert nstudio("serve", "--keep-results", "5").returncode == 2
    bad_device = nstudio("serve", "--device", "tpu")
    assert bad_device.returncode == 2 and "tpu" in bad_device.stderr
    bad_threads = nstudio("serve", "--threads", "-1")
    assert bad_threads.returncode == 2 and "--threads" in bad_threads.stderr


def test_doctor_reports_every_part():
    doctor = nstudio("doctor", timeout=120)
    assert doctor.returncode == 0, doctor.stderr
    out = doctor.stdout
    for expected in ("Python", "torch", "CUDA:", "bpy:", "pipeline system.echo: available"):
        assert expected in out, (expected, out)
    assert "rasterizer backend" in out or "kernels:" in out


def test_demo_options_pass_through_to_the_demo():
    # `nstudio demo --out DIR ...` is README's first command: options after `demo` are the
    # demo's own, so `--help` must print the demo's options, not nstudio's.
    result = nstudio("demo", "--help")
    assert result.returncode == 0, result.stderr
    assert "--views" in result.stdout and "--out" in result.stdout


def test_no_subcommand_prints_help():
    result = nstudio()
    assert result.returncode == 2 and "serve" in result.stdout


def test_second_server_on_the_same_store_or_port_is_refused(make_server, tmp_path):
    first = make_server()
    same_store = nstudio("serve", "--bind", f"tcp://127.0.0.1:{free_port()}", "--store",
                         str(first.store), "--device", "cpu")
    assert same_store.returncode == 2 and "in use by another server" in same_store.stderr
    same_port = nstudio("serve", "--bind", first.endpoint, "--store", str(tmp_path / "other"),
                        "--device", "cpu")
    assert same_port.returncode == 2 and "cannot serve on" in same_port.stderr
