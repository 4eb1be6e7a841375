"""An in-process cluster for tests: the real apps on port 0 in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from coordinator.app import build_app as coordinator_app
from coordinator.state import COORDINATOR, Coordinator
from ps_server.app import DATA_URL, SLOT
from ps_server.app import build_app as shard_app
from pscluster.client import get_json, make_session
from pscluster.protocol import decode_frame
from pscluster.service import running_service
from pscluster.settings import CoordinatorSettings, ShardSettings, WorkerSettings
from pscluster.sharding import allocate_full, assemble_into
from worker.app import SERVICE
from worker.app import build_app as worker_app

# The cluster token of in-process test clusters.
TOKEN = "test-token"


@dataclass
class LocalCluster:
    coordinator_url: str
    coordinator: Coordinator
    shard_urls: list[str]
    shard_apps: list[web.Application]
    stack: contextlib.AsyncExitStack
    worker_apps: list[web.Application] = field(default_factory=list)

    async def start_worker(self, worker_id: str, **overrides: Any) -> web.Application:
        """One more worker, now (stopped with the cluster)."""
        settings = WorkerSettings(
            coordinator_url=self.coordinator_url,
            worker_id=worker_id,
            backend="numpy",
            heartbeat_interval_s=0.2,
            token=TOKEN,
            **overrides,
        )
        _, app = await self.stack.enter_async_context(
            running_service(lambda url: worker_app(settings, url), settings)
        )
        self.worker_apps.append(app)
        return app

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        _, status = await get_json(session, f"{self.coordinator_url}/status", 5.0)
        return status

    async def wait_done(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Poll /status (bounded) until the job is done."""
        deadline = time.monotonic() + timeout_s
        async with make_session(5.0) as session:
            while time.monotonic() < deadline:
                status = await self.status(session)
                if status["phase"] == "done":
                    return status
                await asyncio.sleep(0.05)
        raise TimeoutError(f"job not done within {timeout_s} s")

    async def full_params(self) -> dict[str, np.ndarray]:
        """The whole model, pulled from the shards over HTTP."""
        full = allocate_full(self.coordinator.shapes)
        async with make_session(10.0, token=TOKEN) as session:
            for index, url in enumerate(self.shard_urls):
                async with session.get(f"{url}/params") as resp:
                    frame = decode_frame(await resp.read())
                assemble_into(full, self.coordinator.shard_map[index], frame.arrays)
        return full

    async def wait_shards_ready(self, timeout_s: float = 10.0) -> None:
        """Until every shard serves: it holds its job and (sync) has joined the cut."""
        deadline = time.monotonic() + timeout_s
        while any(state is None or state.recovering for state in self.shard_states()):
            if time.monotonic() > deadline:
                raise TimeoutError("shards did not receive their job")
            await asyncio.sleep(0.02)

    @property
    def data_urls(self) -> list[str]:
        """Each shard's data port (tcp://host:port)."""
        return [app[DATA_URL][0] for app in self.shard_apps]

    def shard_states(self) -> list[Any]:
        return [app[SLOT].state for app in self.shard_apps]

    def worker_services(self) -> list[Any]:
        return [app[SERVICE] for app in self.worker_apps]


@contextlib.asynccontextmanager
async def local_cluster(
    job: dict[str, Any],
    workers: list[dict[str, Any]] | None = None,
    shard: dict[str, Any] | None = None,
) -> AsyncIterator[LocalCluster]:
    """Coordinator, ``job['shards']`` shards and one worker per entry of ``workers``."""
    settings = CoordinatorSettings(
        **{"heartbeat_lease_s": 5.0, "poll_interval_s": 0.05, "token": TOKEN, **job}
    )
    async with contextlib.AsyncExitStack() as stack:
        coord_url, coord_app = await stack.enter_async_context(
            running_service(lambda url: coordinator_app(settings, url), settings)
        )
        shard_urls, shard_apps = [], []
        for index in range(settings.shards):
            shard_settings = ShardSettings(
                coordinator_url=coord_url,
                shard_index=index,
                register_interval_s=0.5,
                token=TOKEN,
                **(shard or {}),
            )
            url, app = await stack.enter_async_context(
                running_service(lambda url, s=shard_settings: shard_app(s, url), shard_settings)
            )
            shard_urls.append(url)
            shard_apps.append(app)
        cluster = LocalCluster(coord_url, coord_app[COORDINATOR], shard_urls, shard_apps, stack)
        for index, overrides in enumerate(workers or []):
            await cluster.start_worker(f"worker{index}", **overrides)
        yield cluster
