"""The shard's data port: the token checked when a connection opens, the size cap, TCP_NODELAY
on both ends, reconnecting after a dropped connection, held sync replies and long-poll pulls."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest

from ps_server.app import DATA_URL, METRICS, PORT, SLOT, announce_loop, build_app
from ps_server.dataport import DataPort
from ps_server.state import ShardState
from pscluster.datalink import DataLink
from pscluster.messages import Push, Reply, Status
from pscluster.protocol import ErrorCode, decode_frame, frame_buffers
from pscluster.service import running_service
from pscluster.settings import JobConfig, ShardSettings
from worker.shard_client import ShardClient

TOKEN = "data-port-token"
P = 4096  # 16 KiB of float32 per push


@contextlib.asynccontextmanager
async def shard(workers: int = 1, **settings: object) -> AsyncIterator[tuple[str, DataPort]]:
    """A shard with the cluster token, handed a sync job directly; its data address and port."""
    config = ShardSettings(host="127.0.0.1", port=0, token=TOKEN, **settings)
    job = JobConfig(shards=1, workers=workers, spares=0, mode="sync", optimizer="sgd", lr=0.5)

    def factory(url: str):
        app = build_app(config, url)
        app.cleanup_ctx.remove(announce_loop)
        app[SLOT].state = ShardState(job, 0, {"w": np.zeros(P, np.float32)}, app[METRICS])
        app[SLOT].ready.set()
        return app

    async with running_service(factory, config) as (_, app):
        yield app[DATA_URL][0], app[PORT]


def count(port: DataPort, kind: str, status: str) -> float:
    labels = {"kind": kind, "status": status}
    return port.metrics.registry.get_sample_value("ps_data_requests_total", labels) or 0.0


def grads(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full(P, value, np.float32)}


async def test_a_wrong_token_is_refused_once_and_not_retried() -> None:
    async with shard() as (url, port):
        client = ShardClient(url, 0, token="wrong", timeout_s=10.0, attempts=5)
        with pytest.raises(PermissionError, match="refused the cluster token"):
            await client.pull()
        # One hello refused, not five: a wrong token does not heal with retries.
        assert count(port, "hello", "unauthorized") == 1
        assert count(port, "pull", "ok") == 0
        # A request before any hello is refused too, and the connection closed.
        reader, writer = await asyncio.open_connection(*url.removeprefix("tcp://").split(":"))
        body = frame_buffers(Push("w0", 0, 0).header(), grads(1.0)).tobytes()
        writer.write(len(body).to_bytes(8, "little") + body)
        length = int.from_bytes(await reader.readexactly(8), "little")
        refused = Reply.parse(decode_frame(await reader.readexactly(length)))
        assert refused.status is ErrorCode.UNAUTHORIZED
        assert await reader.read() == b""  # closed by the shard
        writer.close()
        assert port.plane.slot.state is not None and port.plane.slot.state.version == 0


async def test_a_message_over_the_cap_is_refused_and_changes_nothing() -> None:
    async with shard(max_body_mb=8 / 1024) as (url, port):  # 8 KiB
        link = DataLink(url, TOKEN, max_reply_bytes=1 << 20, connect_timeout_s=10.0)
        frame = frame_buffers(Push("w0", 0, 0).header(), grads(1.0))  # 16 KiB
        reply = Reply.parse(decode_frame(await link.request(frame, 10.0)))
        assert reply.status is ErrorCode.TOO_LARGE
        # Its bytes were read and dropped: the same connection carries the next request.
        small = frame_buffers(Push("w0", 0, 0).header(), {"w": np.zeros(3, np.float32)})
        reply = Reply.parse(decode_frame(await link.request(small, 10.0)))
        assert reply.status is ErrorCode.BAD_SHAPE
        assert count(port, "hello", "ok") == 1
        assert port.plane.slot.state is not None and port.plane.slot.state.version == 0
        link.close()


async def test_nodelay_reconnects_held_replies_and_long_polls() -> None:
    async with shard(workers=2) as (url, port):
        a = ShardClient(url, 0, token=TOKEN, timeout_s=10.0)
        b = ShardClient(url, 0, token=TOKEN, timeout_s=10.0)
        try:
            first = asyncio.ensure_future(
                a.push(worker="a", rank=0, step=0, base_version=0, grads=grads(1.0))
            )
            poll = asyncio.ensure_future(b.pull(after=0, wait_s=10.0))
            for _ in range(500):  # bounded: until the first push is held by the shard
                if port.plane.slot.state._contributors:
                    break
                await asyncio.sleep(0.01)
            assert not first.done() and not poll.done()
            # TCP_NODELAY on both ends of every connection.
            client_socks = [c.link._protocol.transport.get_extra_info("socket") for c in (a, b)]
            server_socks = [c.transport.get_extra_info("socket") for c in port.connections]
            assert len(server_socks) == 2
            for sock in [*client_socks, *server_socks]:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            c = ShardClient(url, 0, token=TOKEN, timeout_s=10.0)
            second = await c.push(worker="b", rank=1, step=0, base_version=0, grads=grads(3.0))
            held, pulled = await first, await poll
            # The held push's reply carries the next version, how long it was held, and the
            # mean of the two gradients applied: 0 - 0.5 * 2.
            assert held.status is Status.APPLIED and held.version == 1 and held.waited_s > 0
            assert second.status is Status.APPLIED and second.version == 1
            assert pulled.status is Status.OK and pulled.version == 1
            for reply in (held, second, pulled):
                np.testing.assert_array_equal(reply.arrays["w"], np.full(P, -1.0, np.float32))
            # The shard drops every connection (a restart, say): the next call reconnects.
            before = count(port, "hello", "ok")
            for connection in list(port.connections):
                connection.transport.close()
            again = await a.pull()
            assert again.version == 1 and count(port, "hello", "ok") == before + 1
            c.close()
        finally:
            a.close()
            b.close()


def test_no_private_aiohttp_attributes_or_internal_modules() -> None:
    """The data plane uses only public APIs: no aiohttp module beyond ``aiohttp`` and
    ``aiohttp.web``, no swapped protocols, no ``_``-attribute of an aiohttp object."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    internal = re.compile(r"^\s*(from|import) aiohttp\.(?!web\b)", re.M)
    reaching = re.compile(r"\.set_protocol\(|\b(request|resp|response|handler|protocol)\._[a-z]")
    sources = [
        path
        for package in ("pscluster", "ps_server", "worker", "coordinator", "launcher", "bench")
        for path in (root / package).rglob("*.py")
    ]
    assert len(sources) > 50
    for path in sources:
        text = path.read_text()
        assert not internal.search(text), path
        assert not reaching.search(text), path
