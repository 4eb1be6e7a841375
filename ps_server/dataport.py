"""The shard's data port: pushes and pulls on persistent TCP connections, one per worker.

Each message is an 8-byte length and a frame (``pscluster.receive``). A connection opens with a
``Hello`` carrying the cluster token, compared in constant time; a wrong one is refused
(``unauthorized``) and the connection closed. Then each request is answered in order, one at a
time: a connection's requests are read while one is answered, at most ``QUEUED`` ahead, then
reading pauses (TCP's window holds the client back). One task per connection serves them; none
per message.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import deque

from ps_server.dataplane import Answer, DataPlane
from ps_server.metrics import DataMetrics
from pscluster.messages import WIRE_NAMES, Hello, Kind, Pull, Push, Reply, Status, kind_of
from pscluster.protocol import ErrorCode, Frame, ProtocolError, decode_frame, frame_buffers
from pscluster.receive import FrameReceiver, write_frame
from pscluster.service import bind_socket

# Requests read ahead of the one being answered, per connection, before reading pauses.
QUEUED = 2


class DataConnection(FrameReceiver):
    def __init__(self, port: DataPort) -> None:
        super().__init__(port.plane.max_body_bytes)
        self.port = port
        self.authorized = False
        self.busy = False
        self._inbox: deque[memoryview] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.port.connections.add(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.port.connections.discard(self)
        if self._task is not None:
            self._task.cancel()

    def frame_received(self, body: memoryview) -> None:
        self._inbox.append(body)
        if len(self._inbox) >= QUEUED and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def frame_too_large(self, nbytes: int) -> None:
        cap = self.port.plane.max_body_bytes
        exc = ProtocolError(ErrorCode.TOO_LARGE, f"message of {nbytes} bytes over {cap}", 413)
        self.port.metrics.observe("unknown", exc.code, 0.0)
        self._send(self.port.plane.refusal(exc), close=False)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._inbox:
                self._waiter = loop.create_future()
                await self._waiter
            body = self._inbox.popleft()
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            self.busy = True
            try:
                answer, close = await self._answer(body)
            finally:
                self.busy = False
            self._send(answer, close=close)
            # Let go of the request's buffer and the reply's frame now, not at the next request:
            # a version's frame that nobody holds is updated in place (ps_server.snapshot).
            del body, answer
            if close:
                return

    def _send(self, answer: Answer, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        write_frame(transport, answer.frame)
        if close:
            transport.close()  # after what is buffered has gone out

    async def _answer(self, body: memoryview) -> tuple[Answer, bool]:
        """The reply to one request, and whether to close the connection after it."""
        plane, metrics = self.port.plane, self.port.metrics
        started = time.perf_counter()
        kind = "unknown"
        try:
            frame = decode_frame(body)
            kind_value = kind_of(frame)
            kind = WIRE_NAMES[kind_value]
            if kind_value is Kind.HELLO or not self.authorized:
                answer, close = self._hello(frame if kind_value is Kind.HELLO else None)
            elif kind_value is Kind.PUSH:
                answer, close = await plane.push(Push.parse(frame), len(body)), False
            else:
                answer, close = await plane.pull(Pull.parse(frame)), False
        except ProtocolError as exc:
            answer, close = plane.refusal(exc), False
        metrics.observe(kind, answer.status, time.perf_counter() - started)
        return answer, close

    def _hello(self, frame: Frame | None) -> tuple[Answer, bool]:
        """A hello with the right token opens the connection; anything else closes it."""
        expected = self.port.token
        given = Hello.parse(frame).token if frame is not None else None
        if frame is not None and (
            expected is None
            or (given is not None and hmac.compare_digest(given.encode(), expected.encode()))
        ):
            self.authorized = True
            state = self.port.plane.slot.state
            reply = Reply(Status.OK, state.version if state is not None else -1)
            return Answer(frame_buffers(reply.fields()), status=Status.OK), False
        exc = ProtocolError(
            ErrorCode.UNAUTHORIZED,
            "missing or wrong cluster token" if frame is not None else "open with a hello",
            401,
        )
        return self.port.plane.refusal(exc), True


class DataPort:
    """The listener and its connections."""

    def __init__(self, plane: DataPlane, metrics: DataMetrics, token: str | None) -> None:
        self.plane = plane
        self.metrics = metrics
        self.token = token
        self.connections: set[DataConnection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the port (a free one for port 0)."""
        sock = bind_socket(host, port)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: DataConnection(self), sock=sock)
        return int(sock.getsockname()[1])

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def close(self, grace_s: float) -> None:
        """Stop accepting; let requests being answered finish within ``grace_s``; close."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.01)  # a bounded wait for in-flight replies, not a timing
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
