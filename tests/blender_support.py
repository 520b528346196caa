"""Shared by the Blender-side suites (tests/blender, blender_data, final_shot, workflow).

- The add-on is enabled through Blender's add-on system once per pytest process (the
  session-scoped ``blender_addon`` fixture in tests/conftest.py calls :func:`enable_addon` and
  :func:`disable_addon`), so the suites never register feature modules on their own and never
  collide when they all run in one process. A test that checks registration itself disables
  the add-on and enables it again afterwards (:func:`addon_disabled`).
- :func:`clean_file`: the databpy pattern, a clean file before and after each test.
- :class:`LoopbackServer`: a real ``nstudio serve --device cpu`` on a free loopback port, waited
  for with ``hello`` polls (no fixed sleeps); killable and restartable on the same port.
- :func:`tick_until`: drive the add-on's real timer callback until a condition holds.

Importing this module does not import bpy.
"""

from __future__ import annotations

import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# `addon` must be the source package (addon_utils imports it by name), whatever the state of
# the editable install.
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import demo# noqa: E402  (bpy-free)

ADDON = "addon"
#: The `nstudio` script of this environment.
NSTUDIO = Path(sys.executable).with_name("nstudio")


# ------------------------------------------------------------------ the add-on in this process

def addon_enabled() -> bool:
    """True when the add-on is enabled in Blender's add-on system."""
    import bpy

    return ADDON in bpy.context.preferences.addons


def enable_addon() -> None:
    """Enable the add-on (registers every feature module, creates its preferences); idempotent."""
    import addon_utils

    if addon_enabled():
        return
    module = addon_utils.enable(ADDON, default_set=True, handle_error=None)
    if module is None:
        raise RuntimeError("addon_utils could not enable the add-on")


def disable_addon() -> None:
    """Disable the add-on (unregisters everything, stops its session); idempotent."""
    import addon_utils

    if addon_enabled():
        addon_utils.disable(ADDON, default_set=True, handle_error=None)


def preferences():
    """The add-on's preferences. Look them up each time: disabling the add-on frees them."""
    import bpy

    return bpy.context.preferences.addons[ADDON].preferences


def reset_preferences() -> None:
    """Every add-on preference back to its default (they outlive the file a test opens)."""
    prefs = preferences()
    for prop in prefs.bl_rna.properties:
        if prop.identifier not in ("rna_type", "bl_idname") and not prop.is_readonly:
            prefs.property_unset(prop.identifier)


@contextmanager
def addon_disabled():
    """The add-on disabled for the duration; enabled again afterwards if it was before."""
    was_enabled = addon_enabled()
    disable_addon()
    try:
        yield
    finally:
        if was_enabled:
            enable_addon()


def clean_file():
    """A clean Blender file before and after a test (use as an autouse fixture's body)."""
    import bpy

    bpy.ops.wm.read_homefile(app_template="")
    yield
    bpy.ops.wm.read_homefile(app_template="")


# ------------------------------------------------------------------ a real server

class LoopbackServer(demo.ServerProcess):
    """``nstudio serve --device cpu`` on 127.0.0.1, its store and log in ``folder``.

    Use ``server = LoopbackServer(folder).start()`` and ``server.stop()``; in a fixture,
    ``yield from serve(folder)``.

    Args:
        folder: holds ``store/`` and ``server-<port>.log``.
        port: port to bind (default: a free one).
        curve_dir: keys made by :func:`make_curve_keys`: the server runs with CURVE on
            (``--curve-dir``) and is waited for with the client key pair in that folder.
    """

    def __init__(self, folder: Path, port: int | None = None, curve_dir: Path | None = None):
        self.folder = Path(folder)
        self.port = port or demo.free_loopback_port()
        self.store = self.folder / "store"
        self.curve_dir = None if curve_dir is None else Path(curve_dir)
        super().__init__(f"tcp://127.0.0.1:{self.port}", self.store, "cpu", self.folder / f"server-{self.port}.log")
        if self.curve_dir is not None:
            self.argv += ["--curve-dir", str(self.curve_dir)]

    def curve_keys(self):
        """The client's `addon.core.connection.CurveKeys` for this server (None without CURVE)."""
        from addon.core.connection import CurveKeys

        if self.curve_dir is None:
            return None
        return CurveKeys.from_files(str(self.curve_dir / "server.key"), str(self.curve_dir / "client.key_secret"))

    def start(self, timeout_s: float = 60.0) -> "LoopbackServer":
        """Start the process and wait until it answers ``hello``.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout_s`` (with its log's tail).
        """
        self.__enter__()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll with ``hello`` until a ``welcome`` comes back."""
        import zmq

        from addon.wire import protocol

        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        keys = self.curve_keys()
        if keys is not None:
            sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
                keys.server_public, keys.client_public, keys.client_secret)
        sock.connect(self.endpoint)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.returncode is not None:
                    raise RuntimeError(f"server exited with {self.returncode}:\n{self.log_tail()}")
                sock.send_multipart(protocol.encode(protocol.make_header("hello", client="tests", protocols=[1])))
                if sock.poll(500) and protocol.decode(sock.recv_multipart())["type"] == "welcome":
                    return
            raise RuntimeError(f"server at {self.endpoint} did not answer within {timeout_s:g} s:\n{self.log_tail()}")
        finally:
            sock.close(linger=0)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to say goodbye."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)

    def restarted(self) -> "LoopbackServer":
        """A new server on the same port and store (after :meth:`kill` or :meth:`stop`), started."""
        return LoopbackServer(self.folder, port=self.port, curve_dir=self.curve_dir).start()


def make_curve_keys(folder: Path) -> Path:
    """CURVE keys for a server and one allowed client, made by ``nstudio keys --out folder``."""
    import subprocess

    folder = Path(folder)
    head = [str(NSTUDIO)] if NSTUDIO.is_file() else [sys.executable, "-m", "server"]
    made = subprocess.run([*head, "keys", "--out", str(folder)], capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise RuntimeError(f"nstudio keys failed: {made.stderr}")
    return folder


def serve(folder: Path):
    """A fixture body: a started :class:`LoopbackServer` in ``folder``, stopped afterwards."""
    server = LoopbackServer(folder).start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ waiting

def tick_until(predicate, timeout_s: float, what: str = "the condition", server: LoopbackServer | None = None,
               on_tick=None):
    """Run the add-on's timer callback until ``predicate()`` is truthy (a polled deadline).

    Args:
        predicate: checked after every tick; its truthy value is returned.
        timeout_s: give up after this many seconds.
        what: named in the failure message.
        server: when given, its exit fails at once and its log tail goes into failure messages.
        on_tick: called after every tick (e.g. to record what the tick changed).

    Raises:
        AssertionError: the deadline passed or the server exited.
    """
    from addon.blender import session

    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if server is not None and server.returncode is not None:
            raise AssertionError(f"server exited ({server.returncode}) while waiting for {what}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            live = session.current()
            state = live.client.state if live else "no session"
            tail = f"; server log:\n{server.log_tail()}" if server is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (client {state}){tail}")
        interval = session.timer_tick()
        if on_tick is not None:
            on_tick()
        time.sleep(min(interval, 0.02))
