"""Membership decisions as pure functions of the worker table and the clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerRecord:
    worker_id: str
    rank: int
    last_seen: float  # monotonic seconds
    stats: dict[str, Any] = field(default_factory=dict)


# The most workers a job's table holds (N + k and any extra ones): per-worker state is capped.
MAX_WORKERS = 256


def assign_rank(
    workers: Mapping[str, WorkerRecord],
    worker_id: str,
    world: int,
    preferred: int | None = None,
    *,
    cap: int = MAX_WORKERS,
) -> int | None:
    """A known worker keeps its rank; a returning one (after a coordinator restart) gets the rank
    it asks for when that is free; a new one gets the lowest free rank, below ``world`` (N + k)
    while one is free, else beyond it: an elastic worker, a spare in sync mode (a step averages
    the first N gradients in), one more replica in async mode.

    None when ``cap`` workers are live.
    """
    if worker_id in workers:
        return workers[worker_id].rank
    taken = {record.rank for record in workers.values()}
    lowest = next((rank for rank in range(max(cap, world)) if rank not in taken), None)
    if preferred is None or preferred in taken or not 0 <= preferred < max(cap, world):
        return lowest
    # Beyond N + k only once every rank below is taken: the N + k parts of the data come first.
    if preferred < world or (lowest is not None and lowest >= world):
        return preferred
    return lowest


@dataclass
class Turnover:
    """Joins, leaves and restarts since the coordinator started (soft state, like the table)."""

    joined: int = 0  # workers seen for the first time
    rejoined: int = 0  # a worker id that had left or expired came back: a restarted worker
    left: int = 0  # said goodbye (done, or stopped)
    expired: int = 0  # missed its heartbeats: presumed dead
    shard_restarts: int = 0  # a shard registered afresh after it had served

    def as_json(self) -> dict[str, int]:
        return {
            "joined": self.joined,
            "rejoined": self.rejoined,
            "left": self.left,
            "expired": self.expired,
            "shard_restarts": self.shard_restarts,
        }


def expired_workers(workers: Mapping[str, WorkerRecord], now: float, lease_s: float) -> list[str]:
    """Workers whose last heartbeat is older than the lease: they are presumed dead."""
    return sorted(w for w, record in workers.items() if now - record.last_seen > lease_s)


def members_by_rank(workers: Mapping[str, WorkerRecord]) -> dict[str, int]:
    return {worker_id: record.rank for worker_id, record in workers.items()}


def may_announce_membership(
    *, registered: int, aggregate: int, now: float, last_joined: float | None, grace_s: float
) -> bool:
    """Whether the first membership since the coordinator (re)started may go to the shards.

    Until then a shard counts on N gradients a step from whoever pushes. Announcing a table that
    holds only the workers registered so far would let steps close with fewer than N: on a busy
    machine the other workers may still be starting (which, with the grace counted from the
    coordinator's own start, made a few steps at the start of a job close with fewer than N),
    and after a restart they re-register one by one. So: once N workers have registered, or, if
    fewer ever come, once no new one has for a grace period (one lease: every live worker
    heartbeats, and so re-registers, within it). Later changes are announced at once.
    """
    if registered >= aggregate:
        return True
    return last_joined is not None and now - last_joined >= grace_s
