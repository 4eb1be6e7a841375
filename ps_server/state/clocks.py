"""SSP's clock gate on a shard: every worker's clock (the steps it has pushed here) and the wait
of a push's reply until the worker may start its next step (see ``ps_server.ssp``).

The gate lives on the shards rather than on the coordinator: the coordinator stays off the data
path (training goes on while it restarts), and the shards see every push anyway, so each counts
every worker's clock itself and needs no extra message. A worker starts its next step once all
shards have answered it. Membership comes from the coordinator: a dead worker's lease expires and
it stops holding the others; a joining one starts at the slowest live clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from ps_server.ssp import clock_gap, joining_clock, may_start_step
from ps_server.state.core import ShardCore


class SspClocks(ShardCore):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clocks: dict[str, int] = {}
        self._clocks_changed = asyncio.Event()
        self.max_clock_gap = 0  # the largest gap seen when a step started
        self.max_gate_wait_s = 0.0  # the longest a reply was held at the gate

    def _signal_clocks(self) -> None:
        self._clocks_changed.set()
        self._clocks_changed = asyncio.Event()

    def _live_clocks(self) -> list[int]:
        if self.members is None:
            return list(self.clocks.values())
        return [clock for worker, clock in self.clocks.items() if worker in self.members]

    def update_clock_members(self, members: Mapping[str, int]) -> None:
        """The coordinator's membership: departed workers stop counting, new ones start at the
        slowest live clock."""
        start = joining_clock(c for w, c in self.clocks.items() if w in members)
        self.clocks = {worker: self.clocks.get(worker, start) for worker in members}
        self._signal_clocks()

    def tick(self, worker: str) -> None:
        """``worker`` has finished a step (its gradient arrived, applied or dropped)."""
        if worker not in self.clocks:
            self.clocks[worker] = joining_clock(self._live_clocks())
        self.clocks[worker] += 1
        self._signal_clocks()

    async def wait_for_start(self, worker: str, timeout_s: float) -> bool:
        """Return True once ``worker`` may start its next step (or the job is over, or it is no
        member any more); False if the gate is still closed after ``timeout_s``."""
        started = time.monotonic()
        while True:
            if self.done or self.stopping or worker not in self.clocks:
                return True
            clock, live = self.clocks[worker], self._live_clocks()
            # Until the coordinator has said who is live, the slowest worker may not have
            # pushed yet: nobody runs ahead of workers the shard has not heard from.
            known = self.members is not None
            if known and may_start_step(clock, live, self.job.ssp_bound):
                self.max_clock_gap = max(self.max_clock_gap, clock_gap(clock, live))
                self.max_gate_wait_s = max(self.max_gate_wait_s, time.monotonic() - started)
                return True
            remaining = started + timeout_s - time.monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._clocks_changed.wait(), remaining)
            except TimeoutError:
                pass

    def release_clock_waiters(self) -> None:
        self._signal_clocks()

    def clock_summary(self) -> dict[str, Any]:
        live = self._live_clocks()
        return {
            "max_clock_gap": self.max_clock_gap,
            "max_gate_wait_seconds": self.max_gate_wait_s,
            "clocks": [min(live), max(live)] if live else None,
        }
