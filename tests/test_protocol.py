"""The wire format: round trips, zero-copy decoding, and clean refusals of bad bodies."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from pscluster.protocol import ErrorCode, ProtocolError, decode_frame, encode_frame


def test_round_trip_is_exact_and_zero_copy() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((33, 7)).astype(np.float32),
        "b": np.arange(5, dtype=np.int64),
        "h": np.ones((2, 3), dtype=np.float16),
        "scalar": np.asarray(2.5, dtype=np.float64),
    }
    body = bytearray(encode_frame({"version": 3, "worker": "w0"}, arrays))
    frame = decode_frame(body)
    assert frame.header == {"version": 3, "worker": "w0"}
    for name, array in arrays.items():
        assert frame.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(frame.arrays[name], array)
        # A view into the received buffer, not a copy.
        assert np.shares_memory(frame.arrays[name], np.frombuffer(body, dtype=np.uint8))
    # Payload offsets are aligned for vector math.
    offsets = msgpack.unpackb(bytes(body))[0]["arrays"]
    assert all(spec[2] % 64 == 0 for spec in offsets.values())


def test_any_msgpack_reader_can_decode() -> None:
    body = encode_frame({"k": 1}, {"x": np.arange(4, dtype=np.float32)})
    header, payload = msgpack.unpackb(body)
    dtype, shape, offset, nbytes = header["arrays"]["x"]
    x = np.frombuffer(payload, dtype=dtype, count=nbytes // 4, offset=offset).reshape(shape)
    assert x.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_frames_of_other_encoders_and_long_headers_decode_alike() -> None:
    """Our prefixes end aligned and are unpacked in one go; a body another msgpack writer made
    (bin 8, no filler) and a header longer than the quick look are found by scanning."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    ours = encode_frame({"k": 1, "s": "abc"}, {"x": x})
    prefix_end = len(ours) - x.nbytes
    assert prefix_end % 64 == 0 and ours[prefix_end - 5] == 0xC6
    header = {"k": 1, "s": "abc", "arrays": {"x": ["float32", [2, 3], 0, x.nbytes]}}
    theirs = msgpack.packb([header, x.tobytes()])  # bin 8, unaligned, no filler
    long = encode_frame({"k": 1, "s": "y" * 9000}, {"x": x})
    empty = encode_frame({"k": 2})
    for body, fields in (
        (ours, {"k": 1, "s": "abc"}),
        (theirs, {"k": 1, "s": "abc"}),
        (long, {"k": 1, "s": "y" * 9000}),
    ):
        frame = decode_frame(body)
        assert frame.header == fields
        np.testing.assert_array_equal(frame.arrays["x"], x)
        assert frame.arrays["x"].shape == (2, 3)
    assert decode_frame(empty).header == {"k": 2} and decode_frame(empty).arrays == {}


def test_prefixes_of_any_header_size_stay_aligned_and_exact() -> None:
    x = np.ones(3, dtype=np.float16)
    for fields in range(20):  # past a msgpack fixmap's 15 entries
        header = {f"f{i}": i for i in range(fields)}
        body = encode_frame(header, {"x": x})
        assert (len(body) - x.nbytes) % 64 == 0
        unpacked, payload = msgpack.unpackb(body)
        assert {k: v for k, v in unpacked.items() if k not in ("arrays", "pad")} == header
        assert decode_frame(body).header == header
        assert payload[: x.nbytes] == x.tobytes()


def test_refuses_object_dtype_on_encode() -> None:
    with pytest.raises(ValueError, match="cannot cross the wire"):
        encode_frame({}, {"x": np.array(["a"], dtype=object)})


def _frame_with_spec(spec: list) -> bytes:
    return msgpack.packb([{"arrays": {"x": spec}}, b"\x00" * 16])


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.BAD_FRAME),
        (b"not msgpack at all", ErrorCode.BAD_FRAME),
        (msgpack.packb({"a": 1}), ErrorCode.BAD_FRAME),
        (msgpack.packb([1, b""]), ErrorCode.BAD_FRAME),
        (msgpack.packb([{}, "text"]), ErrorCode.BAD_FRAME),
        (b"\x92\x80\xc6" + struct.pack(">I", 100) + b"short", ErrorCode.BAD_FRAME),
        (msgpack.packb([{}, b"abc"]) + b"trailing", ErrorCode.BAD_FRAME),
        (msgpack.packb([{"arrays": []}, b""]), ErrorCode.BAD_FRAME),
        (_frame_with_spec(["object", [1], 0, 8]), ErrorCode.BAD_DTYPE),
        (_frame_with_spec(["complex64", [1], 0, 8]), ErrorCode.BAD_DTYPE),
        (_frame_with_spec(["float32", [-1], 0, 4]), ErrorCode.BAD_SHAPE),
        (_frame_with_spec(["float32", [3], 0, 8]), ErrorCode.BAD_SHAPE),
        (_frame_with_spec(["float32", [8], 0, 32]), ErrorCode.BAD_SHAPE),  # past the payload
        (_frame_with_spec(["float32", [2], 12, 8]), ErrorCode.BAD_SHAPE),
        (_frame_with_spec(["float32", [2], -4, 8]), ErrorCode.BAD_FRAME),
        (_frame_with_spec(["float32", [2]]), ErrorCode.BAD_FRAME),
        (_frame_with_spec(["float32", [True], 0, 4]), ErrorCode.BAD_SHAPE),
    ],
)
def test_bad_bodies_are_refused_with_a_code(body: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(body)
    assert info.value.code is code
    assert 400 <= info.value.status < 500
