"""The coordinator's HTTP service: registration, heartbeats, membership, evaluation, status.

It is not on the data path: workers and shards keep training while it restarts, and it rebuilds
its soft state (who is where) from their re-registrations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from coordinator.membership import (
    WorkerRecord,
    assign_rank,
    expired_workers,
    may_announce_membership,
    members_by_rank,
)
from coordinator.metrics import CoordinatorMetrics
from pscluster.client import get_json, make_session, post_json, read_body, read_frame_body
from pscluster.datasets import Dataset, load_dataset
from pscluster.faults import maybe_kill
from pscluster.jobspec import Registration
from pscluster.models import Model, build_model
from pscluster.protocol import ErrorCode, ProtocolError, decode_frame, error_json
from pscluster.service import add_auth, add_observability, background
from pscluster.settings import CoordinatorSettings, Mode
from pscluster.sharding import allocate_full, assemble_into, compute_shard_map

log = logging.getLogger(__name__)

MAX_PARAMS_BYTES = 4 << 30
MAX_DEPARTED = 256


class Coordinator:
    """The coordinator's state; the handlers below only translate HTTP to these calls."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.job = settings.job()
        self.dataset: Dataset = load_dataset(
            self.job.dataset,
            self.job.seed,
            synthetic_samples=self.job.synthetic_samples,
            synthetic_features=self.job.synthetic_features,
            synthetic_classes=self.job.synthetic_classes,
        )
        self.model: Model = build_model(
            self.job.model,
            self.dataset.n_features,
            self.dataset.n_classes,
            self.job.hidden_sizes,
        )
        self.shapes = self.model.parameter_shapes()
        self.shard_map = compute_shard_map(self.shapes, self.job.shards)
        self.shard_urls: list[str | None] = [None] * self.job.shards
        self.shard_states: list[dict[str, Any]] = [{} for _ in range(self.job.shards)]
        self.workers: dict[str, WorkerRecord] = {}
        self.departed: dict[str, dict[str, Any]] = {}  # finished workers' last stats
        self.started = time.monotonic()
        self.training_started: float | None = None
        self.finished: float | None = None
        self.history: list[dict[str, float]] = []
        self.last_eval_step = -1
        self.membership_announced = False
        self.membership_changed = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        """The client session for calls to shards; opened when the service starts."""
        assert self._http is not None, "coordinator service not started"
        return self._http

    @http.setter
    def http(self, session: aiohttp.ClientSession) -> None:
        self._http = session

    # --- registration -------------------------------------------------------------------------

    def registration(self, rank: int = -1, worker_id: str = "") -> Registration:
        return Registration(
            job=self.job,
            n_features=self.dataset.n_features,
            n_classes=self.dataset.n_classes,
            shard_map=self.shard_map,
            shard_urls=list(self.shard_urls),
            rank=rank,
            worker_id=worker_id,
        )

    def register_shard(self, index: int, url: str, version: int | None) -> Registration:
        if not 0 <= index < self.job.shards:
            raise ProtocolError(
                ErrorCode.WRONG_SHARD, f"shard index {index} outside 0..{self.job.shards - 1}"
            )
        if self.shard_urls[index] != url:
            log.info("shard %d at %s", index, url)
            self.shard_urls[index] = url
            self.membership_changed.set()
        if version is not None:
            self.shard_states[index]["version"] = version
        return self.registration()

    @property
    def all_shards_known(self) -> bool:
        return all(self.shard_urls)

    def register_worker(self, worker_id: str, preferred_rank: int | None = None) -> Registration:
        if not self.all_shards_known:
            raise ProtocolError(ErrorCode.NOT_READY, "waiting for shards to register", 503)
        world = self.job.workers + self.job.spares
        rank = assign_rank(self.workers, worker_id, world, preferred_rank)
        if rank is None:
            raise ProtocolError(ErrorCode.CLUSTER_FULL, "all N + k worker ranks are taken", 409)
        if worker_id not in self.workers:
            log.info("worker %s joins as rank %d", worker_id, rank)
            self.workers[worker_id] = WorkerRecord(worker_id, rank, time.monotonic())
            self.membership_changed.set()
        if self.training_started is None:
            self.training_started = time.time()
        return self.registration(rank, worker_id)

    def heartbeat(self, worker_id: str, stats: dict[str, Any]) -> dict[str, Any]:
        record = self.workers.get(worker_id)
        if record is None:
            raise ProtocolError(ErrorCode.UNKNOWN_WORKER, "register again", 404)
        record.last_seen = time.monotonic()
        record.stats = stats
        return {"phase": self.phase, "rank": record.rank}

    def deregister(self, worker_id: str, stats: dict[str, Any]) -> None:
        record = self.workers.pop(worker_id, None)
        if record is not None:
            self.departed[worker_id] = {**stats, "rank": record.rank}
            # Workers come and go for the whole job; only the latest few are remembered.
            while len(self.departed) > MAX_DEPARTED:
                del self.departed[next(iter(self.departed))]
            self.membership_changed.set()

    # --- the job ------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        versions = [s.get("version", 0) for s in self.shard_states]
        return min(versions) if versions else 0

    @property
    def phase(self) -> str:
        if self.finished is not None:
            return "done"
        if not self.all_shards_known:
            return "waiting"
        if (
            self.job.mode is Mode.ASYNC
            and self.job.warmup_steps
            and self.global_step < self.job.warmup_steps
        ):
            return "warmup"
        return "training"

    def expire(self, now: float) -> list[str]:
        gone = expired_workers(self.workers, now, self.settings.heartbeat_lease_s)
        for worker_id in gone:
            log.warning("worker %s missed its heartbeats; dropped", worker_id)
            self.deregister(worker_id, {**self.workers[worker_id].stats, "expired": True})
        return gone

    def status(self) -> dict[str, Any]:
        dropped: dict[str, int] = {}
        for shard in self.shard_states:
            for reason, count in shard.get("dropped", {}).items():
                dropped[reason] = dropped.get(reason, 0) + count
        latest = self.history[-1] if self.history else {}
        now = time.time()
        return {
            "phase": self.phase,
            "mode": self.job.mode.value,
            "step": self.global_step,
            "steps": self.job.steps,
            "aggregate": self.job.workers,
            "spares": self.job.spares,
            "live_workers": len(self.workers),
            "seconds": (self.finished or now) - self.training_started
            if self.training_started
            else 0.0,
            "loss": latest.get("loss"),
            "accuracy": latest.get("accuracy"),
            "gradients": {
                "received": sum(s.get("received", 0) for s in self.shard_states),
                "applied": sum(s.get("applied", 0) for s in self.shard_states),
                "dropped": dropped,
            },
            "shards": [
                {"url": url, **state}
                for url, state in zip(self.shard_urls, self.shard_states, strict=True)
            ],
            "workers": sorted(
                [
                    {"worker_id": r.worker_id, "rank": r.rank, "live": True, **r.stats}
                    for r in self.workers.values()
                ]
                + [{"worker_id": w, "live": False, **s} for w, s in self.departed.items()],
                key=lambda w: (w.get("rank", -1), w["worker_id"]),
            ),
            "history": self.history,
            "job": self.job.model_dump(mode="json"),
        }


