"""Bounded staleness (SSP, Ho et al. 2013) as pure functions of the workers' clocks.

A worker's clock is the number of steps it has finished (gradients it has pushed). A worker may
start step c only when every live worker has finished step c - S - 1, that is when its clock is
at most S ahead of the slowest live worker's. The gate lives on the shards: every worker pushes
to every shard, so each shard counts every worker's clock itself, and a worker starts its next
step when all shards have answered its push.
"""

from __future__ import annotations

from collections.abc import Iterable


def clock_gap(clock: int, live_clocks: Iterable[int]) -> int:
    """How far ``clock`` is ahead of the slowest live worker (0 when it is the slowest)."""
    return max(0, clock - min(live_clocks, default=clock))


def may_start_step(clock: int, live_clocks: Iterable[int], bound: int) -> bool:
    """Whether a worker that has finished ``clock`` steps may start its next one."""
    return clock_gap(clock, live_clocks) <= bound


def joining_clock(live_clocks: Iterable[int]) -> int:
    """A worker joining a running job starts at the slowest live worker's clock: it stalls
    nobody, and nobody runs ahead of it by more than the others already are."""
    return min(live_clocks, default=0)
