"""The receive path, server and client alike: bodies and frames into buffers of their own.

Two transports carry frames (``pscluster.protocol``):

* the data port (pushes and pulls between workers and shards): each message is an 8-byte
  little-endian length and then the frame, on a persistent TCP connection.
  ``FrameReceiver`` is the asyncio ``BufferedProtocol`` both ends use: the event loop reads
  from the socket into memory that this module hands it, so a large frame goes from the kernel
  straight into its own buffer (one copy per byte, the kernel's), and small ones, several per
  read, are cut from a staging buffer;
* HTTP (the control plane, and plain pulls such as the coordinator's evaluation): the body read
  chunk by chunk with aiohttp's public ``StreamReader.readchunk``.

Either way the arrays decoded from a body are views of it, and the body's buffer comes from a
``BufferPool``: one that no earlier message still needs, or a new one.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable
from typing import cast

import aiohttp

from pscluster.buffers import BUFFERS, BufferPool
from pscluster.protocol import EncodedFrame, ErrorCode, ProtocolError

# The data port's message prefix: the frame's length in bytes.
LENGTH = struct.Struct("<Q")
# Reads land here first; a frame larger than this goes straight into a buffer of its own.
STAGING_BYTES = 1 << 18
# A frame at least this large that has not fully arrived is received into its own buffer.
OWN_BUFFER_BYTES = 1 << 16


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Small frames go out at once (no Nagle delay waiting for the peer's ACK)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def write_frame(transport: asyncio.WriteTransport, frame: EncodedFrame | bytes) -> None:
    """Send one data-port message: its length, then the frame's buffers, never joined (one
    ``writev`` where the kernel takes it all)."""
    if isinstance(frame, bytes):
        transport.writelines((LENGTH.pack(len(frame)), frame))
        return
    buffers: Iterable[bytes | memoryview] = frame.buffers
    transport.writelines((LENGTH.pack(frame.nbytes), *buffers))


class FrameReceiver(asyncio.BufferedProtocol):
    """Cuts length-prefixed frames out of a stream and hands each to ``frame_received`` as a
    memoryview of a buffer of its own (the receiver may keep it; arrays decoded from it are
    views of it). A frame over ``max_bytes`` goes to ``frame_too_large`` instead, and its bytes
    are read and dropped."""

    def __init__(self, max_bytes: int, pool: BufferPool = BUFFERS) -> None:
        self.max_bytes = max_bytes
        self._pool = pool
        self._staging = bytearray(STAGING_BYTES)
        self._view = memoryview(self._staging)
        self._start = self._end = 0  # the staged bytes not yet cut into frames
        self._body: memoryview | None = None  # a large frame being received in place
        self._filled = 0
        self._skip = 0  # bytes still to drop of a frame over the cap
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's implements asyncio.Transport without subclassing it).
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)

    def frame_received(self, body: memoryview) -> None:
        raise NotImplementedError

    def frame_too_large(self, nbytes: int) -> None:
        raise NotImplementedError

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body[self._filled :]
        return self._view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        body = self._body
        if body is not None:
            self._filled += nbytes
            if self._filled == len(body):
                self._body = None
                self.frame_received(body)
            return
        self._end += nbytes
        if self._skip:
            # The rest of a frame over the cap: read and dropped, so the connection stays in
            # step (and the peer is not reset mid-send before it reads the refusal).
            dropped = min(self._skip, self._end - self._start)
            self._skip -= dropped
            self._start += dropped
            if self._skip:
                self._start = self._end = 0
                return
        self._cut()

    def _cut(self) -> None:
        """Hand over every whole frame staged; start receiving a large one in place."""
        staging, view = self._staging, self._view
        while self._end - self._start >= LENGTH.size:
            start = self._start + LENGTH.size
            (length,) = LENGTH.unpack_from(staging, self._start)
            have = self._end - start
            if length > self.max_bytes:
                dropped = min(have, length)
                self._skip = length - dropped
                self._start = start + dropped
                self.frame_too_large(length)
                if self._skip:
                    self._start = self._end = 0
                    return
                continue
            if have >= length:
                body = self._pool.take(length).data
                body[:] = view[start : start + length]
                self._start = start + length
                self.frame_received(body)
                continue
            if length >= OWN_BUFFER_BYTES or start + length > len(staging):
                # The rest arrives straight into the frame's own buffer.
                body = self._pool.take(length).data
                body[:have] = view[start : self._end]
                self._body, self._filled = body, have
                self._start = self._end = 0
                return
            break
        # Keep the partial frame (under OWN_BUFFER_BYTES) at the front: room for the rest.
        rest = self._end - self._start
        if self._start:
            view[:rest] = view[self._start : self._end]
        self._start, self._end = 0, rest


# --- HTTP ---------------------------------------------------------------------------------------


def _check_length(length: int | None, max_bytes: int) -> int:
    if length is None:
        raise ProtocolError(ErrorCode.LENGTH_REQUIRED, "a Content-Length is required", 411)
    if length > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"body of {length} bytes over {max_bytes}", 413)
    return length


async def _fill(content: aiohttp.StreamReader, view: memoryview) -> None:
    """Copy the body into ``view`` chunk by chunk, as the chunks arrive.

    ``readchunk`` hands over one received chunk at a time; ``readany`` would join all the chunks
    buffered so far into a new bytes object first, one more pass over the body.
    """
    length = len(view)
    filled = 0
    while filled < length:
        chunk, _ = await content.readchunk()
        if not chunk:
            break
        end = filled + len(chunk)
        if end > length:
            raise ProtocolError(ErrorCode.BAD_FRAME, "body longer than its Content-Length")
        view[filled:end] = chunk
        filled = end
    if filled != length:
        raise ProtocolError(ErrorCode.BAD_FRAME, "body shorter than its Content-Length")


async def read_body(content: aiohttp.StreamReader, length: int | None, max_bytes: int) -> bytearray:
    """Read a (small, control-plane) body chunk by chunk into one preallocated bytearray."""
    buffer = bytearray(_check_length(length, max_bytes))
    await _fill(content, memoryview(buffer))
    return buffer


async def read_frame_body(
    content: aiohttp.StreamReader,
    length: int | None,
    max_bytes: int,
    pool: BufferPool = BUFFERS,
) -> memoryview:
    """Read a frame sent over HTTP into one buffer from ``pool``, for ``decode_frame``; each
    chunk is copied once, to its final place."""
    view = pool.take(_check_length(length, max_bytes)).data
    await _fill(content, view)
    return view
