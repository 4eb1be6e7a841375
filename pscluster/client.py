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

from pscluster.protocol import BUFFERS, MSGPACK, BufferPool, EncodedFrame, ErrorCode, ProtocolError

T = TypeVar("T")

RETRYABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


def make_session(
    timeout_s: float, connections: int = 64, token: str | None = None
) -> aiohttp.ClientSession:
    """One pooled keep-alive session per service; every call has an explicit timeout and, when
    the cluster has a token, carries it."""
    connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=60)
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


# Every service moves its data-plane bodies through this module: tune the allocator once, here.
tune_allocator()


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
    content: aiohttp.StreamReader, length: int | None, max_bytes: int, pool: BufferPool = BUFFERS
) -> memoryview:
    """Read a data-plane body chunk by chunk into one preallocated buffer, for ``decode_frame``.

    Each chunk is copied once, from the socket's chunk to its final place; the arrays decoded
    from the result are views of it. The buffer comes from ``pool``: one that an earlier body
    no longer needs (none of its arrays is alive), or a new one.
    """
    view = memoryview(pool.take(_check_length(length, max_bytes)))
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

    def __init__(self, frame: EncodedFrame | bytes) -> None:
        if isinstance(frame, bytes):
            frame = EncodedFrame((frame,), len(frame))
        super().__init__(frame, content_type=MSGPACK)
        self._size = frame.nbytes
        self._frame = frame

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
        for buffer in self._writes():
            await writer.write(buffer)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        remaining = self._frame.nbytes if content_length is None else content_length
        for buffer in self._writes():
            if remaining <= 0:
                return
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
    base_s: float = 0.05,
    cap_s: float = 2.0,
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
