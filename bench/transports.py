"""Transports for the data plane, compared on a bare echo: what a round trip of P float32 costs
before any parameter-server work, on each candidate.

* ``frames``: 8-byte length-prefixed frames on an asyncio ``BufferedProtocol``, both ends
  (``pscluster.receive.FrameReceiver``; the client is ``pscluster.datalink.DataLink``): what
  the data port uses;
* ``streams``: the same frames on asyncio streams (``readexactly``, ``write``);
* ``websocket``: aiohttp WebSocket binary messages (``send_bytes`` / ``receive_bytes``);
* ``http``: aiohttp HTTP/1.1 keep-alive POSTs, the body read with ``read()``.

Every server runs on uvloop in a helper process and answers each message with P float32 (the
client sends P too), one connection per client, W clients on one loop in this process. The
implementations take turns batch by batch; figures are medians of ``--repeats`` batches, and
CPU time counts both processes.

    python -m bench.transports --params 1e3,1e6 --workers 1
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import uvloop
from aiohttp import web

from bench.common import (
    Column,
    Helper,
    announce_and_wait_for_stdin_eof,
    counts,
    cpu_seconds,
    format_table,
    write_json,
)
from pscluster.datalink import DataLink
from pscluster.receive import LENGTH, FrameReceiver, write_frame

TRANSPORTS = ("frames", "streams", "websocket", "http")


# --- servers ------------------------------------------------------------------------------------


def serve(transport: str, params: int) -> None:
    reply = np.ones(params, np.float32).tobytes()

    class Echo(FrameReceiver):
        def frame_received(self, body: memoryview) -> None:
            assert self.transport is not None
            write_frame(self.transport, reply)

        def frame_too_large(self, nbytes: int) -> None:
            raise AssertionError(nbytes)

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
                await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                return
            writer.writelines((LENGTH.pack(len(reply)), reply))
            await writer.drain()

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for _ in ws:
            await ws.send_bytes(reply)
        return ws

    async def post(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if transport in ("frames", "streams"):
            if transport == "frames":
                server = await loop.create_server(lambda: Echo(1 << 31), "127.0.0.1", 0)
            else:
                server = await asyncio.start_server(stream, "127.0.0.1", 0, limit=1 << 20)
            address = f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        else:
            app = web.Application(client_max_size=1 << 31)
            app.router.add_get("/ws", websocket)
            app.router.add_post("/echo", post)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            address = f"127.0.0.1:{runner.addresses[0][1]}"
        await loop.run_in_executor(None, announce_and_wait_for_stdin_eof, address)

    uvloop.run(main())


# --- clients ------------------------------------------------------------------------------------


class Clients:
    def __init__(self, transport: str, address: str, params: int, workers: int) -> None:
        self.transport, self.address = transport, address
        self.message = np.full(params, 1e-3, np.float32).tobytes()
        self.workers = workers
        self.ends: list[Any] = []

    async def open(self) -> None:
        for _ in range(self.workers):
            if self.transport == "frames":
                link = DataLink(
                    self.address, None, max_reply_bytes=1 << 31, connect_timeout_s=10, hello=False
                )
                self.ends.append(link)
            elif self.transport == "streams":
                host, port = self.address.removeprefix("tcp://").split(":")
                self.ends.append(await asyncio.open_connection(host, int(port), limit=1 << 20))
            else:
                session = aiohttp.ClientSession()
                ws = None
                if self.transport == "websocket":
                    ws = await session.ws_connect(f"http://{self.address}/ws", max_msg_size=0)
                self.ends.append((session, ws))

    async def _round_trips(self, end: Any, iterations: int) -> None:
        message = self.message
        for _ in range(iterations):
            if self.transport == "frames":
                await end.request(message, 60.0)
            elif self.transport == "streams":
                reader, writer = end
                writer.writelines((LENGTH.pack(len(message)), message))
                (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
                await reader.readexactly(length)
            elif self.transport == "websocket":
                await end[1].send_bytes(message)
                await end[1].receive_bytes()
            else:
                async with end[0].post(f"http://{self.address}/echo", data=message) as resp:
                    await resp.read()

    async def batch(self, iterations: int) -> None:
        await asyncio.gather(*(self._round_trips(end, iterations) for end in self.ends))

    async def close(self) -> None:
        for end in self.ends:
            if self.transport == "frames":
                end.close()
            elif self.transport == "streams":
                end[1].close()
            else:
                if end[1] is not None:
                    await end[1].close()
                await end[0].close()


def measure(params: int, workers: int, repeats: int, min_s: float) -> dict[str, Any]:
    row: dict[str, Any] = {"params": params, "workers": workers}
    helpers = {t: Helper(["-m", "bench.transports", "serve", t, str(params)]) for t in TRANSPORTS}
    loop = uvloop.new_event_loop()
    try:
        clients = {t: Clients(t, h.address, params, workers) for t, h in helpers.items()}
        for c in clients.values():
            loop.run_until_complete(c.open())
            loop.run_until_complete(c.batch(3))
        iterations = {}
        for t, c in clients.items():
            started = time.perf_counter()
            loop.run_until_complete(c.batch(3))
            per = (time.perf_counter() - started) / 3
            iterations[t] = max(3, int(min_s / max(per, 1e-6)))
        figures: dict[str, tuple[list[float], list[float]]] = {t: ([], []) for t in clients}
        for _ in range(repeats):
            for t, c in clients.items():
                pid = helpers[t].process.pid
                server, own, started = cpu_seconds(pid), time.process_time(), time.perf_counter()
                loop.run_until_complete(c.batch(iterations[t]))
                n = iterations[t] * workers
                figures[t][0].append((time.perf_counter() - started) / n * 1e6)
                figures[t][1].append(
                    (cpu_seconds(pid) - server + time.process_time() - own) / n * 1e6
                )
        for t, (wall, cpu) in figures.items():
            row[f"{t}_us"] = statistics.median(wall)
            row[f"{t}_cpu_us"] = statistics.median(cpu)
        for c in clients.values():
            loop.run_until_complete(c.close())
    finally:
        loop.close()
        for h in helpers.values():
            h.close()
    return row


COLUMNS = [
    Column("params", "P", "{:.0e}"),
    Column("workers", "W"),
    *(c for t in TRANSPORTS for c in (
        Column(f"{t}_us", f"{t} us/rt", "{:.0f}"),
        Column(f"{t}_cpu_us", f"{t} CPU us/rt", "{:.0f}"),
    )),
]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.transports", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--params", type=counts, default="1e3,1e6", help="P values")
    parser.add_argument("--workers", type=counts, default="1", help="W values")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per figure")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timed batch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    print(format_table([], COLUMNS), flush=True)
    rows = []
    for params in args.params:
        for workers in args.workers:
            rows.append(measure(params, workers, args.repeats, args.min_time))
            print(format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    print(f"\nmicroseconds per round trip (median of {args.repeats}); CPU: both processes")
    print(format_table(rows, COLUMNS))
    write_json(args.json, "transports", rows, repeats=args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
