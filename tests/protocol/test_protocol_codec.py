"""addon.wire.protocol: round trips for every allowed dtype, and every check a receiver makes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from addon.wire import protocol
from addon.wire.protocol import ALLOWED_DTYPES, Limits, ProtocolError

DTYPES = sorted(ALLOWED_DTYPES)


def arrays_of(dtype: str):
    return hnp.arrays(np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                        max_side=5))


any_array = st.sampled_from(DTYPES).flatmap(arrays_of)
plain = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                  st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8))
payload = st.recursive(
    st.one_of(plain, any_array),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=6).filter(lambda k: k != "__nd__"),
                                               children, max_size=4)),
    max_leaves=12,
)


def assert_same(decoded, original):
    if isinstance(original, np.ndarray):
        assert isinstance(decoded, np.ndarray)
        assert decoded.dtype.str == original.dtype.str and decoded.shape == original.shape
        assert decoded.tobytes() == original.tobytes()
        assert not decoded.flags.writeable
    elif isinstance(original, dict):
        assert isinstance(decoded, dict) and decoded.keys() == original.keys()
        for key in original:
            assert_same(decoded[key], original[key])
    elif isinstance(original, (list, tuple)):
        assert isinstance(decoded, list) and len(decoded) == len(original)
        for a, b in zip(decoded, original):
            assert_same(a, b)
    else:
        assert decoded == original and type(decoded) is type(original)


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_dtype(dtype, data):
    array = data.draw(arrays_of(dtype))
    header = protocol.make_header("result", outputs={"a": array})
    decoded = protocol.decode(protocol.encode(header))
    assert_same(decoded["outputs"]["a"], array)
    assert decoded["v"] == 1 and decoded["type"] == "result" and decoded["id"] == header["id"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=payload)
def test_round_trip_nested(value):
    header = protocol.make_header("submit", inputs={"x": value})
    assert_same(protocol.decode(protocol.encode(header))["inputs"]["x"], value)


def test_round_trip_special_shapes():
    arrays = {
        "scalar": np.array(7, "<i4"),
        "empty": np.zeros((0,), "<f4"),
        "empty_2d": np.zeros((3, 0, 2), "<f8"),
        "bool": np.array([True, False, True]),
        "noncontiguous": np.arange(24, dtype="<i8").reshape(4, 6)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6, dtype="<f4").reshape(2, 3)),
        "bigendian": np.arange(5, dtype=">f4"),
    }
    out = protocol.decode(protocol.encode(protocol.make_header("x", a=arrays)))["a"]
    for key, array in arrays.items():
        assert out[key].shape == array.shape
        assert np.array_equal(out[key], array)
    assert out["bigendian"].dtype.str == "<f4"


def test_large_arrays_are_zero_copy_both_ways():
    array = np.random.default_rng(0).normal(size=(1_000_000, 3)).astype("<f4")  # 12 MB
    frames = protocol.encode(protocol.make_header("result", outputs={"means": array}))
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), array)
    received = [bytes(frames[0]), bytes(frames[1])]      # as if off the wire
    decoded = protocol.decode(received)["outputs"]["means"]
    assert np.shares_memory(decoded, np.frombuffer(received[1], np.uint8))
    assert decoded.tobytes() == array.tobytes()


def test_decode_accepts_zmq_frames():
    zmq = pytest.importorskip("zmq")
    array = np.arange(10, dtype="<u2")
    frames = [zmq.Frame(bytes(f)) for f in protocol.encode(protocol.make_header("x", a=array))]
    assert np.array_equal(protocol.decode(frames)["a"], array)


def test_encode_refuses_other_dtypes():
    for bad in (np.zeros(2, np.complex64), np.array(["a"]), np.array([object()], dtype=object)):
        with pytest.raises(TypeError, match="header.a"):
            protocol.encode({"v": 1, "type": "x", "a": bad})


def test_encode_refuses_the_reserved_key():
    with pytest.raises(TypeError, match="reserved"):
        protocol.encode({"v": 1, "type": "x", "a": {"__nd__": 1}})


def test_make_error_and_header():
    error = protocol.make_error("busy", "full", re="r1", job="j1", detail={"field": "x"})
    assert error["type"] == "error" and error["re"] == "r1" and error["job"] == "j1"
    assert error["detail"] == {"field": "x"} and error["v"] == 1
    assert "re" not in protocol.make_error("busy", "full")
    assert protocol.make_header("ping", id="mine")["id"] == "mine"
    assert protocol.new_id() != protocol.new_id()


# ---- validation ----------------------------------------------------------------------------

def pack(header) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def ref(k=1, dtype="<f4", shape=(2,)):
    return {"__nd__": k, "dtype": dtype, "shape": list(shape)}


def expect(code: str, frames, limits: Limits = Limits(), match: str | None = None):
    with pytest.raises(ProtocolError, match=match) as info:
        protocol.decode(frames, limits)
    assert info.value.code == code, info.value
    return info.value


GOOD = {"v": 1, "type": "ping", "id": "abc"}


@pytest.mark.parametrize("frames, match", [
    ([], "empty message"),
    ([b"\xc1"], "msgpack"),                                # never-used msgpack byte
    ([pack(GOOD)[:-2]], "msgpack"),                         # truncated
    ([pack(GOOD) + b"\x00"], "msgpack"),                    # trailing bytes
    ([pack([1, 2])], "must be a map"),
    ([pack(5)], "must be a map"),
    ([pack({"type": "ping"})], "no 'v'"),
    ([pack({"v": "1", "type": "ping"})], "'v' must be an int"),
    ([pack({"v": True, "type": "ping"})], "'v' must be an int"),
    ([pack({"v": 1.0, "type": "ping"})], "'v' must be an int"),
    ([pack({"v": 1})], "'type'"),
    ([pack({"v": 1, "type": 3})], "'type'"),
    ([pack({"v": 1, "type": "ping", "id": 4})], "'id'"),
    ([pack({1: 2, "v": 1, "type": "x"})], "msgpack"),       # non-string map key
    ([msgpack.packb(msgpack.ExtType(5, b"xx"))], "ext"),
    ([pack({**GOOD, "t": msgpack.Timestamp(5)})], "ext"),
    ([pack({**GOOD, "a": ref(dtype="<c8", shape=(2,))}), b"\0" * 16], "not allowed"),
    ([pack({**GOOD, "a": ref(dtype=">f4")}), b"\0" * 8], "not allowed"),
    ([pack({**GOOD, "a": ref(dtype="|O")}), b"\0" * 16], "not allowed"),
    ([pack({**GOOD, "a": ref(dtype=7)}), b"\0" * 8], "not allowed"),
    ([pack({**GOOD, "a": ref(shape=(3,))}), b"\0" * 8], "needs 12 bytes"),
    ([pack({**GOOD, "a": ref(shape=(2**40, 2**40))}), b"\0" * 8], "shape"),
    ([pack({**GOOD, "a": ref(shape=(0, 2**60))}), b""], "shape"),
    ([pack({**GOOD, "a": ref(shape=(-2,))}), b"\0" * 8], "shape"),
    ([pack({**GOOD, "a": ref(shape=(1,) * 33)}), b"\0" * 4], "shape"),
    ([pack({**GOOD, "a": {"__nd__": 1, "dtype": "<f4", "shape": "2"}}), b"\0" * 8], "shape"),
    ([pack({**GOOD, "a": ref(k=2)}), b"\0" * 8], "missing|only 1"),
    ([pack({**GOOD, "a": ref(k=0)}), b"\0" * 8], "__nd__"),
    ([pack({**GOOD, "a": ref(k="1")}), b"\0" * 8], "__nd__"),
    ([pack({**GOOD, "a": ref(k=True)}), b"\0" * 8], "__nd__"),
    ([pack(GOOD), b"\0" * 8], "not referenced"),
    ([pack({**GOOD, "a": ref()}), b"\0" * 8, b"\0" * 8], "not referenced"),
])
def test_bad_messages(frames, match):
    expect("bad_message", frames, match=match)


def test_unsupported_version_carries_the_id():
    error = expect("unsupported_version", [pack({"v": 2, "type": "ping", "id": "q1"})])
    assert error.msg_id == "q1" and error.detail == {"supported": [1]}


def test_errors_after_the_header_was_read_carry_the_id():
    error = expect("bad_message", [pack({**GOOD, "a": ref(shape=(5,))}), b"\0" * 8])
    assert error.msg_id == "abc"
    assert expect("bad_message", [b"\xc1"]).msg_id is None


def test_nesting_depth_limit():
    deep = "leaf"
    for _ in range(40):
        deep = [deep]
    expect("bad_message", [pack({**GOOD, "x": deep})], match="deeper than 32")
    shallow = "leaf"
    for _ in range(20):
        shallow = {"k": shallow}
    assert protocol.decode([pack({**GOOD, "x": shallow})])["x"]["k"]["k"]
    # Deeper than msgpack's own stack: still a clean bad_message.
    expect("bad_message", [b"\x91" * 5000 + b"\xc0"])


def test_size_limits():
    limits = Limits(max_header_bytes=1000, max_frames=3, max_message_bytes=10_000)
    expect("too_large", [pack({**GOOD, "pad": "x" * 2000})], limits, match="header frame")
    expect("too_large", [pack(GOOD)] + [b"\0" * 4] * 4, limits, match="array frames")
    expect("too_large", [pack({**GOOD, "a": ref(dtype="|u1", shape=(20_000,))}),
                         b"\0" * 20_000], limits, match="message is")


def test_a_frame_may_back_several_arrays_within_the_size_limit():
    # PROTOCOL.md does not forbid sharing a frame; the arrays' total counts against the limit,
    # so a small message cannot expand downstream (each stored array is written to disk).
    frames = [pack({**GOOD, "a": ref(), "b": [ref(), ref()]}), np.float32([1, 2]).tobytes()]
    decoded = protocol.decode(frames)
    for array in (decoded["a"], *decoded["b"]):
        np.testing.assert_array_equal(array, [1, 2])
    # The message itself (header + one 400-byte frame) is under the limit; its arrays are not.
    limits = Limits(max_message_bytes=1000)
    many = {**GOOD, "a": [ref(dtype="|u1", shape=(400,)) for _ in range(3)]}
    expect("too_large", [pack(many), b"\0" * 400], limits, match="arrays add up")


def test_decoded_arrays_are_read_only_views():
    frames = [pack({**GOOD, "a": ref()}), bytearray(8)]
    array = protocol.decode(frames)["a"]
    with pytest.raises(ValueError):
        array[0] = 1
    frames[1][0:4] = np.float32(2.5).tobytes()
    assert array[0] == 2.5   # a view of the frame, not a copy


def test_unaligned_frames_decode_to_aligned_arrays():
    header = pack({**GOOD, "a": ref(shape=(9,))})
    backing = bytearray(9 * 4 + 1)
    backing[1:5] = np.float32(1.5).tobytes()
    array = protocol.decode([header, memoryview(backing)[1:]])["a"]
    assert array.flags.aligned and not array.flags.writeable
    assert array[0] == 1.5 and array.shape == (9,)
