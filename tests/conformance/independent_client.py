"""A minimal client for wire protocol v1, written from shared/PROTOCOL.md alone.

It deliberately imports nothing from this project (no ``addon.wire.protocol``, no ``server``, no
``pipelines``): only pyzmq, msgpack and numpy. If it can talk to the server, the page is
sufficient; if it cannot, either the page or the server is wrong.

What the page says, as implemented here:
- Transport: a DEALER socket connected to the server's ROUTER, ZeroMQ heartbeats on.
- Framing: frame 0 is a msgpack map (the header); frames 1..n are raw buffers referenced from
  the header by ``{"__nd__": k, "dtype": ..., "shape": [...]}``, C-contiguous,
  ``prod(shape) * itemsize`` bytes, dtype from a fixed list.
- Every header has ``v`` (1), ``type``, ``id`` (requests), ``re`` (replies), ``job`` (jobs).

The decoder is strict on purpose: whatever the server sends must satisfy the same rules the
server applies to clients, so a violation on the server's side raises :class:`WireError`.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import msgpack
import numpy as np
import zmq

VERSION = 1
ND = "__nd__"
#: PROTOCOL.md "Arrays": the only dtypes allowed on the wire.
DTYPES = ("|b1", "|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8")


class WireError(Exception):
    """Something the server sent breaks PROTOCOL.md's framing rules."""


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------

def pack(header: dict) -> list[bytes]:
    """Header (numpy arrays anywhere inside) -> the frames of one message."""
    frames: list[bytes] = [b""]

    def walk(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            dtype = value.dtype.str
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype} cannot travel (PROTOCOL.md Arrays)")
            frames.append(np.ascontiguousarray(value).tobytes())
            return {ND: len(frames) - 1, "dtype": dtype, "shape": list(value.shape)}
        if isinstance(value, dict):
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item) for item in value]
        return value

    frames[0] = msgpack.packb(walk(header), use_bin_type=True)
    return frames


def unpack(frames: list[bytes]) -> dict:
    """The frames of one message -> header with arrays; strict (raises WireError)."""
    if not frames:
        raise WireError("no frames")
    try:
        header = msgpack.unpackb(frames[0], raw=False)
    except Exception as error:
        raise WireError(f"frame 0 is not msgpack: {error}") from None
    if not isinstance(header, dict):
        raise WireError(f"header is a {type(header).__name__}, not a map")
    if header.get("v") != VERSION or isinstance(header.get("v"), bool):
        raise WireError(f"header v is {header.get('v')!r}, not {VERSION}")
    if not isinstance(header.get("type"), str):
        raise WireError("header type is not a string")
    used = [True] + [False] * (len(frames) - 1)

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if ND in value:
                return array(value)
            return {key: walk(item) for key, item in value.items()}
        if isinstance(value, list):
            return [walk(item) for item in value]
        return value

    def array(ref: dict) -> np.ndarray:
        k, dtype, shape = ref.get(ND), ref.get("dtype"), ref.get("shape")
        if set(ref) != {ND, "dtype", "shape"}:
            raise WireError(f"array reference has keys {sorted(ref)}")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < len(frames):
            raise WireError(f"array reference to frame {k!r} of {len(frames) - 1}")
        if used[k]:
            raise WireError(f"frame {k} referenced twice")
        used[k] = True
        if dtype not in DTYPES:
            raise WireError(f"dtype {dtype!r} outside the allowed list")
        if not isinstance(shape, list) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise WireError(f"bad shape {shape!r}")
        data = frames[k]
        need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if len(data) != need:
            raise WireError(f"frame {k} has {len(data)} bytes; {dtype} {shape} needs {need}")
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()

    decoded = walk(header)
    unused = [k for k, flag in enumerate(used) if not flag]
    if unused:
        raise WireError(f"frames {unused} are not referenced")
    return decoded


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------

class Client:
    """A DEALER that speaks protocol v1; keeps every message it has not handed out yet.

    Args:
        endpoint: e.g. ``tcp://127.0.0.1:5557``.
        context: a zmq.Context (one is made when omitted).
    """

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, context: zmq.Context | None = None):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        self.socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        self.socket.setsockopt(zmq.HEARTBEAT_TTL, 5000)
        self.socket.connect(endpoint)
        self.inbox: list[dict] = []
        self.prefix = os.urandom(4).hex()

    def close(self) -> None:
        self.socket.close(linger=0)

    def new_id(self) -> str:
        return f"{self.prefix}-{next(self._ids)}"

    # Sending -------------------------------------------------------------------------------

    def request(self, type_: str, **fields) -> str:
        """Send a request ``{v: 1, type, id, **fields}``; returns its id."""
        header = {"v": VERSION, "type": type_, "id": self.new_id()}
        header.update(fields)
        self.send_frames(pack(header))
        return header["id"]

    def send_frames(self, frames: list[bytes]) -> None:
        """Send frames exactly as given (for deliberately malformed messages too)."""
        self.socket.send_multipart(frames)

    # Receiving -----------------------------------------------------------------------------

    def _receive(self, timeout: float) -> dict | None:
        if not self.socket.poll(max(0, int(timeout * 1000))):
            return None
        return unpack(self.socket.recv_multipart())

    def wait(self, predicate, timeout: float = 10.0, what: str = "a message") -> dict:
        """The first message (kept or new) for which ``predicate`` is true; others are kept."""
        for i, message in enumerate(self.inbox):
            if predicate(message):
                return self.inbox.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._receive(deadline - time.monotonic())
            if message is None:
                raise TimeoutError(f"no {what} within {timeout} s; kept: "
                                   f"{[m.get('type') for m in self.inbox]}")
            if predicate(message):
                return message
            self.inbox.append(message)

    def reply(self, request_id: str, timeout: float = 10.0) -> dict:
        """The message whose ``re`` is ``request_id``."""
        return self.wait(lambda m: m.get("re") == request_id, timeout, f"reply to {request_id}")

    def call(self, type_: str, timeout: float = 10.0, **fields) -> dict:
        """Request and its reply."""
        return self.reply(self.request(type_, **fields), timeout)

    def job_events(self, job: str, timeout: float = 30.0) -> list[dict]:
        """Every event of ``job`` up to and including its terminal one (result, error,
        cancelled), in arrival order; events carrying ``re`` (replies) are not job events."""
        events = []
        while True:
            event = self.wait(lambda m: m.get("job") == job and "re" not in m, timeout,
                              f"events of job {job}")
            events.append(event)
            if event["type"] in ("result", "error", "cancelled"):
                return events
