"""Synchronous ``splat.render`` requests, for the render engine's thread (bpy-free).

Blender calls ``RenderEngine.render()`` in its render job thread, so blocking there does not
freeze the UI. This helper opens its own DEALER socket (sockets stay in the thread that made
them; `addon.core.connection` builds it exactly as for the async client: CURVE keys, heartbeats,
``hello``), says ``hello``, checks that ``splat.render`` is available, submits with ``keep: false``
(final frames are written by Blender; the server need not store them) and waits for the result
in short polls, so a cancel from Blender (``RenderEngine.test_break()``) reaches the server
within a fraction of a second.

Errors come out as :class:`RenderError` with a message a person can act on; a cancelled render
as :class:`RenderCancelled`.

:class:`Connection` is the same socket kept open for many renders (the viewport's worker thread
in :mod:`viewport`): :meth:`Connection.handshake` once, then :meth:`Connection.render` per frame.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..wire import protocol
from . import connection

log = logging.getLogger(__name__)

PIPELINE = "splat.render"
#: Keeps Gaussians on the server for later renders by reference (``Connection.upload``).
UPLOAD = "splat.upload"
CLIENT_NAME = "neural-studio-render"


class RenderError(Exception):
    """The render could not be done; ``code`` is a PROTOCOL.md error code or "unreachable"."""

    def __init__(self, code: str, message: str, detail: Optional[dict] = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


class RenderCancelled(Exception):
    """The caller asked to stop; the server job (if any) was cancelled."""


@dataclass(frozen=True)
class RenderSettings:
    """How to reach the server and how long to wait.

    Attributes:
        endpoint: ZeroMQ endpoint of ``nstudio serve``.
        connect_timeout_s: no ``welcome`` within this long -> "unreachable".
        silence_timeout_s: nothing at all (not even ``pong``) from the server for this long while
            a job runs -> the server is declared gone. Pings go out every ``ping_interval_s``.
        ping_interval_s: ping period while waiting (`connection.PING_INTERVAL_S`, as the async client).
        poll_s: longest wait between two cancel checks.
        curve: CURVE keys (`connection.CurveKeys`) for a server with CURVE on; None for one without.
        socket: transport settings (`connection.SocketOptions`, the async client's defaults).
        limits: decode limits for the (large) replies.
    """

    endpoint: str = protocol.DEFAULT_ENDPOINT
    connect_timeout_s: float = 5.0
    silence_timeout_s: float = 15.0
    ping_interval_s: float = connection.PING_INTERVAL_S
    poll_s: float = 0.1
    curve: Optional[connection.CurveKeys] = None
    socket: connection.SocketOptions = connection.SocketOptions()
    limits: protocol.Limits = field(default_factory=protocol.Limits)


class Connection:
    """One DEALER socket to the server, with deadline-based receive.

    Use it from one thread only (the one that made it). ``render()`` below opens one per call;
    a long-lived user calls :meth:`handshake` once and :meth:`render` for each frame.

    Args:
        settings: endpoint, CURVE keys and timeouts.
        should_cancel: polled at least every ``settings.poll_s`` while waiting.

    Raises:
        RenderError: ("unreachable") the endpoint cannot be connected to (malformed address).
    """

    def __init__(self, settings: RenderSettings, should_cancel: Callable[[], bool] = lambda: False):
        self.settings = settings
        self.should_cancel = should_cancel
        try:
            self.socket = connection.open_socket(settings.endpoint, settings.curve, settings.socket)
        except connection.ClientError as exc:
            raise RenderError("unreachable", str(exc)) from exc

    def close(self) -> None:
        self.socket.close(linger=0)

    def send(self, header: dict) -> None:
        self.socket.send_multipart(protocol.encode(header), copy=False)

    def recv(self, timeout_s: float) -> Optional[dict]:
        """The next message, or None after ``timeout_s`` (one poll)."""
        if not self.socket.poll(int(timeout_s * 1000)):
            return None
        frames = self.socket.recv_multipart(copy=False)
        try:
            return protocol.decode(frames, self.settings.limits)
        except protocol.ProtocolError as exc:
            raise RenderError(exc.code, f"undecodable reply from the server: {exc.message}") from exc

    def handshake(self) -> dict:
        """Say ``hello`` and wait for ``welcome``; check that ``splat.render`` can run there.

        Returns:
            The welcome message.

        Raises:
            RenderError: no welcome within ``settings.connect_timeout_s`` ("unreachable"), the
                server refused, or it lacks a runnable ``splat.render``.
            RenderCancelled: ``should_cancel`` returned True.
        """
        return _handshake(self)

    def render(self, gaussians: dict, cameras: dict, params: Optional[dict] = None,
               on_frame: Optional[Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]] = None,
               on_progress: Optional[Callable[[int, int], None]] = None,
               on_accepted: Optional[Callable[[str], None]] = None) -> dict:
        """Submit one ``splat.render`` job (``keep: false``) and wait for its result.

        Arguments and result as :func:`render`; ``on_accepted`` is called with the job id.
        ``gaussians`` may be a reference from :meth:`upload` instead of the map.
        Call :meth:`handshake` first (at least once per connection).
        """
        return _run(self, gaussians, cameras, params or {}, on_frame, on_progress, on_accepted)


    def upload(self, gaussians: dict) -> str:
        """Keep ``gaussians`` on the server (``splat.upload``); returns the reference that
        :meth:`render` takes in place of the Gaussians map (docs/protocol-notes.md).

        Raises:
            RenderError: the server has no ``splat.upload`` or the job failed.
        """
        out = _run(self, gaussians, None, {}, None, None, None, pipeline=UPLOAD)
        ref = out.get("gaussians_ref")
        if not isinstance(ref, str):
            raise RenderError("internal", f"{UPLOAD} answered no reference")
        return ref


    def render_kept(self, key, gaussians_fn: Callable[[], dict], cameras: dict, params: Optional[dict] = None,
                    **kwargs) -> dict:
        """:meth:`render` with the Gaussians uploaded once per ``key`` and rendered by reference.

        The reference is remembered per (endpoint, key) for the life of the add-on; when the
        server answers that it no longer has it (a restart, its cache full) the Gaussians are
        uploaded again once. ``key`` must change whenever the Gaussians do (e.g. the objects'
        content keys and matrices); ``gaussians_fn`` is called only when an upload is needed.
        """
        slot = (self.settings.endpoint, key)
        ref = _KEPT.get(slot)
        for attempt in (0, 1):
            if ref is None:
                ref = self.upload(gaussians_fn())
                _remember(slot, ref)
            try:
                return self.render(ref, cameras, params, **kwargs)
            except RenderError as exc:
                if attempt or exc.code != "invalid_input" or (exc.detail or {}).get("field") != "inputs.gaussians_ref":
                    raise
                _KEPT.pop(slot, None)
                ref = None
        raise AssertionError("unreachable")


#: (endpoint, key) -> splat.upload reference, most recent last (Connection.render_kept).
_KEPT: dict = {}
_KEPT_MAX = 8


def _remember(slot, ref: str) -> None:
    _KEPT.pop(slot, None)
    _KEPT[slot] = ref
    while len(_KEPT) > _KEPT_MAX:
        _KEPT.pop(next(iter(_KEPT)))


def check_welcome(welcome: dict, endpoint: str) -> None:
    """Raise :class:`RenderError` unless the server offers a runnable ``splat.render``."""
    pipes = welcome.get("pipelines") or {}
    info = pipes.get(PIPELINE)
    if info is None:
        raise RenderError("unknown_pipeline", f"the server at {endpoint} has no '{PIPELINE}' pipeline "
                          f"(it offers: {', '.join(sorted(pipes)) or 'none'})")
    if not info.get("available", False):
        raise RenderError("unavailable", f"'{PIPELINE}' cannot run on the server at {endpoint}: "
                          f"{info.get('reason') or 'no reason given'}")


def render(gaussians: dict, cameras: dict, params: Optional[dict] = None,
           settings: RenderSettings = RenderSettings(),
           should_cancel: Callable[[], bool] = lambda: False,
           on_frame: Optional[Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]] = None,
           on_progress: Optional[Callable[[int, int], None]] = None, keep_key=None) -> dict:
    """Render Gaussians through ``splat.render`` and wait for the frames.

    Args:
        gaussians: PROTOCOL.md Gaussians map, world frame.
        cameras: cameras map with a leading axis T (see :func:`camera.cameras_map`).
        params: ``splat.render`` params (``sh_degree``, ``background``); none -> defaults.
        settings: endpoint and timeouts.
        should_cancel: polled at least every ``settings.poll_s``; True -> cancel the job.
        on_frame: called with (frame, rgb [H, W, 3], alpha [H, W], depth [H, W]) for each
            ``partial`` frame as it arrives (read-only arrays).
        on_progress: called with (step, total) on ``progress``.
        keep_key: when given, the Gaussians are uploaded once for this key and later renders
            with the same key send only the cameras (:meth:`Connection.render_kept`; the key
            must change whenever the Gaussians do). A server without ``splat.upload`` gets them
            by value.

    Returns:
        The result outputs: ``rgb`` [T, H, W, 3] premultiplied linear, ``alpha`` [T, H, W],
        ``depth`` [T, H, W] metres along -Z, inf where empty (read-only arrays).

    Raises:
        RenderError: server unreachable or gone, pipeline missing/unavailable, or the job failed.
        RenderCancelled: ``should_cancel`` returned True.
    """
    conn = Connection(settings, should_cancel)
    try:
        welcome = conn.handshake()
        if keep_key is not None and UPLOAD in (welcome.get("pipelines") or {}):
            return conn.render_kept(keep_key, lambda: gaussians, cameras, params, on_frame=on_frame,
                                    on_progress=on_progress)
        return conn.render(gaussians, cameras, params, on_frame, on_progress)
    finally:
        conn.close()


def _handshake(conn: Connection) -> dict:
    s = conn.settings
    # The only way to know a server is there (ZeroMQ connects lazily).
    hello = connection.hello(CLIENT_NAME)
    conn.send(hello)
    deadline = time.monotonic() + s.connect_timeout_s
    while True:
        if conn.should_cancel():
            raise RenderCancelled()
        msg = conn.recv(min(s.poll_s, max(0.0, deadline - time.monotonic())))
        if msg is not None and msg.get("re") == hello["id"]:
            if msg["type"] == "error":
                raise RenderError(msg.get("code", "internal"), f"server refused hello: {msg.get('message')}")
            break
        if time.monotonic() >= deadline:
            raise RenderError("unreachable", f"no answer from the Neural Studio server at {s.endpoint} within "
                              f"{s.connect_timeout_s:g} s; is `nstudio serve` running there?")
    check_welcome(msg, s.endpoint)
    return msg


def _run(conn: Connection, gaussians, cameras, params, on_frame, on_progress, on_accepted,
         pipeline: str = PIPELINE) -> dict:
    s = conn.settings
    # Submit and wait, pinging so a dead server is noticed. A str is a splat.upload reference.
    inputs = {"gaussians_ref": gaussians} if isinstance(gaussians, str) else {"gaussians": gaussians}
    if cameras is not None:
        inputs["cameras"] = cameras
    submit = protocol.make_header("submit", pipeline=pipeline, params=params, inputs=inputs, keep=False)
    conn.send(submit)
    job = None
    last_heard = last_ping = time.monotonic()
    while True:
        if conn.should_cancel():
            _cancel(conn, job)
            raise RenderCancelled()
        msg = conn.recv(s.poll_s)
        now = time.monotonic()
        if msg is None:
            if now - last_heard > s.silence_timeout_s:
                raise RenderError("unreachable", f"the server at {s.endpoint} stopped answering "
                                  f"(nothing for {s.silence_timeout_s:g} s)")
            if now - last_ping > s.ping_interval_s:
                conn.send(protocol.make_header("ping"))
                last_ping = now
            continue
        last_heard = now
        mtype = msg.get("type")
        if mtype == "accepted" and msg.get("re") == submit["id"]:
            job = msg["job"]
            if on_accepted is not None:
                on_accepted(job)
        elif mtype == "error" and (msg.get("re") == submit["id"] or (job is not None and msg.get("job") == job)):
            raise RenderError(msg.get("code", "internal"), f"{pipeline} failed: {msg.get('message')}",
                              msg.get("detail"))
        elif job is None or msg.get("job") != job:
            continue  # pong, welcome repeats, stray events
        elif mtype == "progress" and on_progress is not None:
            on_progress(int(msg.get("step", 0)), int(msg.get("total", 0)))
        elif mtype == "partial" and on_frame is not None:
            out = msg.get("outputs") or {}
            if "frame" in out and "rgb" in out:
                on_frame(int(out["frame"]), out["rgb"], out["alpha"], out["depth"])
        elif mtype == "result":
            if pipeline != PIPELINE:
                return msg.get("outputs") or {}
            return _check_result(msg.get("outputs") or {}, cameras)
        elif mtype == "cancelled":
            raise RenderCancelled()


def _cancel(conn: Connection, job: Optional[str]) -> None:
    """Cancel the job and wait briefly for the server to confirm (best effort: we are leaving)."""
    if job is None:
        return
    cancel = protocol.make_header("cancel", job=job)
    conn.send(cancel)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        msg = conn.recv(0.1)
        if msg is not None and msg.get("job") == job and msg.get("type") in ("cancelled", "result", "error"):
            return
    log.warning("server did not confirm cancelling job %s", job)


def _check_result(out: dict, cameras: dict) -> dict:
    t = len(cameras["world_from_camera"])
    h, w = int(cameras["height"]), int(cameras["width"])
    want = {"rgb": (t, h, w, 3), "alpha": (t, h, w), "depth": (t, h, w)}
    for key, shape in want.items():
        arr = out.get(key)
        if not isinstance(arr, np.ndarray) or tuple(arr.shape) != shape:
            got = getattr(arr, "shape", type(arr).__name__)
            raise RenderError("internal", f"{PIPELINE} result '{key}' has shape {got}, expected {shape}")
    return out
