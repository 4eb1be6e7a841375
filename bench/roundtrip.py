"""The push + pull round trip at wire speed, against a raw-socket limit and a naive service.

One round trip is what a sync-mode worker does each step against a shard: push P float32
gradients and receive the P parameters of the next version (the push asks for them in its
reply, so a step is one request). Three implementations move the same bytes between two
processes on 127.0.0.1:

* ``project``: the real shard service (``ps_server``'s app around a ``ShardState``: sync mode,
  N = W, k = 0, plain SGD, the cluster token checked) in a helper process, driven by W
  ``ShardClient``s, each with its own session, in this one;
* ``raw``: length-prefixed bytes over plain TCP sockets, no HTTP, no serialization: the limit;
* ``naive``: aiohttp with ``msgpack.packb(arr.tobytes())`` and ``await request.read()``.

Two more, by ``--impls``, show where a small message's time goes between the limit and the
project (the ceilings any shard logic could reach):

* ``frames``: the data port's transport alone, a framed echo on uvloop at both ends
  (``bench.transports``' ``frames``: ``FrameReceiver`` and ``DataLink``, no hello);
* ``stub``: the project's clients and protocol against a shard that does no work
  (``bench.stub_shard``: the hello, every frame decoded and parsed, each reply framed, replies
  held for the step's W pushes; no rules, checks, sums or optimizer).

A round trip per second is one worker's push answered with the parameters, summed over the W
workers. All three servers run side by side and the timed batches take turns (raw, naive,
project, raw, ...), so a noisy neighbour slows all three alike; each figure is the median of
``--repeats`` batches of about ``--min-time`` seconds, after a warm-up.

    python -m bench.roundtrip                      # P = 1e5, 1e6, 1e7; W = 1, 4
    python -m bench.roundtrip --params 1e6 --workers 4 --json roundtrip.json
    python -m bench.roundtrip --params 1e3,1e4 --impls raw,naive,frames,stub,project
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import uvloop

from bench.baselines import (
    GRADIENT,
    LR,
    NaiveClients,
    RawClients,
    serve_naive,
    serve_raw,
)
from bench.common import (
    Column,
    Helper,
    counts,
    cpu_seconds,
    format_table,
    serve_shard,
    write_json,
)
from bench.stub_shard import serve_stub
from bench.transports import Clients as TransportClients
from pscluster.client import tune_allocator

IMPLEMENTATIONS = ("raw", "naive", "project")
CEILINGS = ("frames", "stub")


# --- the project's shard, as a helper process ---------------------------------------------------


def serve_project(params: int, workers: int) -> None:
    """The shard's real app and state, handed its job directly instead of by a coordinator."""
    from ps_server.state import ShardState
    from pscluster.settings import JobConfig

    job = JobConfig(
        shards=1, workers=workers, spares=0, mode="sync", optimizer="sgd", lr=LR, steps=10**9
    )
    serve_shard(lambda metrics: ShardState(job, 0, {"w": np.zeros(params, np.float32)}, metrics))


class ProjectClients:
    """W workers on one uvloop loop, each a ``ShardClient`` with its own data-port connection."""

    def __init__(self, address: str, params: int, workers: int) -> None:
        self.url, self.token = address.split()
        self.params = params
        self.grads = {"w": np.full(params, GRADIENT, dtype=np.float32)}
        self.versions = [0] * workers
        self.clients: list[Any] = []

    async def open(self) -> None:
        from worker.shard_client import ShardClient

        self.clients = [
            ShardClient(self.url, 0, token=self.token, timeout_s=60.0) for _ in self.versions
        ]

    async def _round_trips(self, rank: int, iterations: int) -> None:
        client = self.clients[rank]
        for _ in range(iterations):
            reply = await client.push(
                worker=f"w{rank}",
                rank=rank,
                step=self.versions[rank],
                base_version=self.versions[rank],
                grads=self.grads,
                want_params=True,
            )
            if reply.status != "applied" or reply.arrays["w"].size != self.params:
                raise RuntimeError(f"worker {rank}: the shard answered {reply.status}")
            self.versions[rank] = reply.version

    async def batch(self, iterations: int) -> None:
        await asyncio.gather(*(self._round_trips(r, iterations) for r in range(len(self.versions))))

    async def close(self) -> None:
        for client in self.clients:
            client.close()


