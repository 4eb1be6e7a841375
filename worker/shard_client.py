"""A worker's client of one parameter-server shard: pull and push on the shard's data port, with
bounded retries (each after a failure on a new connection)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pscluster.client import retry
from pscluster.datalink import DataLink
from pscluster.messages import Pull, Push, Reply
from pscluster.protocol import EncodedFrame, ErrorCode, decode_frame, frame_buffers
from pscluster.settings.timeouts import SHARD_CALL_ATTEMPTS

MAX_REPLY_BYTES = 8 << 30
# Refusals that a retry may cure: the shard is starting, or has too much in flight.
RETRY_LATER = (ErrorCode.NOT_READY, ErrorCode.BUSY)

ShardReply = Reply


class ShardUnavailable(ConnectionError):
    """The shard answered, but cannot take the request now; retried with backoff."""


class ShardClient:
    def __init__(
        self,
        data_url: str,
        index: int,
        *,
        token: str | None,
        timeout_s: float,
        attempts: int = SHARD_CALL_ATTEMPTS,
    ) -> None:
        self.link = DataLink(
            data_url, token, max_reply_bytes=MAX_REPLY_BYTES, connect_timeout_s=timeout_s
        )
        self.index = index
        self.timeout_s = timeout_s
        self.attempts = attempts

    async def _call(self, frame: EncodedFrame) -> Reply:
        body = await self.link.request(frame, self.timeout_s)
        reply = Reply.parse(decode_frame(body))
        if reply.status in RETRY_LATER:
            raise ShardUnavailable(f"shard {self.index}: {reply.status.value}")
        return reply

    async def pull(
        self,
        after: int = -1,
        wait_s: float = 0.0,
        *,
        gate_for: str | None = None,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> Reply:
        """The shard's parameters, long-polling up to ``wait_s`` for a version after ``after``
        (or, in ssp mode with ``gate_for``, for that worker's clock gate to open); ``arrays``:
        the ids whose rows the reply should carry (sparse tables)."""
        frame = frame_buffers(Pull(after, wait_s, gate_for).header(), arrays)
        return await retry(lambda: self._call(frame), attempts=self.attempts)

    async def push(
        self,
        *,
        worker: str,
        rank: int,
        step: int,
        base_version: int,
        grads: Mapping[str, np.ndarray],
        want_params: bool = True,
        epoch: int = 0,
    ) -> Reply:
        message = Push(worker, rank, base_version, step, self.index, want_params, epoch=epoch)
        # Framed once, without copying the gradients: they go from their arrays to the socket. A
        # retry resends the same bytes (and the shard refuses a double count).
        frame = frame_buffers(message.header(), grads)
        return await retry(lambda: self._call(frame), attempts=self.attempts)

    def close(self) -> None:
        self.link.close()
