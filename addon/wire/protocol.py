"""Wire protocol v1: message framing shared by the Blender client and the inference server.

A message is a ZeroMQ multipart message (shared/PROTOCOL.md): frame 0 is a msgpack map, the
header; frames 1..n are raw array buffers that the header references with
``{"__nd__": k, "dtype": "<f4", "shape": [N, 3]}``. This module turns headers holding numpy
arrays into frames (:func:`encode`) and back (:func:`decode`), and checks everything the
protocol says a receiver must check, before any array is built.

Zero copy both ways: :func:`encode` hands out the arrays' own memory (only non-contiguous
arrays are copied) and :func:`decode` builds read-only numpy views over the received frames.
Send with ``socket.send_multipart(frames, copy=False)`` and receive with ``copy=False``.

This module imports numpy and msgpack only (no bpy, no torch, no zmq): it runs inside Blender
and on the server alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5557"

#: The only dtypes that may travel as arrays (PROTOCOL.md "Arrays").
ALLOWED_DTYPES = frozenset(
    ("|b1", "|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8")
)

#: Message types, client to server.
REQUEST_TYPES = ("hello", "submit", "cancel", "status", "fetch", "ping")
#: Message types, server to client.
REPLY_TYPES = (
    "welcome", "pong", "accepted", "status", "progress", "partial", "result", "cancelled", "error",
)
#: Error codes (PROTOCOL.md "Error codes").
ERROR_CODES = frozenset((
    "bad_message", "unsupported_version", "unknown_type", "unknown_pipeline", "invalid_params",
    "invalid_input", "too_large", "unavailable", "busy", "not_found", "cancelled", "internal",
    # This server's additions (docs/protocol-notes.md): the store's disk is full; a stored
    # result failed its checksum.
    "storage_full", "corrupt",
))
#: Job states; the last three are final.
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset(("done", "failed", "cancelled"))

_ND = "__nd__"
# A declared dimension above this cannot describe a real buffer; refusing it early keeps numpy
# from ever seeing absurd shapes such as (0, 2**70).
_MAX_DIM = 2**48
_MAX_NDIM = 32


class ProtocolError(Exception):
    """A message that breaks the protocol, or an error reply received from the peer.

    Attributes:
        code: the PROTOCOL.md error code, e.g. ``"bad_message"``.
        message: what is wrong, for a person.
        detail: optional map, e.g. ``{"field": "params.steps"}``.
        msg_id: the ``id`` of the offending message when its header could be read (a reply
            carries it as ``re``), else None.
    """

    def __init__(self, code: str, message: str, detail: dict | None = None,
                 msg_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.detail = detail
        self.msg_id = msg_id


@dataclass(frozen=True)
class Limits:
    """What a receiver accepts before it looks at a message's content.

    Attributes:
        max_header_bytes: size of frame 0, the msgpack header (16 MiB: room for inline PNG
            previews; large blobs belong in array frames).
        max_depth: nesting of maps and lists inside the header (an array reference counts as
            one level).
        max_frames: number of array frames in one message.
        max_message_bytes: all frames together (4 GiB: a few hundred full-HD RGBA views).
        max_containers: maps and lists in the whole header together. An empty map is one
            byte of msgpack but ~150 bytes of Python objects: without this bound one legal
            16 MiB header of empty maps takes half a minute and gigabytes to decode. Counted
            while msgpack decodes, so a hostile header is refused after this many, cheaply.
        max_container_len: entries of one map or list (msgpack allocates a list's slots up
            front, 8 bytes each); bulk data belongs in array frames.
    """

    max_header_bytes: int = 16 * 2**20
    max_depth: int = 32
    max_frames: int = 4096
    max_message_bytes: int = 4 * 2**30
    max_containers: int = 2**18
    max_container_len: int = 2**20


def new_id() -> str:
    """A fresh message or job id: 32 lowercase hex digits, unique without coordination."""
    return uuid.uuid4().hex


def make_header(type_: str, **fields) -> dict:
    """A header with ``v``, ``type`` and a fresh ``id``; ``fields`` are added (and may set ``id``)."""
    header = {"v": VERSION, "type": type_, "id": new_id()}
    header.update(fields)
    return header


def make_error(code: str, message: str, *, re: str | None = None, job: str | None = None,
               detail: dict | None = None) -> dict:
    """An ``error`` header; ``re``, ``job`` and ``detail`` are included only when given."""
    header = make_header("error", code=code, message=message)
    if re is not None:
        header["re"] = re
    if job is not None:
        header["job"] = job
    if detail is not None:
        header["detail"] = detail
    return header


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

def encode(header: dict) -> list:
    """Turn a header (which may hold numpy arrays anywhere) into the frames of one message.

    Every ``np.ndarray`` becomes ``{"__nd__": k, "dtype": ..., "shape": [...]}`` and its data
    frame ``k``. C-contiguous arrays are not copied: the frame is a view of the array's memory,
    so the caller must not change the array until ZeroMQ has sent it. Big-endian arrays are
    byte-swapped into a copy. numpy scalars become plain Python numbers; tuples become lists.

    Args:
        header: the message header; must contain ``v``, ``type`` (see :func:`make_header`).

    Returns:
        ``[header_bytes, frame_1, ..., frame_n]``, ready for ``send_multipart(copy=False)``.

    Raises:
        TypeError: an array has a dtype outside :data:`ALLOWED_DTYPES`, or a map uses the
            reserved key ``"__nd__"`` (the path is named), or a value msgpack cannot represent.
    """
    frames: list = [b""]
    packed_header = _encode_value(header, frames, "header")
    frames[0] = msgpack.packb(packed_header, use_bin_type=True)
    return frames


def _encode_value(value: Any, frames: list, path: str) -> Any:
    if isinstance(value, np.ndarray):
        return _encode_array(value, frames, path)
    if isinstance(value, dict):
        if _ND in value:
            raise TypeError(f"{path}: the key {_ND!r} is reserved for array references")
        return {key: _encode_value(item, frames, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode_value(item, frames, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _encode_array(array: np.ndarray, frames: list, path: str) -> dict:
    if array.dtype.str.startswith(">"):
        array = array.astype(array.dtype.newbyteorder("<"))
    dtype = array.dtype.str
    if dtype not in ALLOWED_DTYPES:
        raise TypeError(
            f"{path}: dtype {dtype!r} cannot be sent; allowed: {' '.join(sorted(ALLOWED_DTYPES))}"
        )
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    # A byte view of the array's own memory: no copy, which is what makes sending zero-copy.
    frames.append(array.reshape(-1).view(np.uint8).data)
    return {_ND: len(frames) - 1, "dtype": dtype, "shape": list(array.shape)}


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def decode(frames, limits: Limits = Limits()) -> dict:
    """Check and decode the frames of one message (without the ROUTER identity frame).

    Checks, in order: frame count and total size, header size, msgpack well-formedness (no
    extension types, string map keys), that the header is a map, ``v`` (missing or not an int:
    ``bad_message``; not 1: ``unsupported_version``), ``type`` and ``id`` are strings, nesting
    depth, and every array reference: allowed dtype, sane shape, frame exists, byte count equals
    ``prod(shape) * itemsize`` (all before ``np.frombuffer``), and no frame left unreferenced.
    A frame may back several arrays (PROTOCOL.md does not forbid it); the arrays' total size
    then counts against ``max_message_bytes`` too, so a small message cannot expand into a
    huge one downstream (a stored result writes every array).

    Args:
        frames: the message's frames: ``bytes``, ``memoryview`` or ``zmq.Frame`` (as returned
            by ``recv_multipart(copy=False)``; their buffers are used without copying).
        limits: size and shape limits.

    Returns:
        The header, with every array reference replaced by a read-only ``np.ndarray``: a view
        of its frame's memory (a copy only for the rare small frame at an unaligned address).

    Raises:
        ProtocolError: ``too_large``, ``bad_message`` or ``unsupported_version``; ``msg_id``
            is set when the header's ``id`` could be read.
    """
    buffers = [_buffer(frame) for frame in frames]
    if not buffers:
        raise ProtocolError("bad_message", "empty message: no header frame")
    too_large = None
    if len(buffers) - 1 > limits.max_frames:
        too_large = f"{len(buffers) - 1} array frames; at most {limits.max_frames} allowed"
    total = sum(buffer.nbytes for buffer in buffers)
    if too_large is None and total > limits.max_message_bytes:
        too_large = f"message is {total} bytes; at most {limits.max_message_bytes} allowed"
    if too_large is not None:
        # The reply should still carry `re` when the header itself is readable.
        raise ProtocolError("too_large", too_large, msg_id=_readable_id(buffers[0], limits))
    header_bytes = buffers[0]
    if header_bytes.nbytes > limits.max_header_bytes:
        raise ProtocolError(
            "too_large",
            f"header frame is {header_bytes.nbytes} bytes; at most {limits.max_header_bytes} "
            "allowed (send large blobs as |u1 array frames)",
        )
    header = _unpack_header(header_bytes, limits)
    msg_id = header.get("id") if isinstance(header.get("id"), str) else None
    try:
        _check_envelope(header)
        _check_depth(header, limits.max_depth)
        resolver = _Resolver(buffers, limits.max_message_bytes)
        decoded = resolver.resolve(header, "header")
        resolver.check_all_used()
    except ProtocolError as error:
        error.msg_id = msg_id
        raise
    return decoded


def _buffer(frame) -> memoryview:
    # zmq.Frame exposes its memory as .buffer; bytes and memoryviews support the buffer protocol.
    buffer = getattr(frame, "buffer", frame)
    try:
        view = memoryview(buffer)
    except TypeError:
        raise ProtocolError("bad_message", f"frame of type {type(frame).__name__} is not a buffer")
    if view.ndim != 1 or view.itemsize != 1:
        try:
            view = view.cast("B")
        except TypeError:
            raise ProtocolError("bad_message", "frame buffer is not contiguous") from None
    return view


def _reject_ext(code: int, data: bytes):
    raise ProtocolError("bad_message", f"msgpack extension type {code} is not allowed")


class _ContainerCounter:
    """msgpack ``object_hook``/``list_hook``: counts maps and lists as they are built and stops
    the decode at the limit (one cheap call per container; scalars cost nothing)."""

    def __init__(self, limit: int):
        self.left = limit
        self.limit = limit

    def __call__(self, container):
        self.left -= 1
        if self.left < 0:
            raise ProtocolError(
                "bad_message", f"header holds more than {self.limit} maps and lists "
                "(send bulk data as array frames)")
        return container


def _unpack_header(header_bytes: memoryview, limits: Limits) -> dict:
    size = header_bytes.nbytes
    count = _ContainerCounter(limits.max_containers)
    try:
        header = msgpack.unpackb(
            header_bytes,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=_reject_ext,
            object_hook=count,
            list_hook=count,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=min(size, limits.max_container_len),
            max_map_len=min(size, limits.max_container_len),
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except Exception as error:  # msgpack raises many types (ValueError, StackError, ExtraData...)
        if any(f"exceeds max_{kind}_len" in str(error) for kind in ("array", "map")):
            raise ProtocolError(
                "bad_message", f"a map or list in the header has more than "
                f"{limits.max_container_len} entries (send bulk data as array frames)"
            ) from None
        raise ProtocolError(
            "bad_message", f"header is not valid msgpack: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_message", f"header must be a map, not {_kind(header)}")
    return header


def _readable_id(header_bytes: memoryview, limits: Limits) -> str | None:
    """The header's ``id`` if the header frame is within limits and decodes, else None."""
    if header_bytes.nbytes > limits.max_header_bytes:
        return None
    try:
        msg_id = _unpack_header(header_bytes, limits).get("id")
    except ProtocolError:
        return None
    return msg_id if isinstance(msg_id, str) else None


