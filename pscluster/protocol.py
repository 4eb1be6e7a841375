"""The wire protocol: every message, error code and tensor encoding, defined once.

Data-plane bodies (pushes, pulls) are msgpack, content type ``application/msgpack``, laid out as
a two-element msgpack array ``[header, payload]``:

* ``header`` is a map with the message's fields plus ``"arrays"``: ``{name: [dtype, shape,
  offset, nbytes]}``;
* ``payload`` is one msgpack ``bin`` holding the raw bytes of every array, back to back.

Any msgpack library can read it. Ours decodes zero-copy: it unpacks only the small header and then
takes ``numpy.frombuffer`` views of the payload where it lies in the received buffer, so a 40 MB
gradient is never copied by the decoder. Nothing is ever pickled.

Control-plane bodies (register, heartbeat, membership, status) are small JSON objects.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from pscluster.buffers import BUFFERS, BufferPool

# Re-exported: the wire's dtypes and error codes are part of the protocol.
from pscluster.dtypes import WIRE_DTYPES as WIRE_DTYPES
from pscluster.dtypes import all_finite as all_finite
from pscluster.dtypes import to_wire as to_wire
from pscluster.dtypes import wire_dtype as wire_dtype
from pscluster.errors import ErrorCode as ErrorCode
from pscluster.errors import ProtocolError as ProtocolError

MSGPACK = "application/msgpack"

# The header is small (names, shapes, a few numbers); a bound stops a hostile body from making the
# decoder buffer megabytes of "header".
MAX_HEADER_BYTES = 1 << 20
# Array payloads start at multiples of this, so decoded views are aligned for vector math.
ALIGNMENT = 64


@dataclass(frozen=True)
class Frame:
    """A decoded data-plane message: its header fields and its arrays (views, not copies)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _padded(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


# Header key of the filler that makes the prefix a multiple of ALIGNMENT bytes long, so that the
# arrays of a received body start aligned wherever the buffer is (NumPy's fast paths need that).
PAD_KEY = "pad"


@dataclass(frozen=True)
class EncodedFrame:
    """A frame as the buffers to write one after another: the prefix (msgpack array marker,
    header, bin length), then each array's bytes and padding. ``nbytes`` in all.

    Sending it never joins the buffers: a 40 MB gradient goes from its array to the socket.
    """

    buffers: tuple[bytes | memoryview, ...]
    nbytes: int

    def tobytes(self) -> bytes:
        return b"".join(self.buffers)


@dataclass(frozen=True)
class Layout:
    """Where each array of a frame lies in its payload: ``{name: [dtype, shape, offset,
    nbytes]}`` and the payload's size. It depends on the arrays' dtypes and shapes alone, so one
    payload can go out under many headers (a shard's reply frame under each reply's own)."""

    arrays: dict[str, list[Any]]
    size: int
    # The header's last entries, packed once: ``"arrays": {...}`` and the filler's key.
    _entries: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        entries = msgpack.packb("arrays") + msgpack.packb(self.arrays)
        if self.arrays:
            entries += msgpack.packb(PAD_KEY)
        object.__setattr__(self, "_entries", entries)

    def prefix(self, header: Mapping[str, Any]) -> bytes:
        """Everything before the payload: the msgpack array marker, the header, the bin length.

        With arrays, a filler entry (``PAD_KEY``, last) brings the prefix to a multiple of
        ALIGNMENT: a bin8 of as many zero bytes as it takes. Only the message's own fields are
        packed per call; the layout's entries were packed once.
        """
        if "arrays" in header or PAD_KEY in header:
            raise ValueError(f"'arrays' and {PAD_KEY!r} are reserved in frame headers")
        # 0xc6: bin 32 with a big-endian length. Always bin 32, so the payload offset is known
        # before the payload is written.
        tail = b"\xc6" + _BIN32.pack(self.size)
        entries = len(header) + (2 if self.arrays else 1)
        if entries > _FIXMAP_MAX:
            return self._prefix_packed_whole(header, tail)
        # A map of up to 15 entries is one marker byte and its key-value pairs back to back.
        fields = msgpack.packb(header)[1:] if header else b""
        marker = bytes((0x80 | entries,))
        if not self.arrays:
            return b"".join((b"\x92", marker, fields, self._entries, tail))
        # 1 (array marker) + marker + fields + entries + 2 (bin8 marker, length) + filler + tail
        extra = -(1 + 1 + len(fields) + len(self._entries) + 2 + len(tail)) % ALIGNMENT
        return b"".join(
            (b"\x92", marker, fields, self._entries, b"\xc4", bytes((extra,)), bytes(extra), tail)
        )

    def _prefix_packed_whole(self, header: Mapping[str, Any], tail: bytes) -> bytes:
        """``prefix`` for a header of more than 15 fields: the whole map packed at once."""
        if not self.arrays:
            return b"\x92" + msgpack.packb({**header, "arrays": {}}, use_bin_type=True) + tail
        packed = msgpack.packb({**header, "arrays": self.arrays, PAD_KEY: b""}, use_bin_type=True)
        extra = -(1 + len(packed) + len(tail)) % ALIGNMENT
        # packed ends with the filler's b"\xc4\x00" (bin8 of length 0): set its length.
        return b"".join((b"\x92", packed[:-1], bytes((extra,)), bytes(extra), tail))


# The most entries a msgpack fixmap holds (its count is the marker's low four bits).
_FIXMAP_MAX = 15
_BIN32 = struct.Struct(">I")


def layout_of(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> Layout:
    """The layout of arrays of the given (dtype, shape), each starting aligned. Remembered: a
    worker frames the same shapes every step, and a shard its reply frames."""
    key = tuple(specs.items())
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _new_layout(specs)
        if len(_LAYOUTS) >= _LAYOUTS_KEPT:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))  # the oldest
        _LAYOUTS[key] = layout
    return layout