COORDINATOR = web.AppKey("coordinator", Coordinator)
METRICS = web.AppKey("coordinator_metrics", CoordinatorMetrics)


async def _json_body(request: web.Request) -> dict[str, Any]:
    body = await read_body(request.content, request.content_length, 1 << 20)
    try:
        payload = json.loads(body)
    except ValueError:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "body is not a JSON object")
    return payload


def _refuse(exc: ProtocolError) -> web.Response:
    return web.json_response(error_json(exc.code, exc.message), status=exc.status)


def _field(payload: dict[str, Any], name: str, kind: type) -> Any:
    value = payload.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{name!r} must be a {kind.__name__}")
    return value


async def handle_register_shard(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        index, url = _field(payload, "index", int), _field(payload, "url", str)
        version = payload.get("version")
        registration = coordinator.register_shard(
            index, url, version if isinstance(version, int) else None
        )
    except ProtocolError as exc:
        return _refuse(exc)
    return web.json_response(registration.to_json())


async def handle_register_worker(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        worker_id = _field(payload, "worker_id", str)
        preferred = payload.get("rank")
        registration = coordinator.register_worker(
            worker_id, preferred if isinstance(preferred, int) else None
        )
    except ProtocolError as exc:
        return _refuse(exc)
    # Shards must know a new member before it pushes.
    await announce_membership(request.app, force=False)
    return web.json_response(registration.to_json())


async def handle_heartbeat(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        worker_id = _field(payload, "worker_id", str)
        stats = payload.get("stats") or {}
        reply = coordinator.heartbeat(worker_id, stats if isinstance(stats, dict) else {})
    except ProtocolError as exc:
        return _refuse(exc)
    return web.json_response(reply)


async def handle_deregister(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    try:
        payload = await _json_body(request)
        worker_id = _field(payload, "worker_id", str)
        stats = payload.get("stats") or {}
    except ProtocolError as exc:
        return _refuse(exc)
    coordinator.deregister(worker_id, stats if isinstance(stats, dict) else {})
    await announce_membership(request.app, force=False)
    return web.json_response({"phase": coordinator.phase})


async def handle_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[COORDINATOR].status())


# --- background work ------------------------------------------------------------------------------


async def announce_membership(app: web.Application, *, force: bool) -> None:
    """Send the live worker table to every known shard (when it changed, or when forced)."""
    coordinator = app[COORDINATOR]
    if not may_announce_membership(
        registered=len(coordinator.workers),
        world=coordinator.job.workers + coordinator.job.spares,
        now=time.monotonic(),
        started=coordinator.started,
        grace_s=coordinator.settings.heartbeat_lease_s,
    ):
        return
    if not (
        force or coordinator.membership_changed.is_set() or not coordinator.membership_announced
    ):
        return
    coordinator.membership_changed.clear()
    coordinator.membership_announced = True
    members = members_by_rank(coordinator.workers)
    session = coordinator.http

    async def tell(url: str) -> None:
        try:
            await post_json(session, f"{url}/membership", {"workers": members}, 5.0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("could not reach shard %s (%s)", url, type(exc).__name__)

    await asyncio.gather(*(tell(url) for url in coordinator.shard_urls if url))


async def poll_shards(app: web.Application) -> None:
    coordinator = app[COORDINATOR]
    session = coordinator.http

    async def poll(index: int, url: str) -> None:
        try:
            status, state = await get_json(session, f"{url}/state", 5.0)
        except (aiohttp.ClientError, TimeoutError):
            return
        if status == 200 and state.get("ready"):
            coordinator.shard_states[index] = state

    await asyncio.gather(*(poll(i, url) for i, url in enumerate(coordinator.shard_urls) if url))


async def evaluate(app: web.Application) -> None:
    """Pull the parameters from every shard and score the held-out data."""
    coordinator = app[COORDINATOR]
    session = coordinator.http
    full = allocate_full(coordinator.shapes)

    async def pull(index: int, url: str) -> int:
        async with session.get(f"{url}/params", timeout=aiohttp.ClientTimeout(total=30)) as resp:
            # Like a worker's pull: into a pooled buffer, arrays decoded as views of it.
            body = await read_frame_body(resp.content, resp.content_length, MAX_PARAMS_BYTES)
        frame = decode_frame(body)
        assemble_into(full, coordinator.shard_map[index], frame.arrays)
        return int(frame.header["version"])

    versions = await asyncio.gather(
        *(pull(i, url) for i, url in enumerate(coordinator.shard_urls) if url)
    )
    data = coordinator.dataset
    loss, accuracy = await asyncio.to_thread(
        coordinator.model.evaluate, full, data.x_test, data.y_test
    )
    step = min(versions)
    seconds = time.time() - (coordinator.training_started or time.time())
    coordinator.history.append(
        {
            "step": step,
            "seconds": round(seconds, 4),
            "loss": float(loss),
            "accuracy": float(accuracy),
        }
    )
    coordinator.last_eval_step = step
    app[METRICS].observe_eval(step, float(loss), float(accuracy))
    log.info("step %d: held-out loss %.4f accuracy %.4f", step, loss, accuracy)


async def monitor_loop(app: web.Application) -> AsyncIterator[None]:
    coordinator = app[COORDINATOR]
    settings = coordinator.settings
    coordinator.http = make_session(30.0, token=settings.cluster_token())

    async def run() -> None:
        last_forced = 0.0
        while True:
            now = time.monotonic()
            coordinator.expire(now)
            # Re-announce now and then, so a restarted shard learns the membership.
            force = now - last_forced > 1.0
            if force:
                last_forced = now
            await announce_membership(app, force=force)
            await poll_shards(app)
            step = coordinator.global_step
            maybe_kill(settings, step)
            due = step >= coordinator.last_eval_step + settings.eval_every
            final = step >= coordinator.job.steps and coordinator.all_shards_known
            if coordinator.finished is None and coordinator.all_shards_known and (due or final):
                try:
                    await evaluate(app)
                except (aiohttp.ClientError, TimeoutError, ProtocolError, KeyError) as exc:
                    log.warning("evaluation failed (%s); will retry", exc)
                else:
                    if final and coordinator.last_eval_step >= coordinator.job.steps:
                        coordinator.finished = time.time()
                        log.info("job done: %s", coordinator.history[-1])
            app[METRICS].observe_status(coordinator)
            await asyncio.sleep(settings.poll_interval_s)

    async with background(run()):
        yield
    await coordinator.http.close()


def build_app(settings: CoordinatorSettings, url: str) -> web.Application:
    app = web.Application()
    registry = CollectorRegistry()
    app[COORDINATOR] = Coordinator(settings)
    app[METRICS] = CoordinatorMetrics(registry)
    add_observability(app, registry)
    app.router.add_post("/register/shard", handle_register_shard)
    app.router.add_post("/register/worker", handle_register_worker)
    app.router.add_post("/heartbeat", handle_heartbeat)
    app.router.add_post("/deregister", handle_deregister)
    app.router.add_get("/status", handle_status)
    app.cleanup_ctx.append(monitor_loop)
    add_auth(app, settings.cluster_token())
    return app
