"""Non-blocking ZeroMQ client for the Neural Studio server (bpy-free).

One DEALER socket (zguide's "lazy pirate" made asynchronous): every call returns at once; the
owner calls `poll(timeout=0)` regularly (from a `bpy.app.timers` callback in Blender) and gets
the decoded messages that arrived. Liveness follows zguide chapter 4: any incoming message
counts as a sign of life, an application `ping` goes out when the line is quiet, and a peer
silent for `ConnectionConfig.expiry_s` is declared dead. Then the socket is closed and a new
one connects after a backoff; after the new `welcome` the client re-sends unanswered submits
and fetches every job still unfinished, so a server restart loses nothing. ZeroMQ's own ZMTP
heartbeats run underneath.

Sockets stay in the thread that calls this object (Blender's main thread).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import zmq

from ..wire import protocol
from . import connection
from .connection import ClientError, CurveKeys

log = logging.getLogger(__name__)

CLIENT_NAME = "neural-studio-blender"

# Connection states, as shown in the UI.
DISCONNECTED = "disconnected"  # no socket: never connected, or closed
CONNECTING = "connecting"  # socket open, hello sent, waiting for welcome
CONNECTED = "connected"  # welcome received, peer alive
RECONNECTING = "reconnecting"  # peer declared dead; a new socket is due after a backoff


class NotConnected(ClientError):
    """No live connection to a server right now."""


@dataclass(frozen=True)
class ConnectionConfig:
    """How the client connects and decides the server is gone.

    Attributes:
        endpoint: ZeroMQ endpoint, e.g. "tcp://127.0.0.1:5557" or "ipc:///tmp/ns.sock".
        client_name: Sent in `hello`.
        handshake_timeout_s: No `welcome` this long after `hello` -> new socket after backoff.
        ping_interval_s: Send a `ping` when nothing was received for this long (`connection.PING_INTERVAL_S`).
        expiry_s: Nothing received for this long -> the server is declared dead.
        backoff_min_s: First reconnect delay; doubles per failed attempt...
        backoff_max_s: ...up to this.
        watch_poll_s: While jobs from an earlier connection are unfinished, ask `status` this often
            (their events went to the old socket; the status reply says when to fetch).
        socket: transport settings (`connection.SocketOptions`: ZMTP heartbeats); the transport's
            own reconnect delay is capped at ``backoff_max_s``.
        curve: CURVE keys for a remote server; None for loopback/ipc.
        limits: Size limits for decoding replies (results can be several GB).
    """

    endpoint: str = protocol.DEFAULT_ENDPOINT
    client_name: str = CLIENT_NAME
    handshake_timeout_s: float = 3.0
    ping_interval_s: float = connection.PING_INTERVAL_S
    expiry_s: float = 5.0
    backoff_min_s: float = 0.25
    backoff_max_s: float = 4.0
    watch_poll_s: float = 1.0
    socket: connection.SocketOptions = connection.SocketOptions()
    curve: Optional[CurveKeys] = None
    limits: protocol.Limits = field(default_factory=protocol.Limits)

    def __post_init__(self):
        connection.check_endpoint(self.endpoint)
        for name in ("handshake_timeout_s", "ping_interval_s", "expiry_s", "backoff_min_s", "backoff_max_s", "watch_poll_s"):
            if getattr(self, name) <= 0:
                raise ClientError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.backoff_max_s < self.backoff_min_s:
            raise ClientError(f"backoff_max_s ({self.backoff_max_s}) < backoff_min_s ({self.backoff_min_s})")


class Client:
    """Non-blocking DEALER client: `connect()`, then call `poll(0)` regularly.

    Args:
        config: Connection settings.
        context: ZeroMQ context (default: the process-wide instance).
        clock: Monotonic clock, seconds.
    """

    def __init__(self, config: ConnectionConfig = ConnectionConfig(), context: Optional[zmq.Context] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._context = context or zmq.Context.instance()
        self._clock = clock
        self._socket: Optional[zmq.Socket] = None
        self.state = DISCONNECTED
        self.welcome: Optional[dict] = None
        self.last_error = ""
        self.generation = 0  # incremented for every new socket
        self.connections = 0  # number of welcomes received (1 = first connection)
        self._hello_id = ""
        self._hello_at = 0.0
        self._last_recv = 0.0
        self._last_ping = 0.0
        self._backoff = config.backoff_min_s
        self._reconnect_at = 0.0
        self._last_watch_poll = 0.0
        # Requests not yet answered that must survive a reconnect: id -> header.
        self._unanswered_submits: dict[str, dict] = {}
        # Unfinished jobs: job id -> generation of the socket that last heard of them.
        self._watched: dict[str, int] = {}
        self._fetch_ids: dict[str, str] = {}  # fetch request id -> job id

    # -- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    @property
    def watched_jobs(self) -> tuple[str, ...]:
        """Ids of the unfinished jobs this client keeps track of."""
        return tuple(self._watched)

    def connect(self) -> None:
        """Open a socket and send `hello`. Returns at once; `poll` reports the `welcome`."""
        self._close_socket()
        self._open_socket()

    def close(self) -> None:
        """Close the socket (pending messages are dropped) and stop reconnecting."""
        self._close_socket()
        self.state = DISCONNECTED
        self.welcome = None

    def _open_socket(self) -> None:
        # Transport reconnects stay within our own backoff, which replaces dead sockets.
        options = dataclasses.replace(self.config.socket, reconnect_ivl_max_ms=int(self.config.backoff_max_s * 1000))
        try:
            socket = connection.open_socket(self.config.endpoint, self.config.curve, options, self._context)
        except ClientError:
            self.state = DISCONNECTED
            raise
        self._socket = socket
        self._fetch_ids.clear()  # replies to the old socket's fetches never come
        self.generation += 1
        self.state = CONNECTING
        now = self._clock()
        hello = connection.hello(self.config.client_name)
        self._hello_id = hello["id"]
        self._hello_at = now
        self._send(hello)
        log.info("connecting to %s (attempt %d)", self.config.endpoint, self.generation)

    def _close_socket(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _declare_dead(self, reason: str) -> None:
        log.warning("server at %s: %s; reconnecting in %.2f s", self.config.endpoint, reason, self._backoff)
        self.last_error = reason
        self._close_socket()
        self.state = RECONNECTING
        self._reconnect_at = self._clock() + self._backoff
        self._backoff = min(self._backoff * 2, self.config.backoff_max_s)

    # -- requests ------------------------------------------------------------------------------

    def submit(self, pipeline: str, params: Optional[dict] = None, inputs: Optional[dict] = None,
               keep: bool = True) -> str:
        """Send `submit`; the reply (`accepted` or `error`) carries `re` = the returned id.

        If the connection dies before the reply, the submit is sent again after reconnecting.
        The caller must not modify `inputs`' arrays afterwards (they are sent without copying).

        Raises:
            NotConnected: No live connection.
        """
        self._require_connected("submit")
        header = protocol.make_header("submit", pipeline=pipeline, params=params or {}, inputs=inputs or {}, keep=keep)
        self._send(header)
        self._unanswered_submits[header["id"]] = header
        return header["id"]

    def cancel(self, job: str) -> str:
        """Send `cancel` for `job`. Raises NotConnected."""
        self._require_connected("cancel")
        return self._send(protocol.make_header("cancel", job=job))

    def status(self, job: Optional[str] = None) -> str:
        """Send `status` (all jobs, or one). Raises NotConnected."""
        self._require_connected("status")
        header = protocol.make_header("status") if job is None else protocol.make_header("status", job=job)
        return self._send(header)

    def fetch(self, job: str) -> str:
        """Send `fetch` for `job` (its stored result comes back as `result`). Raises NotConnected."""
        self._require_connected("fetch")
        request_id = self._send(protocol.make_header("fetch", job=job))
        self._fetch_ids[request_id] = job
        return request_id

    def ping(self) -> str:
        """Send an application `ping`. Raises NotConnected."""
        self._require_connected("ping")
        return self._send(protocol.make_header("ping"))

    def watch(self, job: str) -> None:
        """Keep track of an unfinished job: fetched now if connected, else after (re)connecting."""
        # Generation -1: no socket of ours hears its events, so status polling covers it.
        self._watched[job] = -1
        if self.connected:
            self.fetch(job)

    def unwatch(self, job: str) -> None:
        """Stop tracking a job (it ended or the user forgot it)."""
        self._watched.pop(job, None)

    def _require_connected(self, what: str) -> None:
        if self.state != CONNECTED or self._socket is None:
            raise NotConnected(f"cannot {what}: not connected to {self.config.endpoint} ({self.state})")

    def _send(self, header: dict) -> str:
        frames = protocol.encode(header)
        try:
            self._socket.send_multipart(frames, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again as exc:
            raise ClientError(f"send queue to {self.config.endpoint} is full; the server is not reading") from exc
        return header["id"]

    # -- receiving -----------------------------------------------------------------------------

    def poll(self, timeout: float = 0.0, max_messages: int = 64) -> list[dict]:
        """Receive what has arrived and run the liveness timers.

        Args:
            timeout: Seconds to wait for the first message (0: never wait).
            max_messages: At most this many messages per call (the rest wait for the next call).

        Returns:
            Decoded messages in arrival order (undecodable ones are logged and dropped).
        """
        messages: list[dict] = []
        if self._socket is not None:
            wait_ms = int(timeout * 1000)
            if wait_ms <= 0 or self._socket.poll(wait_ms, zmq.POLLIN):
                while len(messages) < max_messages:
                    try:
                        frames = self._socket.recv_multipart(copy=False, flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._last_recv = self._clock()
                    try:
                        msg = protocol.decode(frames, self.config.limits)
                    except protocol.ProtocolError as exc:
                        log.error("dropped an undecodable message from the server: %s", exc)
                        continue
                    if self._on_message(msg):
                        messages.append(msg)
        self._run_timers()
        return messages

    def _on_message(self, msg: dict) -> bool:
        """Connection bookkeeping for one message; False hides it from the caller."""
        kind = msg.get("type")
        re = msg.get("re")
        if kind == "welcome":
            if re != self._hello_id:
                return False  # an answer to a hello from an earlier socket
            self._on_welcome(msg)
            return True
        if self.state == CONNECTING:
            # Anything but the welcome before the handshake belongs to an old exchange.
            return False
        self._unanswered_submits.pop(re, None)
        fetched = self._fetch_ids.pop(re, None)
        if fetched is not None and kind in ("error", "result"):
            # A fetch is answered by the result, a status (still running) or an error that
            # means the job ended (failed, cancelled, not kept); say which job it was.
            msg.setdefault("job", fetched)
        job = msg.get("job")
        if kind == "accepted" and job:
            self._watched[job] = self.generation
        elif job and job in self._watched:
            if kind in ("result", "cancelled", "error"):
                self._watched.pop(job, None)  # the job ended
            elif kind in ("progress", "partial"):
                self._watched[job] = self.generation  # its events reach this socket
        return True

    def _on_welcome(self, msg: dict) -> None:
        first = self.connections == 0
        self.welcome = msg
        self.state = CONNECTED
        self.connections += 1
        self._backoff = self.config.backoff_min_s
        self.last_error = ""
        now = self._clock()
        self._last_ping = now
        self._last_watch_poll = now
        log.info("%s %s (server %s)", "connected to" if first else "reconnected to", self.config.endpoint,
                 msg.get("server"))
        # Nothing lost: resend submits that were never answered, then fetch every unfinished job.
        for header in list(self._unanswered_submits.values()):
            self._send(header)
        # A job keeps the generation it was last heard on, so status polling covers it until
        # its events reach this socket or it ends.
        for job in list(self._watched):
            self.fetch(job)

    def _run_timers(self) -> None:
        now = self._clock()
        if self.state == RECONNECTING and now >= self._reconnect_at:
            self._open_socket()
        elif self.state == CONNECTING and now - self._hello_at > self.config.handshake_timeout_s:
            self._declare_dead(f"no welcome within {self.config.handshake_timeout_s:.1f} s")
        elif self.state == CONNECTED:
            silent = now - self._last_recv
            if silent > self.config.expiry_s:
                self._declare_dead(f"silent for {silent:.1f} s")
            elif silent > self.config.ping_interval_s and now - self._last_ping > self.config.ping_interval_s:
                self._last_ping = now
                self.ping()
            elif (now - self._last_watch_poll > self.config.watch_poll_s
                  and any(gen != self.generation for gen in self._watched.values())):
                # Jobs heard of on an earlier socket send their events there: ask how they are.
                self._last_watch_poll = now
                self.status()
