"""The two baselines of the round-trip benchmark, each a server and a client.

* ``raw``: the limit on this machine. A threaded TCP server and client move the same bytes, an
  8-byte length then the raw array, received with ``recv_into`` straight into a preallocated
  buffer: no HTTP, no serialization, no copy in user space.
* ``naive``: what a typical first version of a shard looks like. aiohttp on the default asyncio
  loop, ``msgpack.packb`` of ``arr.tobytes()`` on both sides, bodies read whole with
  ``await request.read()``, the parameters packed again for every reply. It does the same sync
  step as the real shard: sum the W gradients, apply SGD, answer every waiting worker.

The servers run as helper processes (``python -m bench.roundtrip serve raw|naive``), so client
and server each have their own interpreter, as in the real cluster.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import warnings
from typing import Any

import aiohttp
import msgpack
import numpy as np
from aiohttp import web

from bench.common import announce_and_wait_for_stdin_eof

LENGTH = struct.Struct("<Q")
LR = 1e-3  # the learning rate of every implementation's SGD step
GRADIENT = 1e-3  # the value of every gradient element pushed


# --- raw sockets --------------------------------------------------------------------------------


def _recv_exact(conn: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from the socket; False on a clean end of stream before the first byte."""
    filled = 0
    while filled < len(view):
        got = conn.recv_into(view[filled:])
        if got == 0:
            if filled == 0:
                return False
            raise ConnectionError("peer closed mid-message")
        filled += got
    return True


def serve_raw(params: int) -> None:
    """Answer each length-prefixed message with ``params`` float32s; a thread per connection."""
    reply = np.ones(params, dtype=np.float32).data.cast("B")
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = bytearray(LENGTH.size)
        body = np.empty(0, dtype=np.uint8)
        with conn:
            while _recv_exact(conn, memoryview(head)):
                (length,) = LENGTH.unpack(head)
                if body.nbytes < length:
                    body = np.empty(length, dtype=np.uint8)
                _recv_exact(conn, body.data[:length])
                conn.sendall(LENGTH.pack(len(reply)))
                conn.sendall(reply)

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    host, port = listener.getsockname()[:2]
    announce_and_wait_for_stdin_eof(f"{host}:{port}")


class RawClients:
    """W threads, each with its own connection, each pushing P floats and receiving P back."""

    def __init__(self, address: str, params: int, workers: int) -> None:
        host, port = address.rsplit(":", 1)
        self.grads = np.full(params, GRADIENT, dtype=np.float32).data.cast("B")
        self.received = [np.empty(params, dtype=np.float32) for _ in range(workers)]
        self.conns = []
        for _ in range(workers):
            conn = socket.create_connection((host, int(port)))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conns.append(conn)

    def _round_trips(self, rank: int, iterations: int) -> None:
        conn, received = self.conns[rank], self.received[rank].data.cast("B")
        head = bytearray(LENGTH.size)
        for _ in range(iterations):
            conn.sendall(LENGTH.pack(len(self.grads)))
            conn.sendall(self.grads)
            _recv_exact(conn, memoryview(head))
            if LENGTH.unpack(head)[0] != len(received):
                raise ConnectionError("reply of the wrong size")
            _recv_exact(conn, received)

    def batch(self, iterations: int) -> float:
        threads = [
            threading.Thread(target=self._round_trips, args=(rank, iterations))
            for rank in range(len(self.conns))
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


# --- the naive service --------------------------------------------------------------------------


def _pack_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.tobytes()}
        for name, a in arrays.items()
    }


def _unpack_arrays(packed: dict[str, Any]) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(spec["data"], dtype=spec["dtype"]).reshape(spec["shape"])
        for name, spec in packed.items()
    }


class NaiveShard:
    """A sync step written the obvious way: sum, average, SGD, then answer every waiter."""

    def __init__(self, params: int, workers: int) -> None:
        self.params = {"w": np.zeros(params, dtype=np.float32)}
        self.workers = workers
        self.version = 0
        self.sum: dict[str, np.ndarray] | None = None
        self.count = 0
        self.stepped = asyncio.Event()

    async def push(self, request: web.Request) -> web.Response:
        message = msgpack.unpackb(await request.read())
        grads = _unpack_arrays(message["grads"])
        if message["base_version"] == self.version:
            if self.sum is None:
                self.sum = {name: g.copy() for name, g in grads.items()}
            else:
                for name, g in grads.items():
                    self.sum[name] += g
            self.count += 1
            if self.count == self.workers:
                for name, p in self.params.items():
                    p -= LR * self.sum[name] / self.count
                self.sum, self.count = None, 0
                self.version += 1
                self.stepped.set()
                self.stepped = asyncio.Event()
            else:
                await self.stepped.wait()
        reply = {"version": self.version, "params": _pack_arrays(self.params)}
        return web.Response(body=msgpack.packb(reply), content_type="application/msgpack")


def serve_naive(params: int, workers: int) -> None:
    async def main() -> None:
        shard = NaiveShard(params, workers)
        app = web.Application(client_max_size=1 << 31)
        app.router.add_post("/push", shard.push)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, announce_and_wait_for_stdin_eof, f"127.0.0.1:{port}")
        await runner.cleanup()

    asyncio.run(main())  # the default loop: a first version rarely installs uvloop


class NaiveClients:
    """W workers on one asyncio loop, each with its own aiohttp session."""

    def __init__(self, address: str, params: int, workers: int) -> None:
        self.url = f"http://{address}/push"
        self.grads = {"w": np.full(params, GRADIENT, dtype=np.float32)}
        self.versions = [0] * workers
        self.sessions: list[aiohttp.ClientSession] = []

    async def open(self) -> None:
        self.sessions = [aiohttp.ClientSession() for _ in self.versions]

    async def _round_trips(self, rank: int, iterations: int) -> None:
        with warnings.catch_warnings():
            # aiohttp warns that a big bytes body "might lock the event loop": the naive way.
            warnings.simplefilter("ignore", ResourceWarning)
            for _ in range(iterations):
                body = msgpack.packb(
                    {"base_version": self.versions[rank], "grads": _pack_arrays(self.grads)}
                )
                async with self.sessions[rank].post(self.url, data=body) as resp:
                    reply = msgpack.unpackb(await resp.read())
                params = _unpack_arrays(reply["params"])
                if params["w"].size != self.grads["w"].size:
                    raise RuntimeError("reply of the wrong size")
                self.versions[rank] = reply["version"]

    async def batch(self, iterations: int) -> None:
        await asyncio.gather(*(self._round_trips(r, iterations) for r in range(len(self.versions))))

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
