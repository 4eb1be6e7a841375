"""A client's persistent connection to one shard's data port.

Opened on first use and again after any failure: TCP_NODELAY, then a ``Hello`` with the
cluster token, which the shard answers ``ok`` or refuses (``unauthorized``: ``PermissionError``
here, at once, and the shard closes the connection). Then one request at a time: a worker's
exchange with one shard is sequential (push, then maybe a long-poll pull), so replies come back
in order and need no ids. A request that fails or times out drops the connection, so a late
reply can never be taken for the next request's; the caller's retry opens a new one.
"""

from __future__ import annotations

import asyncio

from pscluster.messages import Hello, Reply
from pscluster.protocol import EncodedFrame, ErrorCode, decode_frame, frame_buffers
from pscluster.receive import FrameReceiver, write_frame


def parse_address(address: str) -> tuple[str, int]:
    """``tcp://host:port`` (``[v6]`` hosts too) as (host, port)."""
    rest = address.removeprefix("tcp://").rstrip("/")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"data address {address!r} is not tcp://host:port")
    return host.strip("[]"), int(port)


class _LinkProtocol(FrameReceiver):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self.pending: asyncio.Future[memoryview] | None = None
        self.lost = False

    def frame_received(self, body: memoryview) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.done():
            # A reply nobody asked for: the stream is out of step; start over.
            if self.transport is not None:
                self.transport.close()
            return
        pending.set_result(body)

    def frame_too_large(self, nbytes: int) -> None:
        self._fail(ConnectionResetError(f"reply of {nbytes} bytes over the cap"))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(ConnectionResetError(f"data connection lost ({exc or 'closed by the shard'})"))

    def _fail(self, exc: Exception) -> None:
        pending, self.pending = self.pending, None
        if pending is not None and not pending.done():
            pending.set_exception(exc)


def _expire(future: asyncio.Future[memoryview], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no reply within {timeout_s:.1f} s"))


class DataLink:
    """One connection to a shard's data port; ``request`` sends a frame and returns the reply's
    body (a buffer of its own: the decoded arrays are views of it)."""

    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        max_reply_bytes: int,
        connect_timeout_s: float,
        hello: bool = True,
    ) -> None:
        """``hello=False``: a bare framed connection, for peers that speak frames but not the
        shard's messages (``bench.transports``' echo server)."""
        self.address = address
        self.hello = hello
        self.host, self.port = parse_address(address)
        self.token = token
        self.max_reply_bytes = max_reply_bytes
        self.connect_timeout_s = connect_timeout_s
        self._protocol: _LinkProtocol | None = None
        self._lock = asyncio.Lock()

    async def request(self, frame: EncodedFrame | bytes, timeout_s: float) -> memoryview:
        async with self._lock:
            protocol = self._protocol
            if protocol is None or protocol.lost:
                protocol = await self._open()
            return await self._exchange(protocol, frame, timeout_s)

    async def _exchange(
        self, protocol: _LinkProtocol, frame: EncodedFrame | bytes, timeout_s: float
    ) -> memoryview:
        transport = protocol.transport
        assert transport is not None
        if protocol.lost or transport.is_closing():
            # The shard closed the connection after it opened (killed during the hello, say):
            # a connection failure that retry() answers, not a write on a closed transport.
            self.close()
            raise ConnectionResetError("data connection closed by the shard")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[memoryview] = loop.create_future()
        protocol.pending = future
        write_frame(transport, frame)
        # A timer, not asyncio.wait_for: that wraps the wait in a task of its own (Python 3.11).
        timer = loop.call_later(timeout_s, _expire, future, timeout_s)
        try:
            return await future
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()

    async def _open(self) -> _LinkProtocol:
        loop = asyncio.get_running_loop()
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _LinkProtocol(self.max_reply_bytes), self.host, self.port
            ),
            self.connect_timeout_s,
        )
        self._protocol = protocol
        if not self.hello:
            return protocol
        hello = frame_buffers(Hello(self.token).header())
        reply = Reply.parse(
            decode_frame(await self._exchange(protocol, hello, self.connect_timeout_s))
        )
        if reply.status is ErrorCode.UNAUTHORIZED:
            self.close()
            raise PermissionError(f"shard at {self.address} refused the cluster token")
        if not reply.accepted:
            self.close()
            raise ConnectionRefusedError(f"shard at {self.address} answered {reply.status.value}")
        return protocol

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
