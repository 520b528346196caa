"""The one way the add-on opens a connection to the server (bpy-free).

Both clients build their sockets here: :class:`addon.core.client.Client` (asynchronous, polled
from ``bpy.app.timers`` on Blender's main thread) and :class:`addon.core.render_client.Connection`
(blocking, in the F12 render thread and the viewport's worker). So they share

- the socket: a DEALER with ``LINGER`` 0, ZMTP heartbeats and transport reconnect intervals
  (:class:`SocketOptions`);
- the CURVE keys (:class:`CurveKeys`), set whenever keys are given, whatever the endpoint;
- the endpoint check and the ``hello`` they open with (:func:`hello`);
- the application ping period (:data:`PING_INTERVAL_S`).

What differs is what each does while waiting (poll from a timer vs. block with deadlines), and
that stays in the two clients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import zmq

from ..wire import protocol

#: Send an application ``ping`` when nothing was heard for this long, seconds (both clients).
PING_INTERVAL_S = 1.0


class ClientError(Exception):
    """A request or connection could not be made: a malformed endpoint, unusable CURVE keys, a full
    send queue (the message says which). `addon.core.client` raises it too."""


@dataclass(frozen=True)
class CurveKeys:
    """ZeroMQ CURVE keys (Z85-encoded) for talking to a remote server.

    Attributes:
        server_public: The server's public key.
        client_public: This client's public key (on the server's allow-list).
        client_secret: This client's secret key.
    """

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str, client_secret_file: str) -> "CurveKeys":
        """Load keys from ZeroMQ certificate files (as written by `nstudio keys`/zmq.auth).

        Args:
            server_public_file: The server's public certificate (`server.key`).
            client_secret_file: This client's secret certificate (`client.key_secret`), which
                holds the client's public and secret keys.

        Raises:
            ClientError: A file is missing or holds no usable key (the file is named).
        """
        import zmq.auth

        for label, path in (("server public key", server_public_file), ("client secret key", client_secret_file)):
            if not path:
                raise ClientError(f"CURVE: no {label} file configured")
            if not os.path.isfile(path):
                raise ClientError(f"CURVE: {label} file not found: {path}")
        try:
            server_public, _ = zmq.auth.load_certificate(server_public_file)
            client_public, client_secret = zmq.auth.load_certificate(client_secret_file)
        except (ValueError, OSError) as exc:
            raise ClientError(f"CURVE: cannot read key files: {exc}") from exc
        if client_secret is None:
            raise ClientError(f"CURVE: {client_secret_file} holds no secret key (use the .key_secret file)")
        return cls(server_public, client_public, client_secret)


@dataclass(frozen=True)
class SocketOptions:
    """Transport settings of a client socket.

    Attributes:
        heartbeat_ivl_ms: ZMTP heartbeat interval (ZMQ_HEARTBEAT_IVL).
        heartbeat_timeout_ms: ZMTP heartbeat timeout (ZMQ_HEARTBEAT_TIMEOUT).
        heartbeat_ttl_ms: ZMTP heartbeat TTL asked of the peer (ZMQ_HEARTBEAT_TTL).
        reconnect_ivl_ms: first transport reconnect delay (ZMQ_RECONNECT_IVL).
        reconnect_ivl_max_ms: longest transport reconnect delay (ZMQ_RECONNECT_IVL_MAX).
    """

    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    heartbeat_ttl_ms: int = 10000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 4000


def check_endpoint(endpoint) -> str:
    """The endpoint if it looks like ``tcp://host:port`` or ``ipc://path``; else ClientError."""
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ClientError(f"endpoint must look like 'tcp://host:port' or 'ipc://path', got {endpoint!r}")
    return endpoint


def open_socket(endpoint: str, curve: Optional[CurveKeys] = None, options: SocketOptions = SocketOptions(),
                context: Optional[zmq.Context] = None) -> zmq.Socket:
    """A connected DEALER socket to the server (ZeroMQ connects lazily: nothing is sent yet).

    Use it from the thread that made it only.

    Args:
        endpoint: the server's endpoint.
        curve: CURVE keys; None for a server without CURVE (loopback, ipc).
        options: transport settings.
        context: ZeroMQ context (default: the process-wide instance).

    Raises:
        ClientError: the endpoint is malformed or cannot be connected to.
    """
    check_endpoint(endpoint)
    socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.HEARTBEAT_IVL, options.heartbeat_ivl_ms)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.heartbeat_timeout_ms)
        socket.setsockopt(zmq.HEARTBEAT_TTL, options.heartbeat_ttl_ms)
        socket.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
        if curve is not None:
            socket.curve_serverkey = curve.server_public
            socket.curve_publickey = curve.client_public
            socket.curve_secretkey = curve.client_secret
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise ClientError(f"cannot connect to {endpoint!r}: {exc}") from exc
    return socket


def hello(client_name: str) -> dict:
    """The ``hello`` header a client opens with (its ``welcome`` answers with ``re`` = its id)."""
    return protocol.make_header("hello", client=client_name, protocols=[protocol.VERSION])
