"""Fixtures for the final-shot tests: clean Blender file, the add-on's final-shot modules
registered, and a real `nstudio serve` on loopback with a temporary store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

bpy = pytest.importorskip("bpy")

# The modules whose classes these tests need, in add-on registration order.
_MODULES = ("render_engine", "final_shot")


@pytest.fixture(scope="session")
def registered():
    """Register the final-shot feature modules once (as addon.register() does for its list)."""
    import importlib

    mods = [importlib.import_module(f"addon.{name}") for name in _MODULES]
    for mod in mods:
        for cls in mod.CLASSES:
            bpy.utils.register_class(cls)
        if hasattr(mod, "register"):
            mod.register()
    yield mods
    for mod in reversed(mods):
        if hasattr(mod, "unregister"):
            mod.unregister()
        for cls in reversed(mod.CLASSES):
            bpy.utils.unregister_class(cls)


@pytest.fixture(autouse=True)
def clean_file():
    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """Endpoint of a real server process (CPU) on a free loopback port; stopped at the end."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    store = tmp_path_factory.mktemp("store")
    log_path = store / "server.log"
    env = dict(os.environ, NSTUDIO_DEVICE="cpu")
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--bind", endpoint, "--store", str(store),
             "--device", "cpu", "--log-level", "info"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(endpoint, proc, log_path)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(endpoint: str, proc, log_path, timeout_s: float = 60.0) -> None:
    """Poll with hello until the server answers (no fixed sleeps)."""
    import zmq

    from addon import protocol

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()}")
            sock.send_multipart(protocol.encode(protocol.make_header("hello", client="test", protocols=[1])))
            if sock.poll(500):
                msg = protocol.decode(sock.recv_multipart())
                if msg["type"] == "welcome":
                    return
        raise RuntimeError(f"server did not answer within {timeout_s} s:\n{log_path.read_text()}")
    finally:
        sock.close(linger=0)
