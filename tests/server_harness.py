"""Test harness: a real ``nstudio serve`` subprocess on loopback, and a small protocol client.

Shared by tests/server, tests/conformance and the pipelines' end-to-end tests (tests/ is on the
import path through the top conftest; the test folders have no __init__.py, which would make
them packages named ``server`` or ``pipelines`` and shadow the real ones).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from addon.wire import protocol

REPO = Path(__file__).resolve().parents[1]
TERMINAL = ("result", "error", "cancelled")
# Test pipelines (a strict schema; one never available), loaded with --pipelines.
SHAPES_PIPELINE = "tests.server.shapes_pipeline,tests.server.unavailable_pipeline"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Client:
    """A DEALER speaking the protocol with addon.wire.protocol; keeps events it was not waiting for."""

    def __init__(self, context: zmq.Context, endpoint: str, curve: dict | None = None):
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve:
            self.socket.curve_publickey = curve["public"]
            self.socket.curve_secretkey = curve["secret"]
            self.socket.curve_serverkey = curve["server"]
        self.socket.connect(endpoint)
        self.inbox: list[dict] = []

    def send(self, type_: str, **fields) -> str:
        header = protocol.make_header(type_, **fields)
        self.socket.send_multipart(protocol.encode(header), copy=False)
        return header["id"]

    def send_frames(self, frames: list) -> None:
        self.socket.send_multipart(frames, copy=False)

    def recv(self, timeout: float = 10.0) -> dict:
        if self.inbox:
            return self.inbox.pop(0)
        return self._recv_wire(timeout)

    def _recv_wire(self, timeout: float) -> dict:
        if not self.socket.poll(int(timeout * 1000)):
            raise AssertionError(f"no message from the server within {timeout} s")
        return protocol.decode(self.socket.recv_multipart(copy=False))

    def reply_to(self, request_id: str, timeout: float = 10.0) -> dict:
        """The message carrying ``re == request_id``; other messages stay in the inbox."""
        for i, message in enumerate(self.inbox):
            if message.get("re") == request_id:
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._recv_wire(max(0.0, deadline - time.monotonic()))
            if message.get("re") == request_id:
                return message
            self.inbox.append(message)

    def request(self, type_: str, timeout: float = 10.0, **fields) -> dict:
        return self.reply_to(self.send(type_, **fields), timeout)

    def submit(self, pipeline: str = "system.echo", params: dict | None = None,
               inputs: dict | None = None, **fields) -> dict:
        return self.request("submit", pipeline=pipeline, params=params or {},
                            inputs=inputs or {}, **fields)

    def events(self, job: str, timeout: float = 20.0) -> list[dict]:
        """Every event of ``job`` up to and including its terminal one."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            match = next((m for m in self.inbox if m.get("job") == job), None)
            if match is not None:
                self.inbox.remove(match)
            else:
                match = self._recv_wire(max(0.0, deadline - time.monotonic()))
                if match.get("job") != job:
                    self.inbox.append(match)
                    continue
            seen.append(match)
            if match["type"] in TERMINAL:
                return seen

    def close(self) -> None:
        self.socket.close(linger=0)


class ServerProcess:
    """``python -m server serve`` on a free loopback port with its own store and log."""

    def __init__(self, tmp: Path, *extra: str, port: int | None = None,
                 store: Path | None = None, env: dict | None = None, bind: str | None = None):
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.bind = bind or self.endpoint
        self.store = store or tmp / "store"
        self.log_path = tmp / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.extra = extra
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "server", "serve", "--bind", self.bind,
                "--store", str(self.store), "--device", "cpu", "--log-level", "debug",
                "--pipelines", SHAPES_PIPELINE, *self.extra]

    def start(self, context: zmq.Context, curve: dict | None = None) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=str(REPO), **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        probe = Client(context, self.endpoint, curve)
        try:
            deadline = time.monotonic() + 60
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited with {self.proc.returncode}:\n"
                                         f"{self.log()}")
                ping = probe.send("ping")
                try:
                    if probe.reply_to(ping, timeout=0.5)["type"] == "pong":
                        return self
                except AssertionError:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"server did not answer:\n{self.log()}") from None
        finally:
            probe.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"server ignored SIGTERM:\n{self.log()}")


@contextlib.contextmanager
def serving(tmp: Path, *extra: str):
    """A started ``ServerProcess`` (``extra``: its command-line options) and a ``Client`` to it,
    on a context of their own. On leaving, the client closes, the server must stop with exit
    status 0, and the context is destroyed. Yields (server, client)."""
    context = zmq.Context()
    server = client = None
    try:
        server = ServerProcess(tmp, *extra).start(context)
        client = Client(context, server.endpoint)
        yield server, client
    finally:
        if client is not None:
            client.close()
        if server is not None:
            assert server.stop() == 0, server.log()
        context.destroy(linger=0)


# Shared checks ---------------------------------------------------------------------------------

ECHO = "system.echo"


def pack(value) -> bytes:
    """msgpack as the protocol writes it (for hand-made, hostile headers)."""
    return msgpack.packb(value, use_bin_type=True)


def echo_round_trip(client: "Client") -> None:
    """The server still serves: a small echo comes back whole."""
    accepted = client.submit(ECHO, {}, {"x": np.arange(10, dtype="<i4")})
    assert accepted["type"] == "accepted", accepted
    result = client.events(accepted["job"])[-1]
    assert result["type"] == "result" and result["outputs"]["x"].tolist() == list(range(10))
