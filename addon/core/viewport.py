"""Viewport "server render": the exact ``splat.render`` image of a 3D view, never blocking Blender.

bpy-free (numpy, zmq). The NSTUDIO_SPLATS engine's ``view_update``/``view_draw``
(:mod:`render_engine`) are a thin layer over three parts:

- :func:`camera.camera_from_view`: a 3D view's matrices (``RegionView3D.view_matrix`` and
  ``.window_matrix``) and the region's size -> a pinhole :class:`camera.ViewCamera` in PROTOCOL.md's
  conventions (Blender camera axes, pixels with row 0 at the top).
- :class:`ViewportRenderer`: a worker thread with its own DEALER socket
  (:class:`render_client.Connection`) that renders the newest submitted view with ``keep: false``.
  At most one job is in flight; a view submitted while another waits replaces it, so stale views
  are dropped without being sent. The main thread reads the last finished frame and the status
  without waiting; an unreachable server becomes an error state and is retried.
- :class:`ViewportSession`: what one viewport engine keeps: the scene (Gaussians, params), the
  resolution plan (:class:`ResolutionPlan`: a coarse frame while the view moves, full size once it
  has been still for a moment) and whether Blender should redraw (polled from a bpy.app.timers
  callback, which calls ``RenderEngine.tag_redraw()``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import colour, render_client
from .camera import ViewCamera

log = logging.getLogger(__name__)

#: Gaussian sets at least this large are uploaded once and redrawn by reference (a redraw of 1M
#: at SH degree 3 would otherwise send 236 MB); smaller ones go by value, one message per view.
UPLOAD_MIN_GAUSSIANS = 20_000



# ------------------------------------------------------------------ worker

@dataclass(frozen=True)
class ViewFrame:
    """A finished viewport frame.

    Attributes:
        seq: the request it answers (what :meth:`ViewportRenderer.submit` returned).
        camera: the camera it was rendered from (possibly a coarse one).
        rgba: premultiplied linear RGBA, rows bottom-up (texture order), float32, C-contiguous. [H, W, 4]
        seconds: wall time from taking the request to having the frame.
    """

    seq: int
    camera: ViewCamera
    rgba: np.ndarray
    seconds: float


@dataclass(frozen=True)
class RendererStatus:
    """Where the worker stands.

    Attributes:
        state: "idle" (nothing to do), "rendering", "error" (the last request failed; an
            unreachable server is retried) or "stopped".
        message: a sentence for a person ("" when idle).
        code: PROTOCOL.md error code or "unreachable" in the error state, else "".
    """

    state: str
    message: str = ""
    code: str = ""


@dataclass(frozen=True)
class JobSpan:
    """One request that was sent: when, which job, when it ended (monotonic seconds)."""

    seq: int
    started: float
    ended: float
    job: str
    outcome: str  # "frame", "error", "cancelled"


@dataclass(frozen=True)
class _Request:
    seq: int
    gaussians: dict
    camera: ViewCamera
    params: dict
    srgb: bool


def frame_rgba(rgb: np.ndarray, alpha: np.ndarray, srgb: bool = False) -> np.ndarray:
    """A server frame -> the texture buffer the viewport draws.

    Args:
        rgb: premultiplied colour, row 0 at the top; linear unless ``srgb``. [H, W, 3]
        alpha: [H, W]
        srgb: the Gaussians' colours are sRGB-encoded: convert to linear.

    Returns:
        Premultiplied linear RGBA, rows bottom-up, float32 C-contiguous. [H, W, 4]
    """
    if srgb:
        rgb = colour.srgb_to_linear_premultiplied(rgb, alpha)
    h, w = alpha.shape
    rgba = np.empty((h, w, 4), np.float32)
    rgba[..., :3] = rgb[::-1]
    rgba[..., 3] = alpha[::-1]
    return rgba


class ViewportRenderer:
    """Renders the newest submitted view on the server in a background thread.

    The thread starts on the first :meth:`submit` and owns its socket. Every method is
    non-blocking except :meth:`stop` (bounded) and :meth:`wait_frame` (for tests and benchmarks,
    never for Blender's main thread).

    Args:
        settings: endpoint, CURVE keys and timeouts (a short ``connect_timeout_s`` makes an
            unreachable server show quickly).
        retry_s: after the server was unreachable, wait this long before trying again.
        recheck_s: say ``hello`` again before a request when the connection has been idle this long
            (a restarted or replaced server is found before a large request is sent to it).
    """

    def __init__(self, settings: render_client.RenderSettings, retry_s: float = 2.0, recheck_s: float = 5.0):
        self.retry_s = retry_s
        self.recheck_s = recheck_s
        self._cond = threading.Condition()
        self._settings = settings
        self._pending: Optional[_Request] = None
        self._in_flight: Optional[int] = None
        self._job = ""
        self._frame: Optional[ViewFrame] = None
        self._status = RendererStatus("idle")
        self._seq = 0
        self._retry_at = 0.0
        self._stopping = False
        self._spans: list[JobSpan] = []
        self._dropped = 0
        self._thread: Optional[threading.Thread] = None
        # Worker thread only: the map last uploaded and its reference; whether the server lacks
        # splat.upload.
        self._kept: Optional[tuple[dict, str]] = None
        self._no_upload = False

    # -------------------------------------------------------------- main-thread side

    @property
    def settings(self) -> render_client.RenderSettings:
        return self._settings

    def set_settings(self, settings: render_client.RenderSettings) -> None:
        """Use another endpoint or timeouts from the next request on (reconnects)."""
        with self._cond:
            if settings != self._settings:
                self._settings = settings
                self._retry_at = 0.0
                self._cond.notify_all()

    def submit(self, gaussians: dict, camera: ViewCamera, params: Optional[dict] = None, srgb: bool = False) -> int:
        """Ask for a frame of ``camera``; replaces a request that has not been sent yet.

        Args:
            gaussians: PROTOCOL.md Gaussians map, world frame; not modified afterwards by the caller.
            camera: the view to render.
            params: ``splat.render`` params.
            srgb: the Gaussians' colours are sRGB-encoded (converted to linear for display).

        Returns:
            The request's number; frames carry it (:attr:`ViewFrame.seq`).

        Raises:
            RuntimeError: the renderer was stopped.
        """
        with self._cond:
            if self._stopping:
                raise RuntimeError("the viewport renderer was stopped")
            self._seq += 1
            if self._pending is not None:
                self._dropped += 1
            self._pending = _Request(self._seq, gaussians, camera, dict(params or {}), bool(srgb))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nstudio-viewport-render", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._seq

    def latest(self) -> Optional[ViewFrame]:
        """The last finished frame (of whichever view), or None."""
        with self._cond:
            return self._frame

    def status(self) -> RendererStatus:
        with self._cond:
            return self._status

    @property
    def in_flight(self) -> Optional[int]:
        """Number of the request being rendered now, or None."""
        with self._cond:
            return self._in_flight

    @property
    def current_job(self) -> str:
        """Server job id of the request in flight once the server accepted it, else ""."""
        with self._cond:
            return self._job

    def _accepted(self, job: str) -> None:
        with self._cond:
            self._job = job

    @property
    def pending(self) -> Optional[int]:
        """Number of the request waiting to be sent, or None."""
        with self._cond:
            return self._pending.seq if self._pending is not None else None

    @property
    def dropped(self) -> int:
        """How many requests were replaced before being sent."""
        with self._cond:
            return self._dropped

    def spans(self) -> list[JobSpan]:
        """Every request that was sent, in order."""
        with self._cond:
            return list(self._spans)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopped(self) -> bool:
        """True once :meth:`stop` was called (no request is accepted any more)."""
        with self._cond:
            return self._stopping

    def wait_frame(self, seq: int, timeout_s: float) -> ViewFrame:
        """Block until a frame for request ``seq`` or a later one exists (tests, benchmarks).

        Raises:
            TimeoutError: none within ``timeout_s``; the message has the status.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._frame is None or self._frame.seq < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no viewport frame for request {seq} within {timeout_s:g} s "
                                       f"(status: {self._status.state} {self._status.message})")
                self._cond.wait(left)
            return self._frame

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread: a job in flight is cancelled on the server, nothing new is sent.

        Args:
            timeout_s: how long to wait for the thread; 0 signals it and returns at once.

        Returns:
            True when the thread has ended (or never started).
        """
        with self._cond:
            self._stopping = True
            self._pending = None
            self._cond.notify_all()
        thread = self._thread
        if thread is None:
            with self._cond:
                self._status = RendererStatus("stopped")
            return True
        if timeout_s > 0:
            thread.join(timeout_s)
        return not thread.is_alive()

    # -------------------------------------------------------------- worker thread

    def _should_cancel(self) -> bool:
        return self._stopping

    def _next_request(self) -> Optional[tuple[_Request, render_client.RenderSettings]]:
        """Wait for a request (or stop); None means stop."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                wait = self._retry_at - time.monotonic()
                if self._pending is not None and wait <= 0:
                    req, self._pending = self._pending, None
                    self._in_flight = req.seq
                    w, h = req.camera.width, req.camera.height
                    self._status = RendererStatus("rendering", f"rendering {w} x {h} on {self._settings.endpoint}")
                    return req, self._settings
                self._cond.wait(wait if self._pending is not None else None)

    def _finish(self, req: _Request, started: float, outcome: str, frame: Optional[ViewFrame],
                status: RendererStatus, retry: bool = False) -> None:
        with self._cond:
            self._spans.append(JobSpan(req.seq, started, time.monotonic(), self._job, outcome))
            self._in_flight = None
            self._job = ""
            if frame is not None:
                self._frame = frame
            self._status = status
            if retry:
                self._retry_at = time.monotonic() + self.retry_s
                if self._pending is None and not self._stopping:
                    self._pending = req  # nothing newer: try this view again later
            self._cond.notify_all()

    def _render(self, conn: render_client.Connection, req: _Request) -> dict:
        """One view: large Gaussian sets go up once (``splat.upload``) and every later redraw of
        the same map (``set_scene`` keeps its identity while nothing changes) sends only the
        camera; small ones, and servers without ``splat.upload``, are sent by value."""
        cams = req.camera.cameras_map()
        kept = self._kept
        if kept is not None and kept[0] is req.gaussians:
            try:
                return conn.render(kept[1], cams, req.params, on_accepted=self._accepted)
            except render_client.RenderError as exc:
                if exc.code != "invalid_input" or (exc.detail or {}).get("field") != "inputs.gaussians_ref":
                    raise
                self._kept = None  # the server lost it (restart, full cache): upload again
        if len(req.gaussians["means"]) >= UPLOAD_MIN_GAUSSIANS and not self._no_upload:
            try:
                ref = conn.upload(req.gaussians)
            except render_client.RenderError as exc:
                if exc.code != "unknown_pipeline":
                    raise
                self._no_upload = True
            else:
                # Holding the map keeps its identity from being reused by a new one.
                self._kept = (req.gaussians, ref)
                return conn.render(ref, cams, req.params, on_accepted=self._accepted)
        return conn.render(req.gaussians, cams, req.params, on_accepted=self._accepted)

    def _run(self) -> None:
        conn: Optional[render_client.Connection] = None
        checked_at = -np.inf
        try:
            while True:
                got = self._next_request()
                if got is None:
                    return
                req, settings = got
                started = time.monotonic()
                try:
                    if conn is not None and conn.settings != settings:
                        conn.close()
                        conn = None
                    if conn is None:
                        conn = render_client.Connection(settings, self._should_cancel)
                        checked_at = -np.inf
                    if started - checked_at > self.recheck_s:
                        conn.handshake()
                    out = self._render(conn, req)
                    checked_at = time.monotonic()
                    rgba = frame_rgba(out["rgb"][0], out["alpha"][0], req.srgb)
                    frame = ViewFrame(req.seq, req.camera, rgba, time.monotonic() - started)
                    self._finish(req, started, "frame", frame, RendererStatus("idle"))
                except render_client.RenderCancelled:
                    self._finish(req, started, "cancelled", None, RendererStatus("stopped"))
                    return
                except render_client.RenderError as exc:
                    unreachable = exc.code == "unreachable"
                    if unreachable and conn is not None:
                        conn.close()  # a fresh socket next time: no backlog of queued hellos
                        conn = None
                    log.info("viewport render failed (%s): %s", exc.code, exc.message)
                    self._finish(req, started, "error", None, RendererStatus("error", exc.message, exc.code),
                                 retry=unreachable)
                except Exception as exc:  # a bug must not end the thread silently; the view shows it
                    log.exception("viewport render worker failed")
                    self._finish(req, started, "error", None,
                                 RendererStatus("error", f"internal error: {exc}", "internal"))
        finally:
            if conn is not None:
                conn.close()
            with self._cond:
                self._in_flight = None
                self._status = RendererStatus("stopped")
                self._cond.notify_all()


