"""The Blender layer of the connection: one session, its timer, the local server process.

A `bpy.app.timers` callback (persistent, so it survives file loads) polls the client with a zero
timeout, routes events to the job manager, applies results within a ~20 ms budget, and mirrors
job records into `Scene.nstudio_jobs` (saved in the .blend). Everything runs on Blender's
main thread; no other thread touches bpy. A persistent load_post handler re-attaches the jobs
saved in a file that is opened while connected; connecting re-attaches the open file's jobs.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import bpy
import numpy as np
from bpy.app.handlers import persistent
from bpy.props import BoolProperty, CollectionProperty, IntProperty, StringProperty

from ..core import client as client_mod
from ..core import jobs as jobs_mod

log = logging.getLogger(__name__)

#: Seconds of result application per timer callback.
TIMER_BUDGET_S = 0.02
#: Timer intervals: while jobs are active, and otherwise.
ACTIVE_INTERVAL_S = 0.05
IDLE_INTERVAL_S = 0.25
LOG_TEXT_NAME = "Neural Studio Server Log"


# ------------------------------------------------------------------------------------------------
# Saved job records
# ------------------------------------------------------------------------------------------------

class NSTUDIO_JobItem(bpy.types.PropertyGroup):
    """One job, saved in the .blend so its result can be fetched after Blender restarts."""

    job_id: StringProperty(name="Job", description="Server job id")
    request_id: StringProperty(name="Request", description="Id of the submit message")
    pipeline: StringProperty(name="Pipeline")
    state: StringProperty(name="State", default="submitting")
    stage: StringProperty(name="Stage")
    step: IntProperty(name="Step", min=0)
    total: IntProperty(name="Total", min=0)
    message: StringProperty(name="Message")
    applied: BoolProperty(name="Applied", description="The final result has been applied to Blender data")
    target: StringProperty(name="Target", description="What the result is written into, e.g. an object name")
    preview_image: StringProperty(name="Preview", description="Image holding the latest preview")


CLASSES = (NSTUDIO_JobItem,)


# ------------------------------------------------------------------------------------------------
# Local server process
# ------------------------------------------------------------------------------------------------

class LocalServer:
    """A server started by the add-on; its output goes to a log file; stopped with the session.

    Args:
        command: Command line, e.g. "nstudio serve --store /data/ns".
        endpoint: Passed as NSTUDIO_BIND (a --bind in the command wins).
        log_path: File that receives the process's stdout and stderr.
    """

    def __init__(self, command: str, endpoint: str, log_path: str):
        self.argv = shlex.split(command, posix=os.name != "nt")
        if not self.argv:
            raise ValueError("the local server command is empty (Preferences > Neural Studio > Server Command)")
        self.endpoint = endpoint
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> None:
        """Start the process.

        Raises:
            RuntimeError: The log file cannot be written or the command cannot start (named).
        """
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            log_file = open(self.log_path, "ab")
        except OSError as exc:
            raise RuntimeError(f"cannot write the local server log {self.log_path}: {exc.strerror or exc}") from exc
        env = dict(os.environ, NSTUDIO_BIND=self.endpoint)
        with log_file:
            try:
                self.process = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                    start_new_session=os.name != "nt",
                )
            except OSError as exc:
                raise RuntimeError(f"cannot start the local server {self.argv[0]!r}: {exc}") from exc
        log.info("started local server (pid %d): %s; log: %s", self.process.pid, " ".join(self.argv), self.log_path)

    @property
    def returncode(self) -> Optional[int]:
        """None while running (or never started), else the exit code."""
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the process (kill it if it does not exit within `timeout_s`)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("local server (pid %d) ignored terminate; killing it", process.pid)
            process.kill()
            process.wait(timeout_s)


def default_log_path() -> str:
    """Where this Blender process writes the local server's log."""
    return os.path.join(tempfile.gettempdir(), "neural_studio", f"server-{os.getpid()}.log")


# ------------------------------------------------------------------------------------------------
# Session
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionConfig:
    """What a session needs from the preferences (kept separate so tests can build one).

    Attributes:
        endpoint: Server endpoint.
        start_local_server: Start `server_command` before connecting.
        server_command: Command line of the local server.
        server_public_key: CURVE server public certificate file, or "".
        client_secret_key: CURVE client secret certificate file, or "".
        log_path: Local server log file ("" = default_log_path()).
    """

    endpoint: str
    start_local_server: bool = False
    server_command: str = "nstudio serve"
    server_public_key: str = ""
    client_secret_key: str = ""
    log_path: str = ""

    @classmethod
    def from_preferences(cls, prefs) -> "SessionConfig":
        return cls(endpoint=prefs.endpoint, start_local_server=prefs.start_local_server,
                   server_command=prefs.server_command, server_public_key=bpy.path.abspath(prefs.server_public_key),
                   client_secret_key=bpy.path.abspath(prefs.client_secret_key))

    def connection(self) -> client_mod.ConnectionConfig:
        """The client's settings. Raises client.ClientError for a bad endpoint or key files."""
        curve = None
        if self.server_public_key or self.client_secret_key:
            curve = client_mod.CurveKeys.from_files(self.server_public_key, self.client_secret_key)
        return client_mod.ConnectionConfig(endpoint=self.endpoint, curve=curve)


