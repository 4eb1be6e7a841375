"""Memory stays flat: 10,000 pushes grow a shard's resident memory by less than a few MB."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import numpy as np

from pscluster.client import make_session, post_json
from tests.processes import TOKEN, start
from worker.shard_client import ShardClient

PUSHES = 10_000
WARMUP = 1_000
CONCURRENCY = 8


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def push_many(clients: list[ShardClient], count: int) -> dict[str, int]:
    grads = {"w": np.full((64, 10), 1e-6, np.float32), "b": np.full(10, 1e-6, np.float32)}
    statuses: dict[str, int] = {}
    queue = iter(range(count))

    async def pusher(client: ShardClient) -> None:
        for step in queue:
            reply = await client.push(
                worker="w0",
                rank=0,
                step=step,
                base_version=0,
                grads=grads,
                want_params=step % 10 == 0,
            )
            statuses[reply.status] = statuses.get(reply.status, 0) + 1

    # One connection each: CONCURRENCY pushes in flight at the shard at once.
    await asyncio.gather(*(pusher(client) for client in clients))
    return statuses


def test_shard_memory_stays_flat_under_10000_pushes(tmp_path: Path) -> None:
    processes = []
    try:
        coordinator, coord_url = start(
            "coordinator",
            tmp_path,
            "coordinator",
            PSC_SHARDS="1",
            PSC_WORKERS="1",
            PSC_MODE="async",
            PSC_MODEL="softmax",
            PSC_STEPS="1000000",
            PSC_OPTIMIZER="sgd",
            PSC_LR="0.0001",
            PSC_HEARTBEAT_LEASE_S="600",
        )
        processes.append(coordinator)
        shard, _ = start("ps_server", tmp_path, "ps0", PSC_COORDINATOR_URL=coord_url)
        processes.append(shard)

        async def run() -> tuple[int, int, dict[str, int]]:
            async with make_session(30.0, token=TOKEN) as session:
                for _ in range(100):  # bounded: the shard must have its job first
                    status, reply = await post_json(
                        session, f"{coord_url}/register/worker", {"worker_id": "w0"}
                    )
                    if status == 200:
                        break
                    await asyncio.sleep(0.1)
                data_url = reply["shard_data_urls"][0]
                clients = [
                    ShardClient(data_url, 0, token=TOKEN, timeout_s=30.0)
                    for _ in range(CONCURRENCY)
                ]
                await push_many(clients, WARMUP)
                before = resident_kib(shard.pid)
                statuses = await push_many(clients, PUSHES)
                for client in clients:
                    client.close()
                return before, resident_kib(shard.pid), statuses

        before, after, statuses = asyncio.run(run())
        assert statuses == {"applied": PUSHES}
        growth_mib = (after - before) / 1024
        print(f"shard RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB after {PUSHES} pushes")
        assert growth_mib < 3.0, growth_mib
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(20)
