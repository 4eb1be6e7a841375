"""The worker service: registers, trains, heartbeats, serves its metrics, leaves when done."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from pscluster.client import backoff_delays, make_session, post_json
from pscluster.jobspec import Registration
from pscluster.protocol import ErrorCode
from pscluster.service import SERVICE_DONE, add_auth, add_observability, background
from pscluster.settings import WorkerSettings
from pscluster.settings.timeouts import (
    CONTROL_CALL_TIMEOUT_S,
    DEREGISTER_TIMEOUT_S,
    REGISTER_BACKOFF_BASE_S,
    REGISTER_BACKOFF_CAP_S,
)
from worker.metrics import WorkerMetrics
from worker.shard_client import ShardClient
from worker.training import Trainer

log = logging.getLogger(__name__)


class RegistrationTimeout(RuntimeError):
    pass


class WorkerService:
    """The worker's life: register, then train and heartbeat side by side."""

    def __init__(
        self, settings: WorkerSettings, metrics: WorkerMetrics, done: asyncio.Event
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.done = done
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.coordinator = settings.coordinator_url.rstrip("/")
        self.rank = -1 if settings.rank is None else settings.rank
        self.steps = 0
        self.failed: BaseException | None = None

    async def register(self, session: aiohttp.ClientSession) -> Registration:
        """Register until the cluster is ready, within ``register_timeout_s``."""
        deadline = time.monotonic() + self.settings.register_timeout_s
        delays = backoff_delays(REGISTER_BACKOFF_BASE_S, REGISTER_BACKOFF_CAP_S)
        while True:
            payload: dict[str, object] = {"worker_id": self.worker_id}
            if self.rank >= 0:
                payload["rank"] = self.rank
            try:
                status, reply = await post_json(
                    session, f"{self.coordinator}/register/worker", payload
                )
                if status == 200:
                    registration = Registration.from_json(reply)
                    self.rank = registration.rank
                    return registration
                if reply.get("error") not in (ErrorCode.NOT_READY, ErrorCode.CLUSTER_FULL):
                    raise RuntimeError(f"coordinator refused registration: {status} {reply}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("coordinator not reachable (%s); retrying", type(exc).__name__)
            if time.monotonic() > deadline:
                raise RegistrationTimeout(
                    f"cluster not ready after {self.settings.register_timeout_s} s"
                )
            await asyncio.sleep(next(delays))

    async def heartbeat_loop(self, session: aiohttp.ClientSession) -> None:
        url = f"{self.coordinator}/heartbeat"
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            payload = {"worker_id": self.worker_id, "stats": self.stats()}
            try:
                status, _ = await post_json(session, url, payload, CONTROL_CALL_TIMEOUT_S)
                if status == 404:
                    # The coordinator restarted or expired us: register again, same id and rank.
                    log.warning("coordinator lost us; registering again")
                    await self.register(session)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("heartbeat failed (%s); training goes on", type(exc).__name__)

    def stats(self) -> dict[str, object]:
        return {
            **self.metrics.summary(),
            "delay_factor": self.settings.delay_factor,
            "delay": self.settings.delay.value,
        }

    async def run(self) -> None:
        token = self.settings.cluster_token()
        async with make_session(self.settings.request_timeout_s, token=token) as session:
            try:
                registration = await self.register(session)
                # A job this worker's timeouts contradict fails here, loudly, not step by step.
                self.settings.check_job(registration.job)
                log.info("registered as rank %d of %d", registration.rank, registration.world)
                clients = [
                    ShardClient(url, index, token=token, timeout_s=self.settings.request_timeout_s)
                    for index, url in enumerate(registration.shard_data_urls)
                    if url is not None
                ]
                trainer = Trainer(
                    self.settings, registration, clients, self.metrics, lambda: self.rank
                )
                heartbeats = asyncio.create_task(self.heartbeat_loop(session))
                try:
                    self.steps = await trainer.run()
                finally:
                    heartbeats.cancel()
                    for client in clients:
                        client.close()
                log.info("job done after %d steps of this worker", self.steps)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failed = exc
                log.exception("worker failed")
            finally:
                await self.leave(session)
                self.done.set()

    async def leave(self, session: aiohttp.ClientSession) -> None:
        """Tell the coordinator we are gone, so sync steps stop counting on us."""
        payload = {"worker_id": self.worker_id, "stats": self.stats()}
        try:
            url = f"{self.coordinator}/deregister"
            await post_json(session, url, payload, DEREGISTER_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError):
            pass


SERVICE = web.AppKey("worker_service", WorkerService)


async def training_task(app: web.Application) -> AsyncIterator[None]:
    async with background(app[SERVICE].run()):
        yield


def build_app(settings: WorkerSettings, url: str) -> web.Application:
    app = web.Application()
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    done = asyncio.Event()
    app[SERVICE_DONE] = done
    app[SERVICE] = WorkerService(settings, metrics, done)
    add_observability(app, registry)
    add_auth(app, settings.cluster_token())
    app.cleanup_ctx.append(training_task)
    return app