class Session:
    """A client, its job manager, and optionally a local server, for one Blender process."""

    def __init__(self, config: SessionConfig):
        self.config = config
        self.client = client_mod.Client(config.connection())
        self.manager = jobs_mod.JobManager(self.client)
        self.server: Optional[LocalServer] = None
        if config.start_local_server:
            self.server = LocalServer(config.server_command, config.endpoint, config.log_path or default_log_path())
        self._synced: dict[str, tuple[int, int]] = {}  # record key -> (revision, preview serial)
        self._shown_state = ""

    def start(self) -> None:
        """Start the local server (if any), then connect; a failed connect stops that server again."""
        if self.server is not None:
            self.server.start()
        try:
            self.client.connect()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()

    def submit(self, scene, pipeline: str, params: Optional[dict] = None, inputs: Optional[dict] = None,
               target: str = "", keep: bool = True) -> jobs_mod.JobRecord:
        """Submit a job and record it in `scene` (saved with the .blend).

        Raises:
            client.NotConnected: No connection.
        """
        record = self.manager.submit(pipeline, params=params, inputs=inputs, target=target, keep=keep)
        item = scene.nstudio_jobs.add()
        item.request_id = record.request_id
        item.pipeline = pipeline
        _write_item(item, record)  # also writes the target
        self._synced[record.key] = (record.revision, record.preview_serial)
        return record

    # -- timer work ----------------------------------------------------------------------------

    def tick(self, budget_s: float = TIMER_BUDGET_S) -> bool:
        """Poll, route, apply within `budget_s`, mirror into the scenes. Returns True if busy."""
        start = time.monotonic()
        messages = self.client.poll(0)
        received = bool(messages)
        # Pop, so that no reference to a message outlives its handling here: the manager
        # decides where big received buffers are freed.
        while messages:
            self.manager.handle(messages.pop(0))
        remaining = budget_s - (time.monotonic() - start)
        busy = self.manager.apply(budget_s=max(remaining, 0.0))
        changed = self.sync()
        if changed or self.client.state != self._shown_state:
            self._shown_state = self.client.state
            _tag_redraw()
        return busy or received

    def sync(self) -> bool:
        """Copy changed job records into their scene items. Returns True if anything changed."""
        changed = False
        for key, record in list(self.manager.jobs.items()):
            mark = (record.revision, record.preview_serial)
            if self._synced.get(key) == mark:
                continue
            item = find_item(record)
            if item is None:
                continue  # the user removed it from the list
            _write_item(item, record)
            if self._synced.get(key, (None, 0))[1] != record.preview_serial and record.preview is not None:
                item.preview_image = _update_preview(record).name
            self._synced[key] = mark
            changed = True
        return changed

    @property
    def active_jobs(self) -> bool:
        return any(not r.finished for r in self.manager.jobs.values())

    def reattach(self) -> int:
        """Hand the open file's saved jobs to the manager (fetching unapplied results). Returns count."""
        self.manager.clear()
        self._synced.clear()
        count = 0
        for scene in bpy.data.scenes:
            for item in scene.nstudio_jobs:
                if not item.job_id:
                    if item.state == "submitting":
                        item.state = "failed"
                        item.message = "the file was saved before the server accepted this job"
                    continue
                state = item.state if item.state in jobs_mod.ALL_STATES else "running"
                record = self.manager.attach(item.job_id, item.pipeline, state, target=item.target,
                                             applied=item.applied, stage=item.stage, step=item.step,
                                             total=item.total, message=item.message)
                self._synced[record.key] = (record.revision, record.preview_serial)
                count += 1
        return count


def find_item(record: jobs_mod.JobRecord):
    """The scene item of a job record (by job id, else by submit request id), or None."""
    for scene in bpy.data.scenes:
        for item in scene.nstudio_jobs:
            if (record.id and item.job_id == record.id) or (record.request_id and item.request_id == record.request_id):
                return item
    return None


def _write_item(item, record: jobs_mod.JobRecord) -> None:
    item.job_id = record.id
    item.state = record.state
    item.stage = record.stage
    item.step = max(record.step, 0)
    item.total = max(record.total, 0)
    item.message = record.message
    item.applied = record.applied
    item.target = record.target


