"""A real `nstudio serve` subprocess on loopback, for the add-on's tests (bpy-free).

Shared by tests/addon and tests/blender (which puts this folder on sys.path).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NSTUDIO = Path(sys.executable).with_name("nstudio")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class ServerProcess:
    """`nstudio serve --bind tcp://127.0.0.1:PORT --store DIR --device cpu`, restartable."""

    def __init__(self, store: Path, port: int | None = None):
        self.store = Path(store)
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.log_path = self.store.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def command(self) -> list[str]:
        return [str(NSTUDIO), "serve", "--bind", self.endpoint, "--store", str(self.store), "--device", "cpu",
                "--log-level", "info"]

    def start(self) -> "ServerProcess":
        self.store.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=str(REPO))
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