def _check_envelope(header: dict) -> None:
    if "v" not in header:
        raise ProtocolError("bad_message", "header has no 'v' (protocol version)")
    version = header["v"]
    if not _is_int(version):
        raise ProtocolError("bad_message", f"'v' must be an int, not {_kind(version)}")
    if version != VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"protocol version {version} is not supported; this side speaks {VERSION}",
            detail={"supported": [VERSION]},
        )
    if not isinstance(header.get("type"), str):
        raise ProtocolError("bad_message", "header 'type' must be a string")
    if "id" in header and not isinstance(header["id"], str):
        raise ProtocolError("bad_message", "header 'id' must be a string")


def _check_depth(value: Any, max_depth: int) -> None:
    # Iterative, so a hostile header cannot exhaust Python's recursion limit.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise ProtocolError("bad_message", f"header nests deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


class _Resolver:
    """Replaces array references by numpy views, tracking which frames were used."""

    def __init__(self, buffers: list[memoryview], max_array_bytes: int):
        self.buffers = buffers
        self.used = [False] * len(buffers)
        self.used[0] = True
        self.max_array_bytes = max_array_bytes
        self.array_bytes = 0

    def resolve(self, value: Any, path: str) -> Any:
        if isinstance(value, dict):
            if _ND in value:
                return self.array(value, path)
            return {key: self.resolve(item, f"{path}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item, f"{path}[{i}]") for i, item in enumerate(value)]
        return value

    def array(self, ref: dict, path: str) -> np.ndarray:
        index, dtype, shape = ref.get(_ND), ref.get("dtype"), ref.get("shape")
        if not _is_int(index) or index < 1:
            raise ProtocolError("bad_message", f"{path}: '__nd__' must be an int >= 1, not {index!r}")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise ProtocolError(
                "bad_message",
                f"{path}: dtype {dtype!r} is not allowed; allowed: {' '.join(sorted(ALLOWED_DTYPES))}",
            )
        if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
                or not all(_is_int(n) and 0 <= n <= _MAX_DIM for n in shape)):
            raise ProtocolError(
                "bad_message",
                f"{path}: shape must be a list of at most {_MAX_NDIM} ints in [0, 2**48], "
                f"not {shape!r}",
            )
        if index >= len(self.buffers):
            raise ProtocolError(
                "bad_message",
                f"{path}: references frame {index} but the message has only "
                f"{len(self.buffers) - 1} array frames",
            )
        self.used[index] = True
        buffer = self.buffers[index]
        np_dtype = np.dtype(dtype)
        # Python ints cannot overflow; numpy refuses a shape whose non-zero axes multiply past
        # its index range even when another axis is 0 (shape [0, 2**48, 2**48] of an empty
        # frame), so that product is bounded too, by what one message may carry.
        expected = nonzero = np_dtype.itemsize
        for n in shape:
            expected *= n
            nonzero *= max(n, 1)
        if nonzero > self.max_array_bytes:
            raise ProtocolError(
                "bad_message",
                f"{path}: shape {shape} of {dtype} describes more than {self.max_array_bytes} "
                "bytes (counting only its non-zero axes), more than any message may carry",
            )
        if buffer.nbytes != expected:
            raise ProtocolError(
                "bad_message",
                f"{path}: shape {shape} of {dtype} needs {expected} bytes but frame {index} "
                f"has {buffer.nbytes}",
            )
        self.array_bytes += expected
        if self.array_bytes > self.max_array_bytes:
            raise ProtocolError(
                "too_large",
                f"{path}: the arrays add up to more than {self.max_array_bytes} bytes "
                "(frames referenced by several arrays count once per array)",
            )
        try:
            array = np.frombuffer(buffer, dtype=np_dtype).reshape(shape)
        except ValueError as error:  # numpy's own limits, should any remain: still the peer's fault
            raise ProtocolError("bad_message", f"{path}: shape {shape} of {dtype}: {error}") from None
        if not array.flags.aligned:
            # ZeroMQ packs small frames (< 8 KiB) into a shared receive buffer at any offset;
            # copying those few bytes spares every consumer (torch included) unaligned data.
            # Large frames get their own allocation and stay zero-copy.
            array = array.copy()
        array.flags.writeable = False
        return array

    def check_all_used(self) -> None:
        unused = [i for i, used in enumerate(self.used) if not used]
        if unused:
            raise ProtocolError(
                "bad_message", f"frame(s) {unused} are not referenced by any array in the header"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return type(value).__name__