def preview_pixels(preview: np.ndarray) -> np.ndarray:
    """An sRGB uint8 preview as Blender image pixels.

    Args:
        preview: sRGB image, row 0 at the top. [H, W, 3|4] or [H, W] uint8

    Returns:
        RGBA float32 in [0, 1], row 0 at the bottom (Blender's order), flattened. [H*W*4]
    """
    image = np.asarray(preview)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"preview must be (H, W, 1|3|4), got shape {image.shape}")
    h, w, c = image.shape
    rgba = np.ones((h, w, 4), dtype=np.float32)
    scale = 1.0 / 255.0 if image.dtype == np.uint8 else 1.0
    if c == 1:
        rgba[:, :, :3] = image.astype(np.float32) * scale
    else:
        rgba[:, :, :c] = image.astype(np.float32) * scale
    return np.ascontiguousarray(rgba[::-1]).reshape(-1)


def _update_preview(record: jobs_mod.JobRecord):
    name = f"NS Preview {record.key[:8]}"
    preview = record.preview
    if isinstance(preview, (bytes, bytearray, memoryview)) or (
            isinstance(preview, np.ndarray) and preview.ndim == 1 and preview.dtype == np.uint8):
        # PNG bytes: Blender decodes them from a file.
        path = os.path.join(tempfile.gettempdir(), "neural_studio", f"preview-{record.key}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(bytes(preview))
        image = bpy.data.images.get(name)
        if image is None:
            image = bpy.data.images.load(path)
            image.name = name
        else:
            image.filepath = path
            image.reload()
        return image
    pixels = preview_pixels(preview)
    h, w = np.asarray(preview).shape[:2]
    image = bpy.data.images.get(name)
    if image is None or tuple(image.size) != (w, h):
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, w, h, alpha=True)
    image.pixels.foreach_set(pixels)
    image.update()
    return image


def _tag_redraw() -> None:
    wm = bpy.context.window_manager
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


# ------------------------------------------------------------------------------------------------
# Module state, timer and handlers
# ------------------------------------------------------------------------------------------------

_session: Optional[Session] = None
_last_log_path = ""


def current() -> Optional[Session]:
    """The live session, or None when not connected."""
    return _session


def require_connected() -> Session:
    """The connected session, or a RuntimeError a person can act on."""
    live = current()
    if live is None or not live.client.connected:
        raise RuntimeError("not connected to a Neural Studio server: press Connect in the Neural Studio panel")
    return live


def require_pipeline(pipeline: str) -> Session:
    """The connected session whose server can run ``pipeline``, or a RuntimeError saying why not."""
    live = require_connected()
    info = ((live.client.welcome or {}).get("pipelines") or {}).get(pipeline)
    if info is None:
        raise RuntimeError(f"the server has no '{pipeline}' pipeline")
    if not info.get("available", False):
        raise RuntimeError(f"'{pipeline}' cannot run on the server: {info.get('reason') or 'no reason given'}")
    return live


def last_log_path() -> str:
    """The local server's log file of the latest session that started one ("" if none)."""
    return _last_log_path


def connect(config: SessionConfig) -> Session:
    """Replace any session by a new one, start it (local server, socket) and re-attach saved jobs.

    Raises:
        client.ClientError: Bad endpoint or CURVE key files.
        RuntimeError: The local server cannot start (its command or its log file).
        ValueError: The local server command is empty.
    """
    global _session, _last_log_path
    disconnect()
    session = Session(config)
    session.start()
    if session.server is not None:
        _last_log_path = session.server.log_path
    _session = session
    session.reattach()
    return session


def disconnect() -> None:
    """Close the session (and stop its local server)."""
    global _session
    session, _session = _session, None
    if session is not None:
        session.stop()
        _tag_redraw()


def timer_tick() -> float:
    """The bpy.app.timers callback: one bounded slice of work; returns the next interval."""
    session = _session
    if session is None:
        return IDLE_INTERVAL_S
    try:
        busy = session.tick()
    except Exception:  # a bug must not unregister the timer (Blender drops timers that raise)
        log.exception("Neural Studio timer failed")
        return IDLE_INTERVAL_S
    if busy:
        return 0.0
    return ACTIVE_INTERVAL_S if session.active_jobs else IDLE_INTERVAL_S


@persistent
def on_load_post(*_args) -> None:
    """A file was opened: re-attach its saved jobs to the live session."""
    session = _session
    if session is not None:
        count = session.reattach()
        log.info("re-attached %d saved job(s)", count)


def _on_exit() -> None:
    disconnect()


def register() -> None:
    bpy.types.Scene.nstudio_jobs = CollectionProperty(type=NSTUDIO_JobItem)
    bpy.app.handlers.load_post.append(on_load_post)
    bpy.app.timers.register(timer_tick, first_interval=IDLE_INTERVAL_S, persistent=True)
    atexit.register(_on_exit)


def unregister() -> None:
    atexit.unregister(_on_exit)
    disconnect()
    if bpy.app.timers.is_registered(timer_tick):
        bpy.app.timers.unregister(timer_tick)
    bpy.app.handlers.load_post.remove(on_load_post)
    del bpy.types.Scene.nstudio_jobs
