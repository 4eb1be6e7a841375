"""Sync gathering: each accepted gradient of the step is added to the running sum; the one that
completes the step (or a smaller membership that does) applies their mean as the next version."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from ps_server.rules import sync_step_complete
from ps_server.state.updates import Updates
from pscluster.settings import Mode


class SyncGathering(Updates):
    async def set_members(self, members: Mapping[str, int]) -> None:
        """The coordinator's membership; a smaller one may complete the step being gathered."""
        await self._locked(lambda: self._set_members(members))

    async def _set_members(self, members: Mapping[str, int]) -> None:
        self.members = dict(members)
        self.metrics.live_workers.set(len(self.members))
        self.metrics.required.set(self.required)
        if self.job.mode is Mode.SYNC and self._contributors and not self.done:
            if sync_step_complete(len(self._contributors), self.required):
                await self._apply_sync_step()

    async def _gather(self, worker: str, grads: Mapping[str, np.ndarray]) -> None:
        first = not self._contributors
        if first:
            self._round_started = time.perf_counter()
        if sync_step_complete(len(self._contributors) + 1, self.required):
            # The last gradient is folded into the update's own pass.
            self._contributors.add(worker)
            await self._apply_sync_step(grads, first=first)
            return
        if first:
            # The first gradient of a step becomes the sum, not added to it: no pass to zero it.
            rest = self._adopt(grads)
            if rest:
                await self._math(lambda: self._add_into_sum(rest, copy=True))
        else:
            await self._math(lambda: self._add_into_sum(grads))
        self._contributors.add(worker)

    async def _apply_sync_step(
        self, last: Mapping[str, np.ndarray] | None = None, *, first: bool = False
    ) -> None:
        scale = 1.0 / len(self._contributors)
        snapshot = await self._update(scale, last, first=first)
        gathered = time.perf_counter() - self._round_started
        self.metrics.gather_seconds.observe(gathered)
        self.max_gather_s = max(self.max_gather_s, gathered)
        self._contributors.clear()
        self._advance(snapshot)