# --- taking turns -------------------------------------------------------------------------------


class Contender(Protocol):
    def batch(self, iterations: int) -> float:
        """Run ``iterations`` round trips per worker, all workers at once; seconds taken."""
        ...


class OnLoop:
    """Async clients driven batch by batch on their own event loop."""

    def __init__(self, clients: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.clients = clients
        self.loop = loop
        loop.run_until_complete(clients.open())

    def batch(self, iterations: int) -> float:
        # Not loop.time(): uvloop's is the loop's cached clock, in milliseconds. A warm-up batch of
        # two fast round trips read 0 s, and the batch size computed from it ran for minutes.
        started = time.perf_counter()
        self.loop.run_until_complete(self.clients.batch(iterations))
        return time.perf_counter() - started

    def close(self) -> None:
        self.loop.run_until_complete(self.clients.close())
        self.loop.close()


class Timed:
    """A contender whose batches also count CPU time: its server's and its clients' (this
    process: only one contender runs at a time)."""

    def __init__(self, contender: Contender, server_pid: int) -> None:
        self.contender = contender
        self.server_pid = server_pid
        self.cpu_s = 0.0  # of the latest batch, both sides

    def batch(self, iterations: int) -> float:
        server, clients = cpu_seconds(self.server_pid), time.process_time()
        seconds = self.contender.batch(iterations)
        self.cpu_s = cpu_seconds(self.server_pid) - server + time.process_time() - clients
        return seconds


@contextlib.contextmanager
def contenders(impls: Sequence[str], params: int, workers: int) -> Iterator[dict[str, Timed]]:
    """Start each implementation's server and connect its W clients; stop them afterwards."""
    with contextlib.ExitStack() as stack:
        running: dict[str, Timed] = {}
        for impl in impls:
            if impl == "frames":  # bench.transports' echo server
                command = ["-m", "bench.transports", "serve", "frames", str(params)]
            else:
                command = [
                    *("-m", "bench.roundtrip", "serve", impl),
                    *("--params", str(params), "--workers", str(workers)),
                ]
            helper = stack.enter_context(Helper(command))
            contender: Any
            if impl == "frames":
                contender = OnLoop(
                    TransportClients("frames", helper.address, params, workers),
                    uvloop.new_event_loop(),
                )
            elif impl == "raw":
                contender = RawClients(helper.address, params, workers)
            elif impl == "naive":
                # The default asyncio loop, like the naive server's.
                contender = OnLoop(
                    NaiveClients(helper.address, params, workers), asyncio.new_event_loop()
                )
            else:
                contender = OnLoop(
                    ProjectClients(helper.address, params, workers), uvloop.new_event_loop()
                )
            stack.callback(contender.close)
            running[impl] = Timed(contender, helper.process.pid)
        yield running


def measure(
    impls: Sequence[str], params: int, workers: int, repeats: int, min_s: float
) -> dict[str, tuple[list[float], list[float]]]:
    """Round trips per second of each implementation and CPU-seconds per round trip (server
    and clients together), ``repeats`` times, taking turns."""
    with contenders(impls, params, workers) as running:
        iterations = {}
        for impl, contender in running.items():
            contender.batch(1)  # connect, fault in buffers
            per_round_trip = contender.batch(2) / 2
            iterations[impl] = max(2, math.ceil(min_s / max(per_round_trip, 1e-6)))
        figures: dict[str, tuple[list[float], list[float]]] = {i: ([], []) for i in running}
        for _ in range(repeats):
            for impl, contender in running.items():
                seconds = contender.batch(iterations[impl])
                rates, cpu = figures[impl]
                rates.append(workers * iterations[impl] / seconds)
                cpu.append(contender.cpu_s / (workers * iterations[impl]))
        return figures


def bench(
    params_list: Sequence[int],
    workers_list: Sequence[int],
    impls: Sequence[str],
    repeats: int,
    min_s: float,
) -> list[dict[str, Any]]:
    rows = []
    cols = columns(impls)
    for params in params_list:
        for workers in workers_list:
            megabytes = 2 * 4 * params / 1e6  # P float32 pushed, P received
            row: dict[str, Any] = {"params": params, "workers": workers, "mb_per_rt": megabytes}
            for impl, (rates, cpu) in measure(impls, params, workers, repeats, min_s).items():
                row[f"{impl}_rts"] = statistics.median(rates)
                row[f"{impl}_mbps"] = row[f"{impl}_rts"] * megabytes
                row[f"{impl}_repeats"] = rates
                row[f"{impl}_cpu_us"] = statistics.median(cpu) * 1e6
            for ceiling in CEILINGS:
                if ceiling in impls and "raw" in impls:
                    row[f"{ceiling}_vs_raw"] = row[f"{ceiling}_rts"] / row["raw_rts"]
            if "project" in impls:
                for base in ("raw", "naive"):
                    if base in impls:
                        row[f"vs_{base}"] = row["project_rts"] / row[f"{base}_rts"]
                if "raw" in impls:
                    row["cpu_ratio"] = row["project_cpu_us"] / row["raw_cpu_us"]
            rows.append(row)
            print(format_table([row], cols).splitlines()[-1], flush=True)
    return rows


def columns(impls: Sequence[str]) -> list[Column]:
    cols = [
        Column("params", "P", "{:.0e}"),
        Column("workers", "W"),
        Column("mb_per_rt", "MB/rt", "{:.1f}"),
    ]
    for impl in impls:
        cols.append(Column(f"{impl}_rts", f"{impl} rt/s", "{:.1f}"))
        cols.append(Column(f"{impl}_mbps", f"{impl} MB/s", "{:.0f}"))
        cols.append(Column(f"{impl}_cpu_us", f"{impl} CPU us/rt", "{:.0f}"))
    if "raw" in impls:
        cols += [Column(f"{c}_vs_raw", f"{c}/raw", "{:.2f}") for c in CEILINGS if c in impls]
    if "project" in impls:
        cols += [
            Column(f"vs_{b}", f"project/{b}", "{:.2f}") for b in ("raw", "naive") if b in impls
        ]
        if "raw" in impls:
            cols.append(Column("cpu_ratio", "CPU project/raw", "{:.2f}"))
    return cols


def main(argv: Sequence[str] | None = None) -> int:
    # As every service does at start (pscluster.service.run_service), in each helper process too.
    tune_allocator()
    parser = argparse.ArgumentParser(
        prog="python -m bench.roundtrip", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="(internal) run one server as a helper process")
    serve.add_argument("impl", choices=(*IMPLEMENTATIONS, "stub"))
    serve.add_argument("--params", type=int, required=True)
    serve.add_argument("--workers", type=int, default=1)
    parser.add_argument("--params", type=counts, default="1e5,1e6,1e7", help="P values")
    parser.add_argument("--workers", type=counts, default="1,4", help="W values")
    parser.add_argument(
        "--impls", default=",".join(IMPLEMENTATIONS), help="which implementations to run"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per figure")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per timed batch")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.impl == "raw":
            serve_raw(args.params)
        elif args.impl == "naive":
            serve_naive(args.params, args.workers)
        elif args.impl == "stub":
            serve_stub(args.params, args.workers)
        else:
            serve_project(args.params, args.workers)
        return 0
    impls = [i for i in args.impls.split(",") if i]
    unknown = set(impls) - {*IMPLEMENTATIONS, *CEILINGS}
    if unknown:
        parser.error(f"unknown implementations {sorted(unknown)}")
    print(format_table([], columns(impls)), flush=True)
    rows = bench(args.params, args.workers, impls, args.repeats, args.min_time)
    print(f"\nround trips per second (median of {args.repeats}); MB/s counts both directions")
    print(format_table(rows, columns(impls)))
    write_json(args.json, "roundtrip", rows, repeats=args.repeats, min_time_s=args.min_time)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
