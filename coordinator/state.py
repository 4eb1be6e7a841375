"""The coordinator's state: who is where (shards, workers and their ranks), the job's phase, the
evaluation history, and the ``/status`` summary built from them. Soft state: rebuilt from the
shards' and workers' re-registrations after a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web

from coordinator.membership import MAX_WORKERS, Turnover, WorkerRecord, assign_rank, expired_workers
from coordinator.sparse_eval import HeldOutRows
from pscluster.datasets import Dataset, load_dataset
from pscluster.initial import initial_frame
from pscluster.jobspec import Registration
from pscluster.models import Model, build_model
from pscluster.models.sparse import is_sparse
from pscluster.protocol import ErrorCode, ProtocolError
from pscluster.settings import CoordinatorSettings, Mode
from pscluster.settings.job import divergence_warnings
from pscluster.sharding import compute_shard_map

log = logging.getLogger(__name__)

MAX_DEPARTED = 256


class Coordinator:
    """The coordinator's state; the handlers below only translate HTTP to these calls."""

    def __init__(self, settings: CoordinatorSettings) -> None:
        self.settings = settings
        self.job = settings.job()
        for warning in divergence_warnings(self.job):
            log.warning("%s", warning)
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
        # A sparse model's held-out rows: which ids on which shard (coordinator/sparse_eval.py).
        self.held_out_rows: HeldOutRows | None = None
        self.shapes = self.model.parameter_shapes()
        self.shard_map = compute_shard_map(self.shapes, self.job.shards)
        # Drawn once, here, before any request: the shards' initial values (GET /initial/<i>,
        # pscluster/initial.py), the same after a restart since they depend on the seed alone.
        self.initial = self.model.init_parameters(self.job.seed)
        self.shard_urls: list[str | None] = [None] * self.job.shards
        # Each shard's data port (tcp://host:port), as it announced it.
        self.shard_data_urls: list[str | None] = [None] * self.job.shards
        self.shard_states: list[dict[str, Any]] = [{} for _ in range(self.job.shards)]
        self.workers: dict[str, WorkerRecord] = {}
        self.departed: dict[str, dict[str, Any]] = {}  # finished workers' last stats
        self.started = time.monotonic()
        self.training_started: float | None = None
        self.finished: float | None = None
        self.history: list[dict[str, float]] = []
        self.last_eval_step = -1
        self.membership_announced = False
        self.last_joined: float | None = None  # monotonic time of the latest new registration
        self.turnover = Turnover()
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
        tables = self.model.tables() if is_sparse(self.model) else {}
        return Registration(
            job=self.job,
            n_features=self.dataset.n_features,
            n_classes=self.dataset.n_classes,
            shard_map=self.shard_map,
            shard_urls=list(self.shard_urls),
            shard_data_urls=list(self.shard_data_urls),
            rank=rank,
            worker_id=worker_id,
            tables=tuple(tables.values()),
        )

    def register_shard(
        self, index: int, url: str, version: int | None, data_url: str | None = None
    ) -> Registration:
        if not 0 <= index < self.job.shards:
            raise ProtocolError(
                ErrorCode.WRONG_SHARD, f"shard index {index} outside 0..{self.job.shards - 1}"
            )
        if self.shard_urls[index] != url or self.shard_data_urls[index] != data_url:
            log.info("shard %d at %s (data %s)", index, url, data_url)
            self.shard_urls[index] = url
            self.shard_data_urls[index] = data_url
            self.membership_changed.set()
        if version is None and self.shard_states[index].get("ready"):
            # A process without the job yet, where one had served: the shard restarted. What it
            # reported before is gone (the cut waits for its new report).
            log.warning("shard %d restarted", index)
            self.turnover.shard_restarts += 1
            self.shard_states[index] = {}
        if version is not None:
            self.shard_states[index]["version"] = version
        return self.registration()

    def initial_body(self, index: int) -> bytes:
        """Shard ``index``'s parts of the initial parameters, as one frame."""
        if not 0 <= index < self.job.shards:
            raise ProtocolError(
                ErrorCode.WRONG_SHARD, f"shard index {index} outside 0..{self.job.shards - 1}"
            )
        return initial_frame(self.initial, self.shard_map[index], index=index, seed=self.job.seed)

    @property
    def all_shards_known(self) -> bool:
        return all(self.shard_urls)

    @property
    def all_shards_reported(self) -> bool:
        """Every shard's ``/state`` polled since it (or this coordinator) last started: what
        ``/status`` says of the shards at the end (rewinds, restores) is theirs, not empty."""
        return all(state.get("ready") for state in self.shard_states)

    def register_worker(self, worker_id: str, preferred_rank: int | None = None) -> Registration:
        if not self.all_shards_known:
            raise ProtocolError(ErrorCode.NOT_READY, "waiting for shards to register", 503)
        world = self.job.workers + self.job.spares
        rank = assign_rank(self.workers, worker_id, world, preferred_rank)
        if rank is None:
            raise ProtocolError(ErrorCode.CLUSTER_FULL, f"{MAX_WORKERS} workers are live", 409)
        if worker_id not in self.workers:
            returning = self.departed.pop(worker_id, None) is not None
            if returning:
                self.turnover.rejoined += 1
            else:
                self.turnover.joined += 1
            spare = " (beyond N + k)" if rank >= world else ""
            log.info(
                "worker %s %s as rank %d%s",
                worker_id,
                "rejoins" if returning else "joins",
                rank,
                spare,
            )
            self.workers[worker_id] = WorkerRecord(worker_id, rank, time.monotonic())
            self.last_joined = time.monotonic()
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

    def deregister(self, worker_id: str, stats: dict[str, Any], *, expired: bool = False) -> None:
        record = self.workers.pop(worker_id, None)
        if record is not None:
            if expired:
                self.turnover.expired += 1
            else:
                self.turnover.left += 1
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
            stats = {**self.workers[worker_id].stats, "expired": True}
            self.deregister(worker_id, stats, expired=True)
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
            # Joins, leaves and restarts since this coordinator started.
            "membership": self.turnover.as_json(),
            "seconds": (self.finished or now) - self.training_started
            if self.training_started
            else 0.0,
            "loss": latest.get("loss"),
            "accuracy": latest.get("accuracy"),
            "auc": latest.get("auc"),
            "oracle_auc": self.dataset.oracle_auc,
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
