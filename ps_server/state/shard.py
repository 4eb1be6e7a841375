"""A shard's state, assembled from its parts (see each module), and a push's way through it:
judged by the rules, then gathered (sync) or applied at once (async)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ps_server.rules import Verdict, judge_async_push, judge_sync_push
from ps_server.sparse.tables import SparsePush
from ps_server.state.clocks import SspClocks
from ps_server.state.reads import Reads
from ps_server.state.rewinds import Rewinds
from ps_server.state.sparse import NO_ROWS
from ps_server.state.validation import Validation
from pscluster.messages import Push
from pscluster.protocol import ErrorCode
from pscluster.settings import Mode

# Verdicts that say a worker did not finish a step: its clock stays (ssp).
NOT_A_STEP = (
    ErrorCode.DUPLICATE,
    ErrorCode.UNKNOWN_WORKER,
    ErrorCode.DONE,
    ErrorCode.FUTURE_VERSION,
    ErrorCode.REWOUND,
)


class ShardState(Rewinds, SspClocks, Reads, Validation):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # async, ssp: worker -> (step, base version) of its latest applied push. A push that
        # repeats it is a retry whose reply was lost: a duplicate, not a second update.
        self._last_applied: dict[str, tuple[int, int]] = {}

    def snapshot(self) -> dict[str, Any]:
        """``/state``: the shard's counters, the deadline's (sync) and the clocks' (ssp)."""
        extra = self.clock_summary() if self.job.mode is Mode.SSP else self.deadline_summary()
        return {**super().snapshot(), **extra, **self.sparse_summary()}

    async def _set_members(self, members: Mapping[str, int]) -> None:
        if self.job.mode is Mode.SSP:
            self.update_clock_members(members)
        await super()._set_members(members)

    def release_waiters(self) -> None:
        super().release_waiters()
        self.release_clock_waiters()

    def counts_as_step(self, verdict: Verdict) -> bool:
        """ssp: whether this push moved the worker's clock (so its reply waits at the gate)."""
        return self.job.mode is Mode.SSP and verdict.code not in NOT_A_STEP

    def waits_at_gate(self, verdict: Verdict) -> bool:
        """ssp: whether the reply waits at the gate: a step's push, or its retry (a duplicate,
        whose first try moved the clock and lost its reply, gate wait included)."""
        return self.counts_as_step(verdict) or (
            self.job.mode is Mode.SSP and verdict.code is ErrorCode.DUPLICATE
        )

    async def push(self, message: Push, sparse: SparsePush = NO_ROWS) -> Verdict:
        """Judge and apply one push whose gradients are validated (``validate_gradients``), and
        its rows (``parse_sparse``)."""
        self.metrics.count_received()
        if self._inline:
            # Small arrays: the math runs inline, so once the lock is held nothing in the work
            # suspends and a cancelled caller cannot leave it half done; no task of its own.
            async with self._lock:
                return await self._push(message, sparse)
        return await self._locked(lambda: self._push(message, sparse))

    async def _push(self, message: Push, sparse: SparsePush = NO_ROWS) -> Verdict:
        worker, rank, base_version = message.worker, message.rank, message.base_version
        if self.members is not None and worker not in self.members:
            verdict = Verdict(ErrorCode.UNKNOWN_WORKER)
        elif self._last_applied.get(worker) == (message.step, base_version):
            verdict = Verdict(ErrorCode.DUPLICATE)  # async, ssp (sync: judge_sync_push)
        else:
            # Trust the coordinator's rank over the one the push claims.
            rank = rank if self.members is None else self.members[worker]
            verdict = self._judge(worker, rank, base_version, message.epoch)
        if verdict.code in (None, ErrorCode.LATE, ErrorCode.STALE, ErrorCode.WARMUP):
            self.metrics.staleness.observe(max(0, self.version - base_version))
        if self.counts_as_step(verdict):
            self.tick(worker)
        if verdict.code is ErrorCode.LATE and self.job.mode is Mode.SYNC:
            self.record_late(worker, base_version)
        if not verdict.accepted:
            assert verdict.code is not None
            self.metrics.count_dropped(verdict.code)
            return verdict
        self.metrics.count_applied(rank)
        if self.job.mode is Mode.SYNC:
            self._hold_rows(rank, sparse)
            await self._gather(worker, rank, message.grads)
        else:
            await self._apply_async(verdict.scale, message.grads, sparse)
            self._last_applied[worker] = (message.step, base_version)
        return verdict

    def _judge(self, worker: str, rank: int, base_version: int, epoch: int | None) -> Verdict:
        if self.job.mode is Mode.SYNC:
            return judge_sync_push(
                version=self.version,
                base_version=base_version,
                worker=worker,
                contributors=self._contributors,
                steps=self.job.steps,
                epoch=self.epoch,
                base_epoch=epoch,
            )
        return judge_async_push(
            version=self.version,
            base_version=base_version,
            rank=rank,
            steps=self.job.steps,
            max_staleness=self.job.max_staleness,
            policy=self.job.staleness_policy,
            warmup_steps=self.job.warmup_steps,
            leader=min(self.members.values(), default=0) if self.members else 0,
        )