_LAYOUTS: dict[tuple[tuple[str, tuple[np.dtype, tuple[int, ...]]], ...], Layout] = {}
_LAYOUTS_KEPT = 64


def _new_layout(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]]) -> Layout:
    arrays: dict[str, list[Any]] = {}
    offset = end = 0
    for name, (dtype, shape) in specs.items():
        if dtype.name not in WIRE_DTYPES:
            raise ValueError(f"array {name!r}: dtype {dtype} cannot cross the wire")
        nbytes = math.prod(shape) * dtype.itemsize
        offset = _padded(end)  # each array starts aligned; the payload ends with the last one
        arrays[name] = [dtype.name, list(shape), offset, nbytes]
        end = offset + nbytes
    return Layout(arrays, end)


def _specs(
    arrays: Mapping[str, np.ndarray], dtype: np.dtype | None = None
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {name: (dtype or np.dtype(a.dtype), tuple(a.shape)) for name, a in arrays.items()}


def _byte_view(array: np.ndarray) -> memoryview:
    # reshape(-1) is a view of a C-contiguous array, and a contiguous copy of any other.
    return array.reshape(-1).view(np.uint8).data


# A frame's plan for arrays of given names, dtypes and shapes: the layout, and per array the
# zero bytes that pad up to it and its size. Remembered, as layouts are.
_Plan = tuple[Layout, tuple[tuple[str, bytes, int], ...]]
_PLANS: dict[tuple[tuple[str, np.dtype, tuple[int, ...]], ...], _Plan] = {}


def _plan(arrays: Mapping[str, np.ndarray]) -> _Plan:
    key = tuple([(name, array.dtype, array.shape) for name, array in arrays.items()])
    plan = _PLANS.get(key)
    if plan is None:
        layout = layout_of(_specs(arrays))
        steps, end = [], 0
        for name in arrays:
            offset, nbytes = layout.arrays[name][2:]
            steps.append((name, bytes(offset - end), nbytes))
            end = offset + nbytes
        plan = (layout, tuple(steps))
        if len(_PLANS) >= _LAYOUTS_KEPT:
            _PLANS.pop(next(iter(_PLANS)))  # the oldest
        _PLANS[key] = plan
    return plan


def frame_buffers(
    header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> EncodedFrame:
    """The frame of header and arrays without copying the arrays: the buffers are views of them.

    The arrays must not change until the frame is sent. For a push: the worker's fresh gradients.
    """
    arrays = arrays or {}
    layout, steps = _plan(arrays)
    prefix = layout.prefix(header)
    buffers: list[bytes | memoryview] = [prefix]
    for name, gap, nbytes in steps:
        if gap:
            buffers.append(gap)
        if nbytes:
            buffers.append(_byte_view(arrays[name]))
    return EncodedFrame(tuple(buffers), len(prefix) + layout.size)


def snapshot_target(
    arrays: Mapping[str, np.ndarray] | None = None,
    dtype: str | np.dtype | None = None,
    pool: BufferPool = BUFFERS,
) -> tuple[Layout, np.ndarray, dict[str, np.ndarray]]:
    """A frame for arrays shaped like ``arrays`` (in ``dtype`` if given): its layout, its payload
    buffer, and the writable arrays inside the payload that the caller fills in. A snapshot that
    stays valid while the source arrays go on changing (a shard's parameters of one version).

    The buffer comes from ``pool``: one that no earlier reply is still being sent from. Only the
    padding between arrays is written here.
    """
    arrays = arrays or {}
    wire = None if dtype is None else wire_dtype(dtype)
    layout = layout_of(_specs(arrays, wire))
    payload = pool.take(layout.size)
    targets: dict[str, np.ndarray] = {}
    end = 0
    for name in arrays:
        kind, shape, offset, nbytes = layout.arrays[name]
        payload[end:offset] = 0
        targets[name] = payload[offset : offset + nbytes].view(WIRE_DTYPES[kind]).reshape(shape)
        end = offset + nbytes
    return layout, payload, targets


def encode_frame(
    header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> bytes:
    """Encode header and arrays as one msgpack ``[header, bin]`` body, as ``bytes``.

    The arrays are copied exactly once, into the body. The data path sends ``frame_buffers``
    (no copy) or a shard's ``Snapshot`` of its parameters instead.
    """
    return frame_buffers(header, arrays).tobytes()


# A msgpack bin's marker -> the width of its length field.
_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def _bin_span(view: memoryview, pos: int) -> tuple[int, int]:
    """Where the msgpack bin starting at ``pos`` holds its bytes: (start, length)."""
    if pos >= len(view):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame ends before its payload")
    width = _BIN_WIDTHS.get(view[pos])
    if width is None:
        raise ProtocolError(ErrorCode.BAD_FRAME, "payload is not a msgpack bin")
    if pos + 1 + width > len(view):
        raise ProtocolError(ErrorCode.BAD_FRAME, "truncated payload length")
    length = int.from_bytes(view[pos + 1 : pos + 1 + width], "big")
    return pos + 1 + width, length


def decode_frame(buffer: bytes | bytearray | memoryview) -> Frame:
    """Decode a ``[header, bin]`` body; arrays are read-only-safe views into ``buffer``.

    Raises ProtocolError (never anything else) for any malformed input.
    """
    view = memoryview(buffer).cast("B")
    if len(view) < 2 or view[0] != 0x92:
        raise ProtocolError(ErrorCode.BAD_FRAME, "body is not a msgpack [header, payload] array")
    found = _aligned_header(view)
    if found is None:
        header, start, length = _scanned_header(view)
    else:
        header, start = found
        length = len(view) - start
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "header is not a map")
    if start + length != len(view):
        raise ProtocolError(ErrorCode.BAD_FRAME, "payload length disagrees with the body size")
    payload = view[start:]
    layout = header.pop("arrays", {})
    header.pop(PAD_KEY, None)
    if not isinstance(layout, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "'arrays' is not a map")
    arrays = {name: _decode_array(name, spec, payload) for name, spec in layout.items()}
    return Frame(header=header, arrays=arrays)


# How far into a body the quick look for the end of an aligned prefix goes (headers are usually
# a few hundred bytes; a longer one is found by scanning).
_ALIGNED_LOOK_BYTES = 4096
# A payload-less frame's last five bytes: an empty bin 32.
_EMPTY_BIN32 = b"\xc6\x00\x00\x00\x00"


def _aligned_header(view: memoryview) -> tuple[Any, int] | None:
    """The header and payload start of a frame as ``Layout.prefix`` writes them, in one
    ``unpackb``: the prefix ends with a bin 32 marker and the payload's length, at a multiple
    of ALIGNMENT (or at the body's end, for no payload). None if no such end is found.

    A candidate end is exact when the bytes before it unpack as one object: msgpack is
    self-delimiting, so a shorter slice is truncated and a longer one has extra data, and both
    raise.
    """
    total = len(view)
    if total >= 6 and view[total - 5 :] == _EMPTY_BIN32:
        found = _unpacked_before(view, total)
        if found is not None:
            return found
    for end in range(ALIGNMENT, min(total, _ALIGNED_LOOK_BYTES) + 1, ALIGNMENT):
        if view[end - 5] == 0xC6 and _BIN32.unpack_from(view, end - 4)[0] == total - end:
            found = _unpacked_before(view, end)
            if found is not None:
                return found
    return None


def _unpacked_before(view: memoryview, end: int) -> tuple[Any, int] | None:
    """The header, if the bytes between the array marker and the bin 32 ending at ``end`` are
    one msgpack object."""
    try:
        return msgpack.unpackb(view[1 : end - 5], raw=False, strict_map_key=True), end
    except (ValueError, TypeError, msgpack.UnpackException):
        return None


def _scanned_header(view: memoryview) -> tuple[Any, int, int]:
    """Any frame's header, the start of its payload and the payload's declared length: the
    header unpacked from windows of growing size (``Unpacker`` says where it ended)."""
    # read_size: its first buffer (by default a megabyte, allocated and freed per frame).
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_buffer_size=MAX_HEADER_BYTES, read_size=4096
    )
    # Feed a small window first, then more if needed: feeding copies, and a 1 MiB window would
    # copy a megabyte of every 40 MB body.
    end = 1
    limit = min(len(view), 1 + MAX_HEADER_BYTES)
    window = 512
    while True:
        start, end = end, min(limit, end + window)
        unpacker.feed(view[start:end])
        try:
            header = unpacker.unpack()
            break
        except msgpack.OutOfData as exc:
            if end >= limit:
                raise ProtocolError(ErrorCode.BAD_FRAME, "header truncated or over 1 MiB") from exc
            window *= 16
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"header is not valid msgpack: {exc}") from exc
    start, length = _bin_span(view, 1 + unpacker.tell())
    return header, start, length


