"""The worker's loop: pull -> compute -> push, against every shard at once.

Each push asks for parameters in its reply, so a step costs one request per shard. The next
batch is gathered on a thread while the current step computes and waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pscluster.backend import get_xp, to_device, to_numpy
from pscluster.datasets import Dataset, load_dataset
from pscluster.faults import maybe_kill
from pscluster.jobspec import Registration
from pscluster.messages import ReplyStatus, Status
from pscluster.models import build_model, is_torch
from pscluster.models.sparse import is_sparse
from pscluster.protocol import ErrorCode, to_wire
from pscluster.sampling import batch_indices
from pscluster.settings import PULL_LONG_POLL_S, Mode, WorkerSettings
from pscluster.settings.timeouts import UNKNOWN_WORKER_PAUSE_S
from pscluster.sharding import allocate_full, assemble_into, slice_part
from worker.alignment import align
from worker.metrics import WorkerMetrics
from worker.shard_client import ShardClient, ShardReply
from worker.sparse_rows import WorkerRows
from worker.stragglers import sample_delay

log = logging.getLogger(__name__)

# Shard answers that are part of normal training; anything else is a bug on one side.
EXPECTED: frozenset[ReplyStatus] = frozenset(
    {
        Status.APPLIED,
        Status.OK,
        ErrorCode.LATE,
        ErrorCode.DUPLICATE,
        ErrorCode.STALE,
        ErrorCode.WARMUP,
        ErrorCode.DONE,
        ErrorCode.UNKNOWN_WORKER,
        ErrorCode.FUTURE_VERSION,  # the shard restarted from an older checkpoint: rewind
        ErrorCode.REWOUND,  # sync: the shards rewound to a consistent cut; compute again
    }
)
# A batch or a model smaller than this is gathered and computed on the event loop: the hop to a
# thread and back costs more than the work (tens of microseconds against a few).
OFFLOAD_BYTES = 1 << 20
LONG_POLL_S = PULL_LONG_POLL_S
WARMUP_POLLS = 6  # a minute of long-polls before a waiting worker checks in with a push
GATE_POLLS = 60  # ssp: ten minutes of long-polls at a closed gate, then the step goes on


class ShardRefused(RuntimeError):
    """A shard refused the worker's own message: the worker and shard disagree on the job."""


def load_worker_data(registration: Registration) -> Dataset:
    job = registration.job
    return load_dataset(
        job.dataset,
        job.seed,
        synthetic_samples=job.synthetic_samples,
        synthetic_features=job.synthetic_features,
        synthetic_classes=job.synthetic_classes,
        held_out=False,  # the coordinator scores the held-out set, not the workers
    )


@dataclass
class ShardView:
    """What the worker knows of one shard: its client, parts, version and whether it is done."""

    client: ShardClient
    version: int = -1
    done: bool = False
    epoch: int = 0


