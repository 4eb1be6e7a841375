"""Session helpers shared by all services: HTTP sessions, small JSON calls, retries with backoff,
the allocator's tuning. (Bodies and frames are received by ``pscluster.receive``.)"""

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

from pscluster.settings.timeouts import KEEPALIVE_S, RETRY_BASE_S, RETRY_CAP_S

T = TypeVar("T")

# ConnectionError and OSError: the data port's connections (a shard restarting, a reset).
RETRYABLE = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    asyncio.TimeoutError,
    ConnectionError,
    OSError,
)


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
    delays = None  # made on the first failure: most calls succeed at once
    for attempt in range(attempts):
        try:
            return await call()
        except PermissionError:
            raise  # an OSError, but a refused token does not heal with retries
        except retry_on:
            if attempt == attempts - 1:
                raise
            delays = delays or backoff_delays(base_s, cap_s)
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