# ------------------------------------------------------------------ per-viewport session

class ResolutionPlan:
    """Which resolution to ask for: coarse while the view changes, full once it has been still.

    Args:
        coarse_scale: resolution factor while moving; 1 turns coarse frames off.
        settle_s: how long a view must stay unchanged before the full-size frame is asked for.
    """

    def __init__(self, coarse_scale: float = 0.5, settle_s: float = 0.2):
        if not 0.0 < coarse_scale <= 1.0:
            raise ValueError(f"coarse_scale must be in (0, 1], got {coarse_scale!r}")
        self.coarse_scale = coarse_scale
        self.settle_s = settle_s
        self._key = None
        self._changed_at = 0.0
        self._requested: Optional[tuple] = None

    def next_scale(self, key, now: float) -> Optional[float]:
        """The scale to request for view ``key`` at time ``now``, or None when it is already requested."""
        if key != self._key:
            self._key, self._changed_at = key, now
        want = 1.0 if now - self._changed_at >= self.settle_s else self.coarse_scale
        if self._requested == (key, want):
            return None
        self._requested = (key, want)
        return want

    def due(self, now: float) -> bool:
        """True when the view has settled and its full-size frame has not been requested yet."""
        return (self._key is not None and self._requested != (self._key, 1.0)
                and now - self._changed_at >= self.settle_s)

    def reset(self) -> None:
        """Forget the view (the next one is requested again)."""
        self._key = None
        self._requested = None


