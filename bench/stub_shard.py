"""A shard with no parameter-server work in it: what the data port's protocol costs alone.

It speaks the data port as the real shard does (a ``Hello`` with the cluster token, then each
push decoded and parsed, and its reply framed under its own header with the version's
parameters, sent as the real shard sends them), and holds each sync step's replies until all W
pushes are in, as a sync shard with N = W does. It does none of the shard's work: no rules, no
finiteness check, no sum, no optimizer, no version frame written. The project's clients (real
``ShardClient``s) against it give the most any shard logic could reach with this protocol and
client; ``bench.roundtrip --impls ...,stub`` runs it beside the real shard.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets

import numpy as np
import uvloop

from bench.common import announce_and_wait_for_stdin_eof
from pscluster.messages import Hello, Kind, Push, Reply, Status, kind_of
from pscluster.protocol import EncodedFrame, ErrorCode, decode_frame, frame_buffers, layout_of
from pscluster.receive import FrameReceiver, write_frame


class StubShard:
    """The step's held replies and the parameters every reply carries."""

    def __init__(self, params: int, workers: int, token: str) -> None:
        values = np.ones(params, np.float32)
        self.layout = layout_of({"w": (values.dtype, values.shape)})
        self.payload = values.tobytes()
        self.workers = workers
        self.token = token
        self.version = 0
        self.held: list[FrameReceiver] = []

    def reply(self, connection: FrameReceiver, push: Push) -> None:
        """Hold the reply until the step's W pushes are in, then answer them all."""
        self.held.append(connection)
        if len(self.held) < self.workers:
            return
        self.version += 1
        fields = Reply(Status.APPLIED, self.version, waited_s=0.0).fields()
        header = {**fields, "params": True, "shard": push.shard, "epoch": 0}
        for held in self.held:
            prefix = self.layout.prefix(header)  # per reply, as the real shard's are
            if held.transport is not None:
                frame = EncodedFrame((prefix, self.payload), len(prefix) + len(self.payload))
                write_frame(held.transport, frame)
        self.held.clear()


class StubConnection(FrameReceiver):
    def __init__(self, shard: StubShard) -> None:
        super().__init__(1 << 31)
        self.shard = shard
        self.authorized = False

    def frame_received(self, body: memoryview) -> None:
        assert self.transport is not None
        frame = decode_frame(body)
        if kind_of(frame) is Kind.HELLO:
            given = Hello.parse(frame).token or ""
            self.authorized = hmac.compare_digest(given.encode(), self.shard.token.encode())
            status = Status.OK if self.authorized else ErrorCode.UNAUTHORIZED
            write_frame(self.transport, frame_buffers(Reply(status, self.shard.version).fields()))
            return
        if not self.authorized:
            self.transport.close()
            return
        self.shard.reply(self, Push.parse(frame))

    def frame_too_large(self, nbytes: int) -> None:
        if self.transport is not None:
            self.transport.close()


def serve_stub(params: int, workers: int) -> None:
    """In a helper: says "<data address> <token>" as ``bench.common.serve_shard`` does."""
    token = secrets.token_urlsafe(16)
    shard = StubShard(params, workers, token)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: StubConnection(shard), "127.0.0.1", 0)
        address = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]} {token}"
        await loop.run_in_executor(None, announce_and_wait_for_stdin_eof, address)

    uvloop.run(main())
