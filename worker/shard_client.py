"""A worker's client of one parameter-server shard: pull and push, with bounded retries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from pscluster.client import FramePayload, read_frame_body, retry
from pscluster.protocol import MSGPACK, decode_frame, frame_buffers
from pscluster.settings.timeouts import SHARD_CALL_ATTEMPTS

MAX_REPLY_BYTES = 8 << 30


@dataclass(frozen=True)
class ShardReply:
    status: str  # "applied", "ok" for a pull, or an ErrorCode value
    version: int
    done: bool
    # Views of the received body (no copy); its memory is reused only once they are all gone.
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    waited_s: float = 0.0  # how long the shard held the reply for the sync step
    gate_open: bool = True  # ssp: False when the worker must wait before its next step


class ShardClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        index: int,
        *,
        attempts: int = SHARD_CALL_ATTEMPTS,
    ) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.index = index
        self.attempts = attempts

    async def pull(
        self, after: int = -1, wait_s: float = 0.0, *, gate_for: str | None = None
    ) -> ShardReply:
        """The shard's parameters, long-polling up to ``wait_s`` for a version after ``after``
        (or, in ssp mode with ``gate_for``, for that worker's clock gate to open)."""

        async def call() -> ShardReply:
            params = {"after": str(after), "wait": f"{wait_s:.3f}"}
            if gate_for is not None:
                params["worker"] = gate_for
            async with self.session.get(f"{self.url}/params", params=params) as resp:
                return await self._reply(resp, "ok")

        return await retry(call, attempts=self.attempts)

    async def push(
        self,
        *,
        worker: str,
        rank: int,
        step: int,
        base_version: int,
        grads: Mapping[str, np.ndarray],
        want_params: bool = True,
    ) -> ShardReply:
        header = {
            "worker": worker,
            "rank": rank,
            "step": step,
            "base_version": base_version,
            "shard": self.index,
            "want_params": want_params,
        }
        # Framed once, without copying the gradients: they go from their arrays to the socket. A
        # retry resends the same bytes (and the shard refuses a double count).
        body = FramePayload(frame_buffers(header, grads))

        async def call() -> ShardReply:
            async with self.session.post(f"{self.url}/push", data=body) as resp:
                return await self._reply(resp, "applied")

        return await retry(call, attempts=self.attempts)

    async def _reply(self, resp: aiohttp.ClientResponse, default_status: str) -> ShardReply:
        if resp.status == 401:
            # A wrong or missing cluster token does not heal with retries: fail at once.
            raise PermissionError(f"shard {self.index} refused the cluster token (401)")
        if resp.status >= 500 or resp.content_type != MSGPACK:
            # Not ready, overloaded or restarting: a connection-level failure for retry().
            raise aiohttp.ClientConnectionError(f"shard {self.index} answered {resp.status}")
        connection = resp.connection
        direct = (
            (connection.transport, connection.protocol)
            if connection is not None
            and connection.transport is not None
            and connection.protocol is not None
            and "Content-Encoding" not in resp.headers
            else None
        )
        body = await read_frame_body(
            resp.content, resp.content_length, MAX_REPLY_BYTES, connection=direct
        )
        frame = decode_frame(body)
        status = resp.headers.get("PS-Status", default_status)
        if resp.status >= 400 and status in ("", default_status):
            status = str(frame.header.get("status", "error"))
        return ShardReply(
            status=status,
            version=int(frame.header.get("version", -1)),
            done=bool(frame.header.get("done", False)),
            arrays=frame.arrays,
            waited_s=float(resp.headers.get("PS-Waited", 0.0)),
            gate_open=resp.headers.get("PS-Gate", "open") != "closed",
        )