class ViewportSession:
    """What one viewport engine keeps between ``view_update`` and ``view_draw`` (main thread).

    Args:
        settings: how to reach the server.
        coarse_scale: resolution factor while the view moves (1: always full size).
        settle_s: stillness before the full-size frame.
        retry_s: wait before retrying an unreachable server.
    """

    def __init__(self, settings: render_client.RenderSettings, coarse_scale: float = 0.5, settle_s: float = 0.2,
                 retry_s: float = 2.0):
        self.renderer = ViewportRenderer(settings, retry_s=retry_s)
        self.plan = ResolutionPlan(coarse_scale, settle_s)
        self._gaussians: Optional[dict] = None
        self._params: dict = {}
        self._srgb = False
        self._version = 0
        self._note = ""
        self._drawn: tuple = (None, None)
        self._count = 0

    def set_scene(self, gaussians: Optional[dict], params: Optional[dict] = None, srgb: bool = False,
                  settings: Optional[render_client.RenderSettings] = None, note: str = "") -> None:
        """The Gaussians to render (None: nothing to show) and how.

        A new Gaussians map (by identity: scene_gaussians returns the same map while nothing
        changed), params or colour space makes the next view be requested again.

        Args:
            gaussians: Gaussians map, world frame, or None.
            params: ``splat.render`` params.
            srgb: the Gaussians' colours are sRGB-encoded.
            settings: server settings (changed ones take effect with the next request).
            note: a message for the person when there is nothing to render.
        """
        params = dict(params or {})
        if gaussians is not self._gaussians or params != self._params or srgb != self._srgb:
            self._gaussians, self._params, self._srgb = gaussians, params, bool(srgb)
            self._version += 1
            self.plan.reset()
        self._count = 0 if gaussians is None else len(gaussians["means"])
        self._note = note
        if settings is not None:
            self.renderer.set_settings(settings)

    def view(self, camera: Optional[ViewCamera], now: float, note: str = "") -> Optional[int]:
        """The view being drawn; submits the request it needs now (coarse, full, or none).

        Args:
            camera: the viewport's camera, or None when it cannot be rendered (``note`` says why).
            now: ``time.monotonic()``.
            note: why ``camera`` is None.

        Returns:
            The submitted request's number, or None when nothing was submitted.
        """
        if camera is None:
            self._note = note
            return None
        if self._gaussians is None or self.renderer.stopped:
            return None
        self._note = ""
        key = (self._version, camera.world_from_camera.tobytes(), camera.fx, camera.fy, camera.cx, camera.cy,
               camera.width, camera.height, camera.near, camera.far)
        scale = self.plan.next_scale(key, now)
        if scale is None:
            return None
        return self.renderer.submit(self._gaussians, camera.scaled(scale), self._params, self._srgb)

    def frame(self) -> Optional[ViewFrame]:
        """The frame to draw now (None: nothing to show); remembers what was drawn."""
        frame = self.renderer.latest() if self._gaussians is not None else None
        self._drawn = (frame.seq if frame is not None else None, self.status_text())
        return frame

    def wants_redraw(self, now: float) -> bool:
        """True when a redraw would show something new: a frame, a status, or a settled view."""
        if self._gaussians is None:
            return False
        frame = self.renderer.latest()
        drawn = (frame.seq if frame is not None else None, self.status_text())
        return drawn != self._drawn or self.plan.due(now)

    def error(self) -> str:
        """The message to show over the view, or "" when all is well."""
        if self._note:
            return self._note
        st = self.renderer.status()
        if st.state == "error":
            return f"Neural Studio server render: {st.message}"
        return ""

    def status_text(self) -> str:
        """One line for the viewport's info text."""
        if self._note:
            return f"Neural Studio: {self._note}"
        st = self.renderer.status()
        if st.state == "error":
            retry = " (retrying)" if st.code == "unreachable" else ""
            return f"Neural Studio: {st.message}{retry}"
        frame = self.renderer.latest()
        if st.state == "rendering":
            return f"Neural Studio: {st.message}"
        if frame is not None:
            return (f"Neural Studio: {self._count:,} Gaussians, {frame.camera.width} x {frame.camera.height} "
                    f"in {frame.seconds * 1000:.0f} ms")
        return "Neural Studio: waiting for the server"

    def close(self, timeout_s: float = 0.0) -> bool:
        """Stop the worker (by default without waiting for it); see :meth:`ViewportRenderer.stop`."""
        return self.renderer.stop(timeout_s)
