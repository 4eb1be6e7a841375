"""Sync gathering: each accepted gradient of the step is added to the running sum; the one that
completes the step (or a smaller membership that does, or its deadline) applies their mean as the
next version.

The deadline (``--deadline auto|S``, see ``ps_server.deadline``) runs from the step's first
gradient; a step with a deadline also closes once every worker in phase is in (this shard's
latest reply to each worker tells who is). Each shard decides alone, as it does with spares: two
shards may close the same step with different sets of workers, each still the mean of gradients
of one version.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from ps_server.deadline import (
    DURATIONS_KEPT,
    WINDOW,
    arrives_in_time,
    auto_deadline,
    in_phase,
    step_may_close,
)
from ps_server.fold_order import fold_sequence, may_fold_now
from ps_server.state.core import OwnedGradients
from ps_server.state.updates import Updates
from pscluster.settings import Mode

# Versions whose first arrival time is kept, so a late gradient's offset can be measured.
FIRST_ARRIVALS_KEPT = 16


class SyncGathering(Updates):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Offsets (seconds) of recent arrivals from their step's first, late ones included.
        self._offsets: deque[float] = deque(maxlen=WINDOW)
        self._first_arrivals: dict[int, float] = {}
        # worker -> (version, time) of this shard's latest reply to it: who is in phase.
        self._sent: dict[str, tuple[int, float]] = {}
        # Late workers whose reply waits for the step in progress (with a deadline).
        self._rejoining: set[str] = set()
        # worker -> its recent compute times: reply sent to its next push arriving.
        self._durations: dict[str, deque[float]] = {}
        self._step_deadline: float | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self.steps_closed_early = 0
        self.gradients_summed = 0
        self.steps_gathered = 0
        self.last_deadline_s: float | None = None

    async def set_members(self, members: Mapping[str, int]) -> None:
        """The coordinator's membership; a smaller one may complete the step being gathered."""
        await self._locked(lambda: self._set_members(members))

    async def _set_members(self, members: Mapping[str, int]) -> None:
        self.members = dict(members)
        self._sent = {w: sent for w, sent in self._sent.items() if w in self.members}
        self._durations = {w: d for w, d in self._durations.items() if w in self.members}
        self._rejoining &= set(self.members)
        self.metrics.live_workers.set(len(self.members))
        self.metrics.required.set(self.required)
        if self.job.mode is Mode.SYNC and self._contributors and not self.done:
            if self._may_close(len(self._contributors)):
                await self._apply_sync_step()

    def deadline_summary(self) -> dict[str, Any]:
        """The deadline of the latest step, the steps closed at theirs, gradients per step."""
        steps = self.steps_gathered
        return {
            "deadline_seconds": self.last_deadline_s,
            "steps_closed_early": self.steps_closed_early,
            "gradients_per_step": self.gradients_summed / steps if steps else None,
        }

    def record_late(self, worker: str, base_version: int) -> None:
        """A late gradient's offset from its own step's first arrival, if the worker was in
        phase for that step: without these the deadline would only ever see arrivals it let
        in, and shrink step after step. Its reply carries the version now being gathered; with
        a deadline, once the step in progress has opened, the next one (``holds_late_reply``)."""
        now = time.perf_counter()
        self._measure_duration(worker, base_version, now)
        first = self._first_arrivals.get(base_version)
        if first is not None and in_phase(self._sent.get(worker), base_version, first):
            self._offsets.append(now - first)
        if self.job.deadline_value is not None and self._contributors and not self.done:
            self._rejoining.add(worker)
        else:
            self._sent[worker] = (self.version, now)

    def holds_late_reply(self, worker: str) -> bool:
        """Whether the reply to this worker's late push waits for the step in progress to
        close. A gradient computed on the parameters of a step that has opened would most
        likely miss it too (the others are in within milliseconds): the worker would compute
        once more for nothing and be back in phase only a step later. Waiting, it starts the
        next step with the workers that made this one, in phase (``ps_server.deadline``)."""
        return worker in self._rejoining

    def _measure_duration(self, worker: str, base_version: int, now: float) -> None:
        """How long the worker took from this shard's reply to this push, if it computed on
        that reply's version. Only a deadline reads it: nothing is kept per push without one."""
        if self.job.deadline_value is None:
            return
        sent = self._sent.get(worker)
        if sent is not None and sent[0] == base_version:
            kept = self._durations.setdefault(worker, deque(maxlen=DURATIONS_KEPT))
            kept.append(now - sent[1])

    def _may_close(self, contributions: int) -> bool:
        deadline = self._step_deadline
        return step_may_close(
            contributions=contributions,
            required=self.required,
            min_gradients=self.job.min_gradients_value,
            elapsed_s=time.perf_counter() - self._round_started,
            deadline_s=deadline,
            # Counted only where a deadline reads it: a walk over the members per push.
            awaited=None if deadline is None else self._awaited(),
        )

    def _awaited(self) -> int | None:
        """In-phase members whose gradient for this step is not in yet and is expected by the
        deadline (None: no membership)."""
        if self.members is None:
            return None
        return sum(1 for worker in self.members if self._waits_for(worker))

    def _waits_for(self, worker: str) -> bool:
        if worker in self._contributors:
            return False
        sent = self._sent.get(worker)
        opened = self._round_started
        if not in_phase(sent, self.version, opened):
            return False
        deadline = self._step_deadline
        if sent is None or deadline is None:
            return True
        return arrives_in_time(sent[1], self._durations.get(worker, ()), opened, deadline)

    def _open_step(self, now: float) -> None:
        """The step's first gradient: fix its deadline and arm the timer."""
        self._round_started = now
        self._first_arrivals[self.version] = now
        while len(self._first_arrivals) > FIRST_ARRIVALS_KEPT:
            del self._first_arrivals[min(self._first_arrivals)]
        setting = self.job.deadline_value
        deadline = auto_deadline(list(self._offsets)) if setting == "auto" else setting
        assert deadline is None or isinstance(deadline, float)
        self._step_deadline = deadline
        if deadline is not None:
            self.last_deadline_s = deadline
            self.metrics.deadline_seconds.set(deadline)
            version = self.version
            self._deadline_timer = asyncio.get_running_loop().call_later(
                deadline, lambda: self._deadline_passed(version)
            )

    def _deadline_passed(self, version: int) -> None:
        async def close() -> None:
            if self.version == version and self._contributors and not self.done:
                if self._may_close(len(self._contributors)):
                    await self._apply_sync_step()

        task = asyncio.ensure_future(self._locked(close))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _gather(self, worker: str, rank: int, grads: Mapping[str, np.ndarray]) -> None:
        now = time.perf_counter()
        self._measure_duration(worker, self.version, now)
        if not self._contributors:
            self._open_step(now)
        elif in_phase(self._sent.get(worker), self.version, self._round_started):
            self._offsets.append(now - self._round_started)
        self._contributors.add(worker)
        # Until the coordinator has told the membership, the N + k ranks of the job: a rank that
        # arrives before a lower one is held for it as always (folding in arrival order here
        # made the first steps of a job differ from run to run, with three or more workers).
        world = range(self.job.workers + self.job.spares)
        members = world if self.members is None else self.members.values()
        in_order = may_fold_now(rank, self._last_folded, members) and (
            not self._held or rank < min(self._held)
        )
        if self._may_close(len(self._contributors)):
            if not in_order or self._held:
                # Fold in rank order: this one joins the held ones, and the highest of them all
                # goes into the update's pass (see ps_server.fold_order).
                self._held[rank] = grads
                await self._apply_sync_step()
                return
            # The last gradient is folded into the update's own pass.
            await self._apply_sync_step(grads)
            return
        if not in_order:
            self._held[rank] = self._keep(grads)
            return
        await self._fold(rank, grads)
        # The ranks held behind this one may follow it now.
        while self._held:
            lowest = min(self._held)
            if not may_fold_now(lowest, self._last_folded, members):
                break
            await self._fold(lowest, self._held.pop(lowest))

    def _keep(self, grads: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """A gradient to hold past its request: its own buffer if the request gave it away,
        else a copy (the request's buffer goes back to the pool)."""
        if isinstance(grads, OwnedGradients):
            return grads
        return OwnedGradients({key: np.array(grad) for key, grad in grads.items()})

    async def _fold(self, rank: int, grads: Mapping[str, np.ndarray]) -> None:
        """Add one gradient to the running sum (the step's first becomes the sum)."""
        if not self._summed:
            # The first gradient of a step becomes the sum, not added to it: no pass to zero it.
            rest = self._adopt(grads)
            if rest:
                await self._math(lambda: self._add_into_sum(rest, copy=True))
        else:
            await self._math(lambda: self._add_into_sum(grads))
        self._summed = True
        self._last_folded = rank

    async def _apply_sync_step(self, last: Mapping[str, np.ndarray] | None = None) -> None:
        """Close the step: the held gradients folded in rank order (the highest, or ``last``,
        inside the update's pass), their mean applied as the next version."""
        if last is None and self._held:
            order = fold_sequence(self._held)
            for rank in order[:-1]:
                await self._fold(rank, self._held[rank])
            last = self._held[order[-1]]
        self._held.clear()
        first = not self._summed
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        gradients = len(self._contributors)
        if gradients < self.required:
            self.steps_closed_early += 1
            self.metrics.steps_closed_early.inc()
        self.gradients_summed += gradients
        self.steps_gathered += 1
        self.metrics.step_gradients.observe(gradients)
        scale = 1.0 / gradients
        snapshot = await self._update(scale, last, first=first)
        gathered = time.perf_counter() - self._round_started
        self.metrics.gather_seconds.observe(gathered)
        self.max_gather_s = max(self.max_gather_s, gathered)
        released = time.perf_counter()
        for worker in self._contributors | self._rejoining:
            self._sent[worker] = (self.version + 1, released)
        self._rejoining.clear()
        self._contributors.clear()
        self._summed = False
        self._last_folded = None
        self._close_rows(scale)
        self._advance(snapshot)