def _natural(value: Any) -> bool:
    return type(value) is int and value >= 0


def _decode_array(name: str, spec: Any, payload: memoryview) -> np.ndarray:
    if type(spec) is not list or len(spec) != 4:
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"array {name!r}: spec is not [dtype, shape, offset, nbytes]"
        )
    dtype_name, shape, offset, nbytes = spec
    dtype = WIRE_DTYPES.get(dtype_name) if type(dtype_name) is str else None
    if dtype is None:
        raise ProtocolError(
            ErrorCode.BAD_DTYPE, f"array {name!r}: dtype {dtype_name!r} is not allowed"
        )
    count = 1
    if type(shape) is not list:
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: bad shape {shape!r}")
    for extent in shape:
        if not _natural(extent):
            raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: bad shape {shape!r}")
        count *= extent
    if not (_natural(offset) and _natural(nbytes)):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"array {name!r}: bad offset or size")
    if count * dtype.itemsize != nbytes or offset + nbytes > len(payload):
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: shape disagrees with its bytes")
    array = np.frombuffer(payload, dtype=dtype, count=count, offset=offset)
    return array if len(shape) == 1 else array.reshape(shape)


def error_json(code: ErrorCode, message: str, **fields: Any) -> dict[str, Any]:
    """A refusal on the control plane."""
    return {"error": str(code), "message": message, **fields}
