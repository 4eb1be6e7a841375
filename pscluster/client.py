"""HTTP plumbing shared by all services: sessions, bodies read in place, retries with backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from pscluster.protocol import ErrorCode, ProtocolError

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


async def read_body(content: aiohttp.StreamReader, length: int | None, max_bytes: int) -> bytearray:
    """Read a body chunk by chunk into one preallocated buffer.

    Collecting chunks and joining them would pass over a 40 MB body twice; this copies each
    chunk once, straight from the socket buffer to its final place.
    """
    if length is None:
        raise ProtocolError(ErrorCode.LENGTH_REQUIRED, "a Content-Length is required", 411)
    if length > max_bytes:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"body of {length} bytes over {max_bytes}", 413)
    buffer = bytearray(length)
    view = memoryview(buffer)
    filled = 0
    while filled < length:
        chunk = await content.readany()
        if not chunk:
            break
        end = filled + len(chunk)
        if end > length:
            raise ProtocolError(ErrorCode.BAD_FRAME, "body longer than its Content-Length")
        view[filled:end] = chunk
        filled = end
    if filled != length:
        raise ProtocolError(ErrorCode.BAD_FRAME, "body shorter than its Content-Length")
    return buffer


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
