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

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np

MSGPACK = "application/msgpack"

# The header is small (names, shapes, a few numbers); a bound stops a hostile body from making the
# decoder buffer megabytes of "header".
MAX_HEADER_BYTES = 1 << 20
# Array payloads start at multiples of this, so decoded views are aligned for vector math.
ALIGNMENT = 64

# Only plain numeric dtypes cross the wire: no object arrays, nothing that needs pickle.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in ("float16", "float32", "float64", "int32", "int64", "uint8")
}


class ErrorCode(StrEnum):
    """Why a request was refused; sent as a value in the reply, with the shard's version."""

    LATE = "late"  # sync: the gradient is for a version already applied; pull the current one
    DUPLICATE = (
        "duplicate"  # this worker already pushed for this version; a retry never counts twice
    )
    STALE = "stale"  # async: staleness above max_staleness
    WARMUP = "warmup"  # async: only rank 0 trains during warmup
    DONE = "done"  # the job reached its step count; no more updates
    FUTURE_VERSION = "future_version"  # base_version ahead of the shard: the client is confused
    BAD_FRAME = "bad_frame"  # not a [header, payload] msgpack body
    BAD_MESSAGE = "bad_message"  # fields missing or of the wrong type
    BAD_DTYPE = "bad_dtype"  # dtype not in WIRE_DTYPES, or not the shard's dtype
    BAD_SHAPE = "bad_shape"  # shape disagrees with the shard's array or the payload size
    NOT_FINITE = "not_finite"  # NaN or Inf in a gradient
    UNKNOWN_PARAMETER = "unknown_parameter"  # a name this shard does not hold
    MISSING_PARAMETER = "missing_parameter"  # a push must carry every array of the shard
    UNKNOWN_WORKER = "unknown_worker"  # the coordinator does not know this worker
    WRONG_SHARD = "wrong_shard"  # the message was meant for another shard index
    TOO_LARGE = "too_large"  # body over the size cap
    LENGTH_REQUIRED = "length_required"  # bodies must declare Content-Length
    UNAUTHORIZED = "unauthorized"  # missing or wrong cluster token
    NOT_READY = "not_ready"  # the cluster is still assembling; retry
    CLUSTER_FULL = "cluster_full"  # all N + k worker ranks are taken
    BUSY = "busy"  # too much work in flight; retry with backoff


class ProtocolError(Exception):
    """A request that is refused: carries the code and the HTTP status to answer with."""

    def __init__(self, code: ErrorCode, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Frame:
    """A decoded data-plane message: its header fields and its arrays (views, not copies)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _padded(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def encode_frame(
    header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None
) -> bytes:
    """Encode header and arrays as one msgpack ``[header, bin]`` body.

    The arrays are copied exactly once, into the body; callers that send the same parameters to
    many workers encode once per version and reuse the bytes.
    """
    arrays = arrays or {}
    layout: dict[str, list[Any]] = {}
    offset = 0
    for name, array in arrays.items():
        dtype = np.dtype(array.dtype)
        if dtype.name not in WIRE_DTYPES:
            raise ValueError(f"array {name!r}: dtype {dtype} cannot cross the wire")
        layout[name] = [dtype.name, list(array.shape), offset, array.nbytes]
        offset = _padded(offset + array.nbytes)
    if "arrays" in header:
        raise ValueError("'arrays' is reserved in frame headers")
    packed_header = msgpack.packb({**header, "arrays": layout}, use_bin_type=True)
    # 0x92: fixarray of two; 0xc6: bin 32 with a big-endian length. Always bin 32, so the payload
    # offset is known before the payload is written.
    prefix = b"\x92" + packed_header + b"\xc6" + struct.pack(">I", offset)
    body = bytearray(len(prefix) + offset)
    body[: len(prefix)] = prefix
    view = memoryview(body)
    base = len(prefix)
    for name, array in arrays.items():
        start = base + layout[name][2]
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        view[start : start + flat.nbytes] = flat.data
    return bytes(body)


def _bin_span(view: memoryview, pos: int) -> tuple[int, int]:
    """Where the msgpack bin starting at ``pos`` holds its bytes: (start, length)."""
    if pos >= len(view):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame ends before its payload")
    marker = view[pos]
    widths = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    if marker not in widths:
        raise ProtocolError(ErrorCode.BAD_FRAME, "payload is not a msgpack bin")
    width = widths[marker]
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
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=MAX_HEADER_BYTES)
    unpacker.feed(view[1 : 1 + MAX_HEADER_BYTES])
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "header truncated or over 1 MiB") from exc
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "header is not a map")
    start, length = _bin_span(view, 1 + unpacker.tell())
    if start + length != len(view):
        raise ProtocolError(ErrorCode.BAD_FRAME, "payload length disagrees with the body size")
    payload = view[start:]
    layout = header.pop("arrays", {})
    if not isinstance(layout, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "'arrays' is not a map")
    arrays = {name: _decode_array(name, spec, payload) for name, spec in layout.items()}
    return Frame(header=header, arrays=arrays)


def _decode_array(name: str, spec: Any, payload: memoryview) -> np.ndarray:
    if not (isinstance(spec, list) and len(spec) == 4):
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"array {name!r}: spec is not [dtype, shape, offset, nbytes]"
        )
    dtype_name, shape, offset, nbytes = spec
    dtype = WIRE_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise ProtocolError(
            ErrorCode.BAD_DTYPE, f"array {name!r}: dtype {dtype_name!r} is not allowed"
        )
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: bad shape {shape!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, nbytes)):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"array {name!r}: bad offset or size")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != nbytes or offset + nbytes > len(payload):
        raise ProtocolError(ErrorCode.BAD_SHAPE, f"array {name!r}: shape disagrees with its bytes")
    return np.frombuffer(payload, dtype=dtype, count=count, offset=offset).reshape(shape)


def error_frame(code: ErrorCode, message: str, **fields: Any) -> bytes:
    """A refusal on the data plane: a frame whose header says ``status: <code>``."""
    return encode_frame({"status": str(code), "message": message, **fields})


def error_json(code: ErrorCode, message: str, **fields: Any) -> dict[str, Any]:
    """A refusal on the control plane."""
    return {"error": str(code), "message": message, **fields}