class Trainer:
    def __init__(
        self,
        settings: WorkerSettings,
        registration: Registration,
        clients: list[ShardClient],
        metrics: WorkerMetrics,
        rank: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.registration = registration
        self.job = registration.job
        self.metrics = metrics
        self.rank = rank  # the coordinator may hand back a different rank after it restarts
        self.worker_id = registration.worker_id
        self.data = load_worker_data(registration)
        self.model = build_model(
            self.job.model,
            registration.n_features,
            registration.n_classes,
            self.job.hidden_sizes,
            backend=settings.backend.value,
            torch_threads=settings.torch_threads,
        )
        # A torch model takes and gives host arrays and moves them to its device itself.
        self.xp = np if is_torch(self.model) else get_xp(settings.backend.value)
        self.full = allocate_full(self.model.parameter_shapes())
        self.shards = [ShardView(client) for client in clients]
        # Sparse tables: the rows of the batch computed and of the next one.
        self.rows = WorkerRows(self.model, len(clients)) if is_sparse(self.model) else None
        self.delay_rng = np.random.default_rng([self.job.seed, 7919, registration.rank])
        # Threads only for work that outweighs the hop: a large model or a large batch.
        model_bytes = sum(
            4 * int(np.prod(shape)) for shape in self.model.parameter_shapes().values()
        )
        batch_bytes = self.job.batch_size * self.data.x_train[:1].nbytes
        self._offload = max(model_bytes, batch_bytes) >= OFFLOAD_BYTES

    # --- parameters ---------------------------------------------------------------------------

    def _absorb(self, index: int, reply: ShardReply) -> None:
        shard = self.shards[index]
        if reply.status not in EXPECTED:
            raise ShardRefused(f"shard {index} refused: {reply.status}")
        if reply.params:
            # Not "if reply.arrays": a sparse model's shard may hold no dense part, and the
            # version of its rows-less replies (alignment's pulls) must still count.
            assemble_into(self.full, self.registration.shard_map[index], reply.arrays)
            shard.version, shard.epoch = reply.version, reply.epoch
        if self.rows is not None and reply.arrays:
            self.rows.absorb(index, reply.arrays)
        shard.done = shard.done or reply.done

    async def pull_all(self, *, at_least: int = 0, max_polls: int = 1) -> None:
        """Fetch every shard's parameters, long-polling (at most ``max_polls`` times) until each
        is at ``at_least``."""
        started = time.perf_counter()

        async def pull(index: int) -> None:
            shard = self.shards[index]
            for _ in range(max_polls):
                reply = await shard.client.pull(
                    after=at_least - 1, wait_s=LONG_POLL_S, arrays=self._wants(index)
                )
                self._absorb(index, reply)
                if reply.version >= at_least or reply.done:
                    return

        await asyncio.gather(*(pull(i) for i in range(len(self.shards))))
        self.metrics.observe_phase("pull", time.perf_counter() - started)

    # --- one step -----------------------------------------------------------------------------

    def _wants(self, index: int) -> dict[str, np.ndarray]:
        """The ids of the next batch's rows on shard ``index`` (none for a dense model)."""
        return {} if self.rows is None else self.rows.wants(index)

    async def _pull_missing_rows(self) -> None:
        """Rows of the next batch that no reply brought (refusals, duplicates): one pull each,
        without waiting for a version."""
        if self.rows is None:
            return
        for index in self.rows.missing():
            client = self.shards[index].client
            self._absorb(index, await client.pull(wait_s=0.0, arrays=self._wants(index)))
        self.rows.advance()

    def _prefetch(self, step: int) -> asyncio.Future[tuple[np.ndarray, np.ndarray]]:
        """The batch of ``step``: on a thread when large, else made now."""
        if self._offload:
            return asyncio.ensure_future(asyncio.to_thread(self._batch, step))
        batch: asyncio.Future[tuple[np.ndarray, np.ndarray]] = (
            asyncio.get_running_loop().create_future()
        )
        batch.set_result(self._batch(step))
        return batch

    def _batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        indices = batch_indices(
            self.data.n_train,
            self.job.batch_size,
            seed=self.job.seed,
            rank=self.rank(),
            world=self.registration.world,
            step=step,
            mode=self.job.data_mode.value,
        )
        return self.data.train_rows(indices)

    def _compute(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        """Loss and gradients on the worker's backend (CuPy on a GPU, else NumPy), returned as
        host arrays of the job's wire dtype, ready to push. On a GPU a float16 cast happens on
        the device, so only half the bytes cross PCIe too."""
        xp, wire = self.xp, self.job.wire_dtype.value
        params = {name: to_device(xp, p) for name, p in self.full.items()}
        if self.rows is not None:
            params = self.rows.params(params)  # the tables' rows of this batch (host arrays)
        loss, grads = self.model.loss_and_gradients(params, to_device(xp, x), to_device(xp, y))
        host: dict[str, Any] = {}
        for name, g in grads.items():
            if self.rows is not None and self.rows.is_table(name):
                host[name] = g  # a table's row gradients (Rows): cast when framed
                continue
            if xp is not np and wire == "float16":
                g = g.astype(xp.float16)
            host[name] = to_wire(to_numpy(g), wire)
        return float(loss), host

    def _sparse_push(self, grads: dict[str, Any], index: int) -> dict[str, Any]:
        if self.rows is None:
            return {}
        return self.rows.push_arrays(grads, index, self.job.wire_dtype.value)

    async def _exchange(
        self, step: int, grads: dict[str, Any], meanwhile: Callable[[], object] | None = None
    ) -> None:
        """Push to every shard not yet done, all at once; absorb the parameters that come back.

        ``grads`` are in the wire dtype already; the shards' parts of them are views (no copy),
        and replies in a 16-bit wire dtype are upcast as they are absorbed. ``meanwhile`` runs
        once every push is written, while the shards answer (the next batch is drawn there);
        its time is not counted as push time."""
        started = time.perf_counter()
        waited = 0.0

        async def exchange(index: int) -> None:
            nonlocal waited
            shard = self.shards[index]
            parts = self.registration.shard_map[index]
            reply = await shard.client.push(
                worker=self.worker_id,
                rank=self.rank(),
                step=step,
                base_version=shard.version,
                epoch=shard.epoch,
                grads={
                    **{part.key: slice_part(grads[part.param], part) for part in parts},
                    **self._sparse_push(grads, index),
                },
            )
            self.metrics.observe_push(reply.status)
            waited = max(waited, reply.waited_s)
            self._absorb(index, reply)
            if reply.status is ErrorCode.DUPLICATE:
                # Our earlier try was counted but its reply lost: fetch the step's result.
                self._absorb(
                    index,
                    await shard.client.pull(
                        after=shard.version, wait_s=LONG_POLL_S, arrays=self._wants(index)
                    ),
                )
            elif reply.status is ErrorCode.WARMUP:
                # Another rank leads the warmup: wait for it to end (one bounded long-poll, so
                # that if the leader dies this worker comes back and may lead in its place).
                after = self.job.warmup_steps - 1
                ended = await shard.client.pull(
                    after=after, wait_s=LONG_POLL_S, arrays=self._wants(index)
                )
                self._absorb(index, ended)
            elif reply.status is ErrorCode.UNKNOWN_WORKER:
                # Not a member (yet): the heartbeat re-registers us; do not spin meanwhile.
                await asyncio.sleep(UNKNOWN_WORKER_PAUSE_S)
            for _ in range(GATE_POLLS):
                if reply.gate_open or shard.done:
                    break
                # ssp: we are S steps ahead of the slowest live worker; wait for it (a dead one
                # stops counting once its lease expires).
                started_gate = time.perf_counter()
                reply = await shard.client.pull(
                    wait_s=LONG_POLL_S, gate_for=self.worker_id, arrays=self._wants(index)
                )
                waited += time.perf_counter() - started_gate
                self._absorb(index, reply)

        pushes = asyncio.gather(
            *(exchange(i) for i, shard in enumerate(self.shards) if not shard.done)
        )
        busy = 0.0
        if meanwhile is not None:
            # One turn of the loop: each push runs until it waits for its reply (written).
            await asyncio.sleep(0)
            began = time.perf_counter()
            meanwhile()
            busy = time.perf_counter() - began
        await pushes
        elapsed = time.perf_counter() - started - busy
        self.metrics.observe_phase("wait", waited)
        self.metrics.observe_phase("push", max(0.0, elapsed - waited))

    async def run(self) -> int:
        """Train until every shard says the job is done; returns the steps computed."""
        warmup = self.job.warmup_steps if self.job.mode is Mode.ASYNC and self.rank() != 0 else 0
        # Rank != 0 in async warmup waits here while rank 0 makes the first W updates; bounded,
        # after which its pushes learn from the shards whether warmup is still on.
        step = 0
        prefetched = (step, self._prefetch(step))
        if self.rows is not None:
            self.rows.expect((await prefetched[1])[0])  # the first pull brings its rows
        await self.pull_all(at_least=warmup, max_polls=WARMUP_POLLS)
        await self._pull_missing_rows()
        while not all(shard.done for shard in self.shards):
            maybe_kill(self.settings, step)
            step_started = time.perf_counter()
            key = await self._batch_key(step)
            if prefetched[0] != key:
                prefetched[1].cancel()
                prefetched = (key, self._prefetch(key))
                if self.rows is not None:
                    # Not the batch whose rows the last replies brought (a rewind, a join).
                    self.rows.expect((await prefetched[1])[0])
                    await self._pull_missing_rows()
            x, y = await prefetched[1]
            # The next batch: a large one gathered on a thread while this one computes and its
            # push waits; a small one drawn on the loop while the pushes are in flight (a dense
            # model's: a sparse one's pushes name the next batch's rows).
            draw_later = self.rows is None and not self._offload

            def draw_next(next_key: int = key + 1) -> None:
                nonlocal prefetched
                prefetched = (next_key, self._prefetch(next_key))

            if not draw_later:
                draw_next()
            started = time.perf_counter()
            if self._offload:
                loss, grads = await asyncio.to_thread(self._compute, x, y)
            else:
                loss, grads = self._compute(x, y)
            self.metrics.observe_phase("compute", time.perf_counter() - started)
            delay = sample_delay(
                self.settings.delay,
                self.settings.delay_s,
                self.settings.delay_factor,
                self.delay_rng,
            )
            if delay:
                await asyncio.sleep(delay)
            self.metrics.observe_phase("delay", delay)
            if self.rows is not None:
                # The pushes name the next batch's ids: their replies bring its rows.
                self.rows.expect((await prefetched[1])[0])
            await self._exchange(step, grads, draw_next if draw_later else None)
            await self._pull_missing_rows()
            self.metrics.observe_step(time.perf_counter() - step_started, loss, len(y))
            step += 1
        prefetched[1].cancel()
        return step

    async def _batch_key(self, step: int) -> int:
        """What the batch is drawn by: in sync mode the version the worker trains on (the same
        on every shard, ``worker.alignment``), so a worker that rewinds with the shards after a
        crash, or restarts, draws the very batch of that version again; in async and ssp mode,
        where versions move with every worker's push, its own step count."""
        if self.job.mode is not Mode.SYNC:
            return step

        async def pull(index: int, after: int, wait_s: float) -> None:
            shard = self.shards[index]
            self._absorb(index, await shard.client.pull(after=after, wait_s=wait_s))

        return max(0, await align(self.shards, pull))
