"""HTTP plumbing shared by all services: sessions, bodies read in place and written without
joining, retries with backoff."""

from __future__ import annotations

import asyncio
import ctypes
import os
import platform
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import aiohttp.payload
from aiohttp.abc import AbstractStreamWriter
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import HttpRequestParser
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from pscluster.protocol import BUFFERS, MSGPACK, BufferPool, EncodedFrame, ErrorCode, ProtocolError
from pscluster.settings.timeouts import KEEPALIVE_S, RETRY_BASE_S, RETRY_CAP_S

T = TypeVar("T")

RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


def make_session(
    timeout_s: float, connections: int = 64, token: str | None = None
) -> aiohttp.ClientSession:
    """One pooled keep-alive session per service; every call has an explicit timeout and, when
    the cluster has a token, carries it."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_S)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s), headers=headers
    )


# glibc's mallopt(3) parameters, from malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator(mmap_threshold: int = 1 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Keep the receive path's chunk-sized allocations on the heap; True if applied.

    uvloop hands each socket read (up to 256 KB) to aiohttp as a new bytes object, and aiohttp's
    parser slices the body out of it into another. glibc serves allocations of that size with a
    fresh mmap (its threshold starts at 128 KB and only grows past a size once a chunk *larger*
    than it is freed), so every chunk costs 64 page faults and a kernel pass zeroing the pages:
    on a VM that is more than all the copies together (a 40 MB reply took 80 ms instead of 25).
    Serving them from the heap, and not trimming the heap back after each burst, removes it.
    Explicit ``MALLOC_*_`` environment settings win; other platforms are left alone.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


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


# Bodies at least this large are received straight from the socket into their buffer (see
# ``_read_direct``); smaller ones through aiohttp, where the per-chunk copies cost less than the
# protocol swap.
DIRECT_READ_BYTES = 1 << 20

# A connection's transport and the aiohttp protocol on it (``request.transport`` and
# ``request.protocol`` on a server, ``resp.connection.transport`` and ``.protocol`` on a client).
Connection = tuple[asyncio.Transport, asyncio.BaseProtocol]


class _DirectReader(asyncio.BufferedProtocol):
    """Stands in for aiohttp's protocol on a connection while the rest of one body arrives: the
    event loop reads from the socket straight into the body's buffer, as ``recv_into`` does."""

    def __init__(self, view: memoryview, original: asyncio.BaseProtocol) -> None:
        self._view = view
        self._filled = 0
        self._original = original
        self._transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        if self._filled >= len(self._view) and not self.done.done():
            assert self._transport is not None
            # Not a byte more: what follows belongs to aiohttp again.
            self._transport.pause_reading()
            self.done.set_result(None)

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("peer closed the connection mid-body"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection lost mid-body"))
        self._original.connection_lost(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _read_direct(
    content: aiohttp.StreamReader,
    view: memoryview,
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
) -> None:
    """Read a body into ``view``: what aiohttp has buffered already, then the rest straight from
    the socket, with ``protocol`` swapped out meanwhile.

    aiohttp's parser never sees those bytes, so its payload is marked complete here. A client
    gets a fresh parser per response anyway; a server's connection gets a fresh request parser
    (``_reset_request_parser``), as if the body had gone through the old one, and stays open
    for the next request. One copy per byte, by the kernel, instead of four.
    """
    head = content.read_nowait(-1)
    filled = len(head)
    if filled > len(view):
        raise ProtocolError(ErrorCode.BAD_FRAME, "body longer than its Content-Length")
    view[:filled] = head
    if filled < len(view):
        if content.is_eof():
            raise ProtocolError(ErrorCode.BAD_FRAME, "body shorter than its Content-Length")
        reading = transport.is_reading()
        reader = _DirectReader(view[filled:], protocol)
        reader._transport = transport
        transport.pause_reading()
        transport.set_protocol(reader)
        transport.resume_reading()
        completed = False
        try:
            await reader.done
            completed = True
        except (ConnectionError, OSError) as exc:
            # What aiohttp itself raises for a body cut short, on either side.
            client = isinstance(protocol, ResponseHandler)
            error = aiohttp.ClientPayloadError if client else RequestPayloadError
            raise error(f"body cut short: {exc}") from exc
        finally:
            transport.set_protocol(protocol)
            if not completed:
                transport.close()  # mid-body: the connection cannot be used again
            else:
                if isinstance(protocol, RequestHandler):
                    _reset_request_parser(protocol)
                if reading:
                    transport.resume_reading()
    content.feed_eof()


def _reset_request_parser(handler: RequestHandler) -> None:
    """Give a server connection a new HTTP parser after a body went past the old one.

    The old parser still waits for that body's bytes and would take the next request for them.
    The new one is built as aiohttp's ``RequestHandler`` builds its own (same limits, same
    options), at the point where the old one would be after the body: between two requests.
    If aiohttp's internals are not what this expects, the connection is closed after the
    reply instead, which is always correct (the client opens a new one).
    """
    try:
        manager = handler._manager
        options = manager._kwargs if manager is not None else {}
        handler._parser = HttpRequestParser(
            handler,
            asyncio.get_running_loop(),
            handler._read_bufsize,
            max_line_size=handler.max_line_size,
            max_field_size=handler.max_field_size,
            max_headers=handler.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=options.get("auto_decompress", True),
            max_msg_queue_size=handler._max_msg_queue_size,
        )
    except (AttributeError, TypeError):
        handler.force_close()


async def read_frame_body(
    content: aiohttp.StreamReader,
    length: int | None,
    max_bytes: int,
    pool: BufferPool = BUFFERS,
    connection: Connection | None = None,
) -> memoryview:
    """Read a data-plane body into one preallocated buffer, for ``decode_frame``.

    The arrays decoded from the result are views of it. The buffer comes from ``pool``: one
    that an earlier body no longer needs (none of its arrays is alive), or a new one. Small
    bodies arrive chunk by chunk through aiohttp and each chunk is copied once, to its final
    place. Given the ``connection``, a body of ``DIRECT_READ_BYTES`` or more is read straight
    from the socket into the buffer (see ``_read_direct``): on loopback that halves the time.
    """
    nbytes = _check_length(length, max_bytes)
    view = pool.take(nbytes).data
    if connection is not None and nbytes >= DIRECT_READ_BYTES:
        await _read_direct(content, view, *connection)
    else:
        await _fill(content, view)
    return view


# Buffers of a frame smaller than this are joined into one write; larger ones are written from
# their own memory.
JOIN_BELOW_BYTES = 1 << 16


class FramePayload(aiohttp.payload.Payload):
    """An ``EncodedFrame`` as a request or response body, written buffer by buffer.

    The small prefix goes out together with the HTTP headers, the arrays straight from their own
    memory. (Handed one ``bytes`` body, aiohttp joins it with the headers into a new buffer on
    Python < 3.12.9: a copy of the whole body per request.)
    """

    def __init__(self, frame: EncodedFrame | bytes, *, once: bool = False) -> None:
        """``once``: written once (a reply; a request may be resent), and the frame let go as
        soon as it is written, so its buffer counts as free once the transport is done with it
        (aiohttp keeps a response object around until the connection's next request ends)."""
        if isinstance(frame, bytes):
            frame = EncodedFrame((frame,), len(frame))
        super().__init__(frame, content_type=MSGPACK)
        self._size = frame.nbytes
        self._nbytes = frame.nbytes
        self._frame = frame
        self._once = once

    @property
    def size(self) -> int:
        """Always known, and kept once the frame is let go: the frame's length in bytes."""
        return self._nbytes

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self._frame.tobytes().decode(encoding, errors)

    def _writes(self) -> list[bytes | memoryview]:
        """The buffers as the writes to make: small neighbours joined (each write is a system
        call, and on loopback the receiver's TCP work too), large ones on their own."""
        writes: list[bytes | memoryview] = []
        small: list[bytes | memoryview] = []
        for buffer in self._frame.buffers:
            if len(buffer) < JOIN_BELOW_BYTES:
                small.append(buffer)
                continue
            if small:
                writes.append(b"".join(small))
                small = []
            writes.append(buffer)
        if small:
            writes.append(b"".join(small))
        return writes

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        remaining = self._frame.nbytes if content_length is None else content_length
        writes = self._writes()
        if self._once:
            self._frame = EncodedFrame((), 0)
            self._value = None
        for buffer in writes:
            if remaining <= 0:
                break
            await writer.write(buffer if len(buffer) <= remaining else buffer[:remaining])
            remaining -= len(buffer)


def backoff_delays(base_s: float, cap_s: float, rng: random.Random | None = None) -> Any:
    """Exponential backoff with full jitter (AWS architecture blog): spreads retrying clients."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap_s, base_s * 2**attempt))
        attempt += 1


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_s: float = RETRY_BASE_S,
    cap_s: float = RETRY_CAP_S,
    retry_on: tuple[type[BaseException], ...] = RETRYABLE,
) -> T:
    """Call until it succeeds, at most ``attempts`` times, sleeping with jittered backoff."""
    delays = backoff_delays(base_s, cap_s)
    for attempt in range(attempts):
        try:
            return await call()
        except retry_on:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(next(delays))
    raise AssertionError("unreachable")


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    timeout_s: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a control-plane message; returns (status, decoded JSON reply)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
    async with session.post(url, json=payload, timeout=timeout) as resp:
        return resp.status, await resp.json(content_type=None)


async def get_json(
    session: aiohttp.ClientSession, url: str, timeout_s: float | None = None
) -> tuple[int, dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
    async with session.get(url, timeout=timeout) as resp:
        return resp.status, await resp.json(content_type=None)
